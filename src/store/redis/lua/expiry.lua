-- Put before the scripts that extend expiries (see `Scripts` in mod.rs).
-- Moves `key`'s expiry to `at` (Unix seconds) unless it expires later
-- already; a key without an expiry gets this one, a missing key none.
local function keep_until(key, at, now)
  local ttl = redis.call('TTL', key)
  if ttl == -1 or (ttl >= 0 and now + ttl < at) then
    redis.call('EXPIREAT', key, at)
  end
end

