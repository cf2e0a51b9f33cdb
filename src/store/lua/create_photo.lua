-- Stores a new photo with its first version.
-- KEYS[1] photo meta, KEYS[2] versions, KEYS[3] object keys
-- ARGV[1] meta JSON, ARGV[2] object key, ARGV[3] first version JSON without its number
redis.call('SET', KEYS[1], ARGV[1])
redis.call('DEL', KEYS[2], KEYS[3])
redis.call('SADD', KEYS[3], ARGV[2])
redis.call('RPUSH', KEYS[2], '{"number":1,' .. string.sub(ARGV[3], 2))
return 1
