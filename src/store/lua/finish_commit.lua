-- Last step of a commit: the version is on the photo; forget the record.
-- KEYS[1] token hash; ARGV[1] reservation id
return redis.call('HDEL', KEYS[1], 'pending:' .. ARGV[1])
