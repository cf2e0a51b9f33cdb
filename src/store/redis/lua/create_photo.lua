-- Stores a new photo with its first version.
-- KEYS[1] photo meta, KEYS[2] versions
-- ARGV[1] meta JSON, ARGV[2] first version JSON without its number
redis.call('SET', KEYS[1], ARGV[1])
redis.call('DEL', KEYS[2])
redis.call('RPUSH', KEYS[2], '{"number":1,' .. string.sub(ARGV[2], 2))
return 1
