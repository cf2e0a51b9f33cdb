-- Commits a redeem of an upload token: consumes the reservation and
-- creates the photo it uploaded, with the token's metadata (and, for a
-- file with metadata of its own, that on top), in this one script: the
-- slot is spent if and only if the photo exists.
-- KEYS[1] token hash, KEYS[2] its lease set, KEYS[3] the photo id sequence
-- ARGV[1] now, ARGV[2] reservation id, ARGV[3] the photo's record JSON
-- without its id and metadata, ARGV[4] first version JSON without its
-- number (an object), ARGV[5] the file's Resumable.js identifier or '',
-- ARGV[6] the key prefix (the photo's keys follow from its new id).
-- Returns {'ok', photo record JSON, version JSON} or {'lease_lost'}.
local lease = redis.call('ZSCORE', KEYS[2], ARGV[2])
if not lease or tonumber(lease) <= tonumber(ARGV[1]) then
  return {'lease_lost'}
end
redis.call('ZREM', KEYS[2], ARGV[2])
redis.call('HINCRBY', KEYS[1], 'committed', 1)
local id = redis.call('INCR', KEYS[3])
local record = cjson.decode(ARGV[3])
for field, value in pairs(cjson.decode(redis.call('HGET', KEYS[1], 'meta'))) do
  record[field] = value
end
local file = ARGV[5]
if file ~= '' then
  local own = redis.call('HGET', KEYS[1], 'f:' .. file)
  if own then
    for field, value in pairs(cjson.decode(own)) do
      record[field] = value
    end
  end
  redis.call('HSET', KEYS[1], 'fp:' .. file, id)
end
record['photo_id'] = id
local encoded = cjson.encode(record)
local photo = ARGV[6] .. 'p:' .. id
redis.call('SET', photo, encoded)
local version = '{"number":1,' .. string.sub(ARGV[4], 2)
redis.call('RPUSH', photo .. ':versions', version)
local photos = redis.call('HGET', KEYS[1], 'photos') or ''
if photos == '' then photos = tostring(id) else photos = photos .. ',' .. id end
redis.call('HSET', KEYS[1], 'photos', photos)
return {'ok', encoded, version}
