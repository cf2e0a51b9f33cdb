-- First step of a commit: turns a live reservation into a committed upload
-- and records the version to be appended, so that a crash before the
-- second step (on the photo) leaves what is needed to finish it.
-- KEYS[1] token hash, KEYS[2] lease set
-- ARGV[1] now, ARGV[2] reservation id, ARGV[3] pending commit JSON
-- Returns 1, or 0 when the lease is gone (nothing changed).
local lease = redis.call('ZSCORE', KEYS[2], ARGV[2])
if not lease or tonumber(lease) <= tonumber(ARGV[1]) then
  return 0
end
redis.call('ZREM', KEYS[2], ARGV[2])
redis.call('HINCRBY', KEYS[1], 'committed', 1)
redis.call('HSET', KEYS[1], 'pending:' .. ARGV[2], ARGV[3])
return 1
