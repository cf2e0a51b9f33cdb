-- The delivery queue (see delivery/queue.rs): every step of it, as one
-- script. A delivery is the hash <prefix>d:<id>: record (its JSON),
-- settled (the JSON of its end, once delivered or dead). Pending ones are
-- in the sorted sets <prefix>dq:due (by due time) and <prefix>dq:pending
-- (by creation); every one is in <prefix>td:<token> (by creation) for the
-- token's status; dead ones in <prefix>dq:dead (by when), for the count.
-- The outcomes of a token's redeems are <prefix>te:<token> (event JSON by
-- when), expiring with the token.
-- ARGV[1] the step, ARGV[2] now, ARGV[3] the key prefix; then the step's.
local step = ARGV[1]
local now = tonumber(ARGV[2])
local prefix = ARGV[3]
local DUE, PENDING, DEAD = prefix .. 'dq:due', prefix .. 'dq:pending', prefix .. 'dq:dead'

local function delivery_key(id)
  return prefix .. 'd:' .. id
end


if step == 'enqueue' then
  -- ARGV[4] id, ARGV[5] record JSON, ARGV[6] due, ARGV[7] created at,
  -- ARGV[8] token, ARGV[9] keep until (the last retry, plus retention).
  local key = delivery_key(ARGV[4])
  if redis.call('EXISTS', key) == 1 then
    return 0
  end
  redis.call('HSET', key, 'record', ARGV[5])
  redis.call('EXPIREAT', key, ARGV[9])
  redis.call('ZADD', DUE, ARGV[6], ARGV[4])
  redis.call('ZADD', PENDING, ARGV[7], ARGV[4])
  local of_token = prefix .. 'td:' .. ARGV[8]
  redis.call('ZADD', of_token, ARGV[7], ARGV[4])
  keep_until(of_token, tonumber(ARGV[9]), now)
  return 1

elseif step == 'take' then
  -- ARGV[4] lease end, ARGV[5] how many at most. Returns the records.
  local ids = redis.call('ZRANGEBYSCORE', DUE, '-inf', now, 'LIMIT', 0, tonumber(ARGV[5]))
  local records = {}
  for _, id in ipairs(ids) do
    local record = redis.call('HGET', delivery_key(id), 'record')
    if record then
      redis.call('ZADD', DUE, ARGV[4], id)
      table.insert(records, record)
    else
      -- Gone (kept past its end): nothing to deliver any more.
      redis.call('ZREM', DUE, id)
      redis.call('ZREM', PENDING, id)
    end
  end
  return records

elseif step == 'settle' then
  -- ARGV[4] id, ARGV[5] the record as attempted, ARGV[6] 'retry' (then
  -- ARGV[7] the new due time) or 'settled' (then ARGV[7] the end's JSON,
  -- ARGV[8] 'dead' or 'delivered', ARGV[9] the retention).
  local key = delivery_key(ARGV[4])
  if redis.call('EXISTS', key) == 0 or redis.call('HEXISTS', key, 'settled') == 1 then
    return 0
  end
  redis.call('HSET', key, 'record', ARGV[5])
  if ARGV[6] == 'retry' then
    redis.call('ZADD', DUE, ARGV[7], ARGV[4])
    return 1
  end
  redis.call('HSET', key, 'settled', ARGV[7])
  redis.call('ZREM', DUE, ARGV[4])
  redis.call('ZREM', PENDING, ARGV[4])
  local retention = tonumber(ARGV[9])
  redis.call('EXPIRE', key, retention)
  if ARGV[8] == 'dead' then
    redis.call('ZADD', DEAD, now, ARGV[4])
  end
  redis.call('ZREMRANGEBYSCORE', DEAD, '-inf', now - retention)
  return 1

elseif step == 'list' then
  -- ARGV[4] token. Returns {record, settled or '', due or ''} per delivery.
  local ids = redis.call('ZRANGE', prefix .. 'td:' .. ARGV[4], 0, -1)
  local found = {}
  for _, id in ipairs(ids) do
    local fields = redis.call('HMGET', delivery_key(id), 'record', 'settled')
    if fields[1] then
      table.insert(found, fields[1])
      table.insert(found, fields[2] or '')
      table.insert(found, redis.call('ZSCORE', DUE, id) or '')
    end
  end
  return found

elseif step == 'event' then
  -- ARGV[4] the token, ARGV[5] its hash's key, ARGV[6] the event JSON,
  -- ARGV[7] when it was recorded (µs), ARGV[8] how many are kept, ARGV[9] the
  -- retention of a token's keys when its hash has no expiry to follow.
  local events = prefix .. 'te:' .. ARGV[4]
  redis.call('ZADD', events, ARGV[7], ARGV[6])
  redis.call('ZREMRANGEBYRANK', events, 0, -(tonumber(ARGV[8]) + 1))
  local ttl = redis.call('TTL', ARGV[5])
  if ttl > 0 then
    keep_until(events, now + ttl, now)
  else
    keep_until(events, now + tonumber(ARGV[9]), now)
  end
  return 1

elseif step == 'events' then
  -- ARGV[4] the token. Returns the events' JSON, oldest first.
  return redis.call('ZRANGE', prefix .. 'te:' .. ARGV[4], 0, -1)

elseif step == 'stats' then
  -- ARGV[4] the retention. Returns {pending, oldest creation or '', dead}.
  local oldest = redis.call('ZRANGE', PENDING, 0, 0, 'WITHSCORES')
  return {redis.call('ZCARD', PENDING), oldest[2] or '',
    redis.call('ZCOUNT', DEAD, now - tonumber(ARGV[4]), '+inf')}
end
return redis.error_reply('unknown step ' .. step)
