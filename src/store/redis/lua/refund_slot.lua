-- Gives a reserved slot back. KEYS[1] lease set; ARGV[1] reservation id.
return redis.call('ZREM', KEYS[1], ARGV[1])
