-- Changes an upload token's metadata: without a file, the token's own
-- (for files to come) and every photo created from it, and the same
-- fields are forgotten from its files' own (the latest change wins); with
-- a file, that file's own and its photos, if made already.
-- KEYS[1] token hash
-- ARGV[1] now, ARGV[2] the fields to change (a JSON object), ARGV[3] the
-- file's Resumable.js identifier or '', ARGV[4] the key prefix.
-- Returns 'ok', 'unknown' (no such upload token, or expired) or
-- 'too_many_files' (as many files as the token has uploads have
-- metadata of their own already).
local token = redis.call('HMGET', KEYS[1], 'until', 'kind', 'meta', 'max', 'files')
if not token[1] or token[2] ~= 'upload' or tonumber(token[1]) <= tonumber(ARGV[1]) then
  return 'unknown'
end
local update = cjson.decode(ARGV[2])
local function merged(json)
  local object = cjson.decode(json)
  for field, value in pairs(update) do
    object[field] = value
  end
  return cjson.encode(object)
end
local function update_photos(ids)
  for id in string.gmatch(ids or '', '[^,]+') do
    local key = ARGV[4] .. 'p:' .. id
    local record = redis.call('GET', key)
    if record then
      redis.call('SET', key, merged(record))
    end
  end
end
local file = ARGV[3]
if file == '' then
  local meta = merged(token[3])
  local own_files = {}
  local fields = redis.call('HGETALL', KEYS[1])
  for i = 1, #fields, 2 do
    if string.sub(fields[i], 1, 2) == 'f:' then
      local own = cjson.decode(fields[i + 1])
      for field in pairs(update) do
        own[field] = nil
      end
      own_files[#own_files + 1] = {fields[i], cjson.encode(own)}
    end
  end
  redis.call('HSET', KEYS[1], 'meta', meta)
  for _, own in ipairs(own_files) do
    redis.call('HSET', KEYS[1], own[1], own[2])
  end
  update_photos(redis.call('HGET', KEYS[1], 'photos'))
  return 'ok'
end
local own = redis.call('HGET', KEYS[1], 'f:' .. file)
if not own then
  if tonumber(token[5] or 0) >= tonumber(token[4]) then
    return 'too_many_files'
  end
  own = '{}'
  redis.call('HINCRBY', KEYS[1], 'files', 1)
end
redis.call('HSET', KEYS[1], 'f:' .. file, merged(own))
update_photos(redis.call('HGET', KEYS[1], 'fp:' .. file))
return 'ok'
