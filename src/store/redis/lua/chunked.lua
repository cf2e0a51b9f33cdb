-- Files sent in chunks: every step of one file, as one script, so the
-- steps share their helpers. A file is one hash:
--   terms (JSON), rid (its reservation id), okey (its object key), stage
--   ('receiving' | 'cancelled' (refused) | 'failed' (its completion) |
--   'completed'), deadline (lease end, or end of
--   keeping), sizing ('' | 'floor' | 'ceil'), media, n (chunks stored),
--   parts (parts of several chunks stored), message (cancelled, failed), record and
--   version (completed), c:<n> chunk receipts, p:<k> part receipts,
--   k:<k> claims on making part k (k:0: completing the file).
-- and, while it is received, the key <prefix>ck:<object key>, expiring
-- with its lease, for the sweep, and <file hash>:a, the chunks requests
-- are bringing (hints that expire).
-- KEYS[1] the file hash, KEYS[2] the token hash, KEYS[3] its lease set.
-- ARGV[1] the step, ARGV[2] now, ARGV[3] the key prefix; then the step's.
-- Every step reads and checks before its first write.
local step = ARGV[1]
local now = tonumber(ARGV[2])
local prefix = ARGV[3]
-- Chunks requests are bringing right now: chunk number -> until when.
local ARRIVALS = KEYS[1] .. ':a'
-- Every file's hash key by its deadline, to find the abandoned ones.
local DEADLINES = prefix .. 'cf:deadlines'
local FIELDS = {'terms', 'rid', 'sizing', 'media', 'n', 'deadline', 'stage', 'message', 'record', 'version', 'okey'}

local function read_file()
  local values = redis.call('HMGET', KEYS[1], unpack(FIELDS))
  if not values[1] then
    return nil
  end
  local file = {}
  for i, name in ipairs(FIELDS) do
    file[name] = values[i] or ''
  end
  return file
end

local function abandoned(file)
  return file.stage == 'receiving' and tonumber(file.deadline) <= now
end

-- The file's view: {'ok', grant, terms, rid, sizing, media, n, deadline,
-- stage, message, record, version, has chunk ARGV[4] (0/1)}.
local function view(status, file, number)
  local grant = redis.call('HGET', KEYS[2], 'grant')
  if not grant then
    return {'none'}
  end
  local has = 0
  if number then
    has = redis.call('HEXISTS', KEYS[1], 'c:' .. number)
  end
  return {status, grant, file.terms, file.rid, file.sizing, file.media, file.n, file.deadline, file.stage,
    file.message, file.record, file.version, tostring(has)}
end

-- Extends the file's lease to `lease_end`; false when it is no longer live.
local function renew(file, lease_end, retention)
  local lease = redis.call('ZSCORE', KEYS[3], file.rid)
  if not lease or tonumber(lease) <= now then
    return false
  end
  local until_ = math.max(tonumber(lease), lease_end)
  redis.call('ZADD', KEYS[3], 'XX', until_, file.rid)
  local valid_until = tonumber(redis.call('HGET', KEYS[2], 'until') or 0)
  local token_end = math.max(valid_until, until_) + retention
  keep_until(KEYS[2], token_end, now)
  keep_until(KEYS[3], token_end, now)
  local deadline = math.max(tonumber(file.deadline), until_)
  redis.call('HSET', KEYS[1], 'deadline', deadline)
  redis.call('ZADD', DEADLINES, deadline, KEYS[1])
  -- Kept one more idle time once abandoned, to tell its later chunks so.
  redis.call('EXPIREAT', KEYS[1], deadline + (lease_end - now) + retention)
  redis.call('SET', prefix .. 'ck:' .. file.okey, '1', 'EXAT', deadline)
  file.deadline = tostring(deadline)
  return true
end

-- A finished file's answer to a chunk or part.
local function settled(file)
  if file.stage == 'cancelled' or file.stage == 'failed' then
    return {file.stage, file.message}
  elseif file.stage == 'completed' then
    return {'completed', file.record, file.version}
  end
  return nil
end

