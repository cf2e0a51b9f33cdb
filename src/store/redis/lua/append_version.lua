-- Appends a version to a photo, making it the current one. With a
-- reservation id it is the commit of a redeem: the reservation's lease must
-- be live, and it is consumed in this same script, so the slot is spent if
-- and only if the version is recorded.
-- KEYS[1] photo meta (string), KEYS[2] versions (list);
-- for a commit also KEYS[3] token hash, KEYS[4] its lease set.
-- ARGV[1] version JSON without its number (an object);
-- for a commit also ARGV[2] now, ARGV[3] reservation id;
-- for the commit of a chunked file also KEYS[5] its hash, ARGV[4] the end
-- of its keeping, ARGV[5] the retention after it, ARGV[6] the key prefix
-- ('' each for another commit); ARGV[7] the commit's outbox, or ''.
-- Returns {'ok', meta, the new version's JSON} or {'lease_lost'} / {'no_photo'}:
-- O(1) whatever the number of versions before it.
local outbox = read_outbox(ARGV[7])
if ARGV[3] then
  local lease = redis.call('ZSCORE', KEYS[4], ARGV[3])
  if not lease or tonumber(lease) <= tonumber(ARGV[2]) then
    return {'lease_lost'}
  end
end
local meta = redis.call('GET', KEYS[1])
if not meta then
  return {'no_photo'}
end
if ARGV[3] then
  redis.call('ZREM', KEYS[4], ARGV[3])
  redis.call('HINCRBY', KEYS[3], 'committed', 1)
end
local number = redis.call('LLEN', KEYS[2]) + 1
local version = '{"number":' .. number .. ',' .. string.sub(ARGV[1], 2)
redis.call('RPUSH', KEYS[2], version)
if KEYS[5] then
  local okey = redis.call('HGET', KEYS[5], 'okey')
  redis.call('HSET', KEYS[5], 'stage', 'completed', 'record', meta, 'version', version, 'deadline', ARGV[4])
  redis.call('EXPIREAT', KEYS[5], tonumber(ARGV[4]) + tonumber(ARGV[5]))
  if okey then redis.call('DEL', ARGV[6] .. 'ck:' .. okey) end
  redis.call('ZREM', ARGV[6] .. 'cf:deadlines', KEYS[5])
end
if ARGV[3] then
  write_outbox(outbox, tonumber(ARGV[2]), meta, version)
end
return {'ok', meta, version}
