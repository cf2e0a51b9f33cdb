-- Reserves one upload slot, leased until ARGV[2].
-- KEYS[1] token hash, KEYS[2] its lease set (reservation id -> lease end),
-- KEYS[3] the reservation's withdrawal mark (see withdraw_slot.lua)
-- ARGV[1] now, ARGV[2] lease end, ARGV[3] reservation id, ARGV[4] retention after expiry,
-- ARGV[5] the kind of token the caller redeems (a token of another kind is unknown)
-- Returns {'ok', grant JSON, lease end} or {'unknown'} / {'expired'} /
-- {'used_up'} / {'withdrawn'}. A reservation made already (its reply was
-- lost, and the call is made again) is answered as it is.
local token = redis.call('HMGET', KEYS[1], 'until', 'max', 'committed', 'grant', 'kind')
-- Tokens issued before upload tokens existed have no kind: replace tokens.
if not token[4] or (token[5] or 'replace') ~= ARGV[5] then
  return {'unknown'}
end
local now = tonumber(ARGV[1])
local lease_end = tonumber(ARGV[2])
if tonumber(token[1]) <= now then
  return {'expired'}
end
if redis.call('EXISTS', KEYS[3]) == 1 then
  return {'withdrawn'}
end
-- Leases that ran out belong to reservations whose holder went away.
redis.call('ZREMRANGEBYSCORE', KEYS[2], '-inf', now)
local made = redis.call('ZSCORE', KEYS[2], ARGV[3])
if made then
  return {'ok', token[4], made}
end
if tonumber(token[3]) + redis.call('ZCARD', KEYS[2]) >= tonumber(token[2]) then
  return {'used_up'}
end
redis.call('ZADD', KEYS[2], lease_end, ARGV[3])
-- Both keys live as long as the token or the longest lease, plus retention.
-- (Never shorter than issue_token set: lease_end > now and until > now.)
-- Never shortened: another reservation (a chunked file's) may last longer.
local expire_at = math.max(tonumber(token[1]), lease_end) + tonumber(ARGV[4])
for _, key in ipairs({KEYS[1], KEYS[2]}) do
  local ttl = redis.call('TTL', key)
  if ttl < 0 or now + ttl < expire_at then
    redis.call('EXPIREAT', key, expire_at)
  end
end
return {'ok', token[4], ARGV[2]}