-- The file being received, or (nil and) the answer a chunk or part of it
-- gets instead: its outcome when finished, 'gone' when none or abandoned.
local function receiving()
  local file = read_file()
  if not file then
    return nil, {'gone'}
  end
  local finished = settled(file)
  if finished then
    return nil, finished
  end
  if abandoned(file) then
    return nil, {'gone'}
  end
  return file, nil
end

local function layout(file)
  local object = cjson.decode(file.terms).object
  local total, size = object.total_size, object.chunk_size
  local floor_count = math.max(math.floor(total / size), 1)
  local ceil_count = math.max(math.ceil(total / size), 1)
  local count = nil
  if file.sizing == 'floor' or floor_count == ceil_count then
    -- (When both sizings make as many chunks, they cut the file alike.)
    count = floor_count
  elseif file.sizing == 'ceil' then
    count = ceil_count
  end
  return object.chunks_per_part, count, floor_count
end

-- Claims `work` until `claim_until`, unless a live claim holds it.
local function claim(work, claim_until)
  local held = redis.call('HGET', KEYS[1], 'k:' .. work)
  if held and tonumber(held) > now then
    return false
  end
  redis.call('HSET', KEYS[1], 'k:' .. work, claim_until)
  return true
end


-- A stored chunk's answer: 'arriving' when every chunk still missing is
-- being received right now (expired hints are dropped on the way).
local function stored(file, duplicate, count)
  local entries = redis.call('HGETALL', ARRIVALS)
  if not count or #entries == 0 then
    return {'stored', duplicate}
  end
  local coming = 0
  for i = 1, #entries, 2 do
    if tonumber(entries[i + 1]) <= now then
      redis.call('HDEL', ARRIVALS, entries[i])
    elseif redis.call('HEXISTS', KEYS[1], 'c:' .. entries[i]) == 0 then
      coming = coming + 1
    end
  end
  if coming > 0 and tonumber(redis.call('HGET', KEYS[1], 'n')) + coming >= count then
    return {'arriving', duplicate}
  end
  return {'stored', duplicate}
end

-- After a chunk or a part: claims completing the file once every part is
-- stored, answering every receipt (the caller orders them).
local function file_progress(file, duplicate, claim_until)
  local per_part, count = layout(file)
  if not count then
    return {'stored', duplicate}
  end
  local ready
  if per_part == 1 then
    ready = tonumber(redis.call('HGET', KEYS[1], 'n')) == count
  else
    ready = tonumber(redis.call('HGET', KEYS[1], 'parts') or 0) == math.ceil(count / per_part)
  end
  if not ready then
    return stored(file, duplicate, count)
  end
  if not claim(0, claim_until) then
    return {'busy'}
  end
  local answer = {'file_ready', file.media}
  local all = redis.call('HGETALL', KEYS[1])
  for i = 1, #all, 2 do
    local name = all[i]
    if string.sub(name, 1, 2) == 'c:' or string.sub(name, 1, 2) == 'p:' then
      table.insert(answer, name)
      table.insert(answer, all[i + 1])
    end
  end
  return answer
end

if step == 'file' then
  -- ARGV[4] the chunk asked about.
  local file = read_file()
  if not file or abandoned(file) then
    return {'none'}
  end
  return view('ok', file, ARGV[4])

