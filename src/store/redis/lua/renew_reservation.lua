-- Extends a live lease. KEYS[1] token hash, KEYS[2] lease set
-- ARGV[1] now, ARGV[2] new lease end, ARGV[3] reservation id, ARGV[4] retention
-- Returns 1, or 0 when the reservation is no longer live.
local lease = redis.call('ZSCORE', KEYS[2], ARGV[3])
if not lease or tonumber(lease) <= tonumber(ARGV[1]) then
  return 0
end
local lease_end = math.max(tonumber(lease), tonumber(ARGV[2]))
redis.call('ZADD', KEYS[2], 'XX', lease_end, ARGV[3])
local valid_until = tonumber(redis.call('HGET', KEYS[1], 'until') or 0)
local expire_at = math.max(valid_until, lease_end) + tonumber(ARGV[4])
-- Never shortened: another reservation (a chunked file's) may last longer.
local now = tonumber(ARGV[1])
for _, key in ipairs(KEYS) do
  local ttl = redis.call('TTL', key)
  if ttl >= 0 and now + ttl < expire_at then
    redis.call('EXPIREAT', key, expire_at)
  end
end
return 1
