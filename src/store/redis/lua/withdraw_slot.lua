-- Withdraws a reservation whose reserve may still be applied (its call
-- timed out): gives its slot back if it was made, and marks it so that a
-- reserve of it arriving later is refused.
-- KEYS[1] the token's lease set, KEYS[2] the reservation's withdrawal mark;
-- ARGV[1] the reservation id, ARGV[2] when the mark may go (Unix seconds).
redis.call('ZREM', KEYS[1], ARGV[1])
redis.call('SET', KEYS[2], '1', 'EXAT', ARGV[2])
return 1