elseif step == 'begin' then
  -- ARGV[4] lease end, ARGV[5] reservation id, ARGV[6] retention,
  -- ARGV[7] the redeem's kind of token, ARGV[8] terms JSON, ARGV[9] object key.
  -- ARGV[10] the chunk's number, ARGV[11] the file's identifier, ARGV[12]
  -- its token.
  local lease_end, retention = tonumber(ARGV[4]), tonumber(ARGV[6])
  local file = read_file()
  if file and abandoned(file) and ARGV[10] ~= '1' then
    return {'abandoned'}
  end
  if file and not abandoned(file) then
    if file.stage == 'receiving' then
      renew(file, lease_end, retention)
    end
    return view('joined', file, nil)
  end
  local token = redis.call('HMGET', KEYS[2], 'until', 'max', 'committed', 'grant', 'kind')
  if not token[4] or (token[5] or 'replace') ~= ARGV[7] then
    return {'unknown'}
  end
  if tonumber(token[1]) <= now then
    return {'expired'}
  end
  redis.call('ZREMRANGEBYSCORE', KEYS[3], '-inf', now)
  if tonumber(token[3]) + redis.call('ZCARD', KEYS[3]) >= tonumber(token[2]) then
    return {'used_up'}
  end
  -- The writes. An abandoned file's record goes first.
  if file then
    redis.call('DEL', prefix .. 'ck:' .. file.okey)
    redis.call('DEL', KEYS[1], ARRIVALS)
  end
  redis.call('ZADD', KEYS[3], lease_end, ARGV[5])
  local token_end = math.max(tonumber(token[1]), lease_end) + retention
  keep_until(KEYS[2], token_end, now)
  keep_until(KEYS[3], token_end, now)
  redis.call('HSET', KEYS[1], 'terms', ARGV[8], 'rid', ARGV[5], 'okey', ARGV[9], 'stage', 'receiving',
    'deadline', lease_end, 'sizing', '', 'media', '', 'n', 0, 'parts', 0, 'ident', ARGV[11], 'token', ARGV[12])
  redis.call('ZADD', DEADLINES, lease_end, KEYS[1])
  redis.call('EXPIREAT', KEYS[1], lease_end + (lease_end - now) + retention)
  redis.call('SET', prefix .. 'ck:' .. ARGV[9], '1', 'EXAT', lease_end)
  -- The token's files, for its status.
  local files = KEYS[2] .. ':files'
  redis.call('SADD', files, ARGV[11])
  keep_until(files, token_end, now)
  return view('began', read_file(), nil)

elseif step == 'chunk' then
  -- ARGV[4] lease end, ARGV[5] claim end, ARGV[6] retention, ARGV[7] the
  -- chunk's number, ARGV[8] its receipt JSON, ARGV[9] the sizing it
  -- implies or '', ARGV[10] chunk 1's media type or ''.
  local file, answer = receiving()
  if not file then
    return answer
  end
  local implied = ARGV[9]
  if implied ~= '' and file.sizing ~= '' and implied ~= file.sizing then
    return {'sizing_conflict'}
  end
  local number = tonumber(ARGV[7])
  local stored_before = redis.call('HEXISTS', KEYS[1], 'c:' .. number) == 1
  -- A chunk said to be stored (no receipt) that is not: begun anew since.
  if ARGV[8] == '' and not stored_before then
    return {'gone'}
  end
  if not renew(file, tonumber(ARGV[4]), tonumber(ARGV[6])) then
    return {'gone'}
  end
  if implied ~= '' then
    redis.call('HSET', KEYS[1], 'sizing', implied)
    file.sizing = implied
  end
  if ARGV[10] ~= '' then
    redis.call('HSET', KEYS[1], 'media', ARGV[10])
    file.media = ARGV[10]
  end
  local duplicate = '0'
  if stored_before then
    duplicate = '1'
  else
    redis.call('HINCRBY', KEYS[1], 'n', 1)
  end
  if ARGV[8] ~= '' then
    redis.call('HSET', KEYS[1], 'c:' .. number, ARGV[8])
  end
  redis.call('HDEL', ARRIVALS, number)
  local per_part, count, floor_count = layout(file)
  local part = math.floor((number - 1) / per_part) + 1
  if per_part == 1 or redis.call('HEXISTS', KEYS[1], 'p:' .. part) == 1 then
    return file_progress(file, duplicate, tonumber(ARGV[5]))
  end
  local first = (part - 1) * per_part + 1
  local last = part * per_part
  if count then
    last = math.min(last, count)
  elseif last >= floor_count then
    -- Without the sizing, only parts before either sizing's last chunk are whole.
    return {'stored', duplicate}
  end
  local members = {'part_ready', tostring(part)}
  for n = first, last do
    local receipt = redis.call('HGET', KEYS[1], 'c:' .. n)
    if not receipt then
      return stored(file, duplicate, count)
    end
    table.insert(members, tostring(n))
    table.insert(members, receipt)
  end
  if not claim(part, tonumber(ARGV[5])) then
    return {'busy'}
  end
  return members

