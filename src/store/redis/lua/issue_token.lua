-- Stores a newly issued token; a replace token only if its photo exists.
-- KEYS[1] token hash, KEYS[2] its lease set; for a replace token KEYS[3]
-- the photo's meta.
-- ARGV[1] grant JSON, ARGV[2] max_uploads, ARGV[3] valid_until,
-- ARGV[4] expire_at, ARGV[5] kind ('replace' or 'upload'); for an upload
-- token ARGV[6] its metadata JSON (the working copy updates change).
-- Returns 1, or 0 when there is no such photo (nothing stored).
if KEYS[3] and redis.call('EXISTS', KEYS[3]) == 0 then
  return 0
end
redis.call('DEL', KEYS[1], KEYS[2])
redis.call('HSET', KEYS[1], 'grant', ARGV[1], 'max', ARGV[2], 'until', ARGV[3], 'committed', 0,
  'kind', ARGV[5])
if ARGV[6] then
  redis.call('HSET', KEYS[1], 'meta', ARGV[6], 'photos', '', 'files', 0)
end
redis.call('EXPIREAT', KEYS[1], ARGV[4])
return 1
