-- Stores a newly issued token, if its photo exists.
-- KEYS[1] token hash, KEYS[2] its lease set, KEYS[3] the photo's meta
-- ARGV[1] grant JSON, ARGV[2] max_uploads, ARGV[3] valid_until, ARGV[4] expire_at
-- Returns 1, or 0 when there is no such photo (nothing stored).
if redis.call('EXISTS', KEYS[3]) == 0 then
  return 0
end
redis.call('DEL', KEYS[1], KEYS[2])
redis.call('HSET', KEYS[1], 'grant', ARGV[1], 'max', ARGV[2], 'until', ARGV[3], 'committed', 0)
redis.call('EXPIREAT', KEYS[1], ARGV[4])
return 1