elseif step == 'part' then
  -- ARGV[4] lease end, ARGV[5] claim end, ARGV[6] retention, ARGV[7] the
  -- part's number, ARGV[8] its receipt JSON.
  local file, answer = receiving()
  if not file then
    return answer
  end
  if not renew(file, tonumber(ARGV[4]), tonumber(ARGV[6])) then
    return {'gone'}
  end
  local duplicate = '0'
  if redis.call('HSET', KEYS[1], 'p:' .. ARGV[7], ARGV[8]) == 0 then
    duplicate = '1'
  else
    redis.call('HINCRBY', KEYS[1], 'parts', 1)
  end
  redis.call('HDEL', KEYS[1], 'k:' .. ARGV[7])
  return file_progress(file, duplicate, tonumber(ARGV[5]))

elseif step == 'arrive' then
  -- ARGV[4] the chunk's number, ARGV[5] until when it is expected.
  local file = receiving()
  if file then
    redis.call('HSET', ARRIVALS, ARGV[4], ARGV[5])
    keep_until(ARRIVALS, tonumber(ARGV[5]), now)
  end
  return {'ok'}

elseif step == 'progress' then
  -- The files of the token of KEYS[2] being received: {identifier, n,
  -- sizing, terms, bytes stored} each. ARGV[4..] file hash key then
  -- identifier, per file of KEYS[2]':files'.
  local found = {}
  for i = 4, #ARGV, 2 do
    local values = redis.call('HMGET', ARGV[i], 'stage', 'deadline', 'n', 'sizing', 'terms')
    if values[1] == 'receiving' and tonumber(values[2]) > now then
      local bytes = 0
      local all = redis.call('HGETALL', ARGV[i])
      for j = 1, #all, 2 do
        if string.sub(all[j], 1, 2) == 'c:' then
          bytes = bytes + cjson.decode(all[j + 1]).size
        end
      end
      for _, value in ipairs({ARGV[i + 1], values[3], values[4], values[5], tostring(bytes)}) do
        table.insert(found, value)
      end
    end
  end
  return found

elseif step == 'abandoned' then
  -- ARGV[4] how many at most. Files whose lease ran out, each answered
  -- once: {grant, identifier, chunks stored, terms} each.
  local files = redis.call('ZRANGEBYSCORE', DEADLINES, '-inf', now, 'LIMIT', 0, tonumber(ARGV[4]))
  local found = {}
  for _, key in ipairs(files) do
    redis.call('ZREM', DEADLINES, key)
    local v = redis.call('HMGET', key, 'stage', 'deadline', 'token', 'ident', 'n', 'terms')
    if v[1] == 'receiving' and tonumber(v[2]) <= now and v[3] then
      local grant = redis.call('HGET', prefix .. 't:' .. v[3], 'grant')
      if grant then
        for _, value in ipairs({grant, v[4] or '', v[5], v[6]}) do
          table.insert(found, value)
        end
      end
    end
  end
  return found

elseif step == 'release' then
  -- ARGV[4] the work: a part's number, or 0 for the file's completion.
  redis.call('HDEL', KEYS[1], 'k:' .. ARGV[4])
  return {'ok'}

elseif step == 'cancel' then
  -- ARGV[4] keep until, ARGV[5] retention, ARGV[6] the message, ARGV[7]
  -- the stage it ends in ('cancelled' or 'failed').
  local file = read_file()
  if not file or file.stage ~= 'receiving' then
    return {'ok'}
  end
  redis.call('ZREM', KEYS[3], file.rid)
  redis.call('DEL', prefix .. 'ck:' .. file.okey)
  redis.call('ZREM', DEADLINES, KEYS[1])
  redis.call('HSET', KEYS[1], 'stage', ARGV[7], 'message', ARGV[6], 'deadline', ARGV[4])
  redis.call('EXPIREAT', KEYS[1], tonumber(ARGV[4]) + tonumber(ARGV[5]))
  return {'ok'}
end
return redis.error_reply('unknown step ' .. step)
