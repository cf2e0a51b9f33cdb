-- Commits a redeem of an upload token: consumes the reservation and
-- creates the photo it uploaded, with the token's metadata (and, for a
-- file with metadata of its own, that on top), in this one script: the
-- slot is spent if and only if the photo exists. Everything is read and
-- decoded before the first write, so a script that fails (Redis does not
-- roll scripts back) has changed nothing.
-- KEYS[1] token hash, KEYS[2] its lease set, KEYS[3] the photo id sequence
-- ARGV[1] now, ARGV[2] reservation id, ARGV[3] the photo's record JSON
-- without its id and metadata, ARGV[4] first version JSON without its
-- number (an object), ARGV[5] the file's Resumable.js identifier or '',
-- ARGV[6] the key prefix (the photo's keys follow from its new id);
-- for the commit of a chunked file also KEYS[4] its hash, ARGV[7] the end
-- of its keeping, ARGV[8] the retention after it ('' each for another
-- commit); ARGV[9] the commit's outbox, or ''.
-- Returns {'ok', photo record JSON, version JSON}, {'lease_lost'} or
-- {'corrupt'} (no metadata: nothing written).
local outbox = read_outbox(ARGV[9])
local lease = redis.call('ZSCORE', KEYS[2], ARGV[2])
if not lease or tonumber(lease) <= tonumber(ARGV[1]) then
  return {'lease_lost'}
end
local meta = redis.call('HGET', KEYS[1], 'meta')
if not meta then
  return {'corrupt'}
end
local record = cjson.decode(ARGV[3])
for field, value in pairs(cjson.decode(meta)) do
  record[field] = value
end
local file = ARGV[5]
local made_from_file = false
if file ~= '' then
  local own = redis.call('HGET', KEYS[1], 'f:' .. file)
  if own then
    for field, value in pairs(cjson.decode(own)) do
      record[field] = value
    end
  end
  made_from_file = redis.call('HGET', KEYS[1], 'fp:' .. file)
end
-- The writes.
redis.call('ZREM', KEYS[2], ARGV[2])
redis.call('HINCRBY', KEYS[1], 'committed', 1)
local id = redis.call('INCR', KEYS[3])
record['photo_id'] = id
local encoded = cjson.encode(record)
local photo = ARGV[6] .. 'p:' .. id
redis.call('SET', photo, encoded)
local version = '{"number":1,' .. string.sub(ARGV[4], 2)
redis.call('RPUSH', photo .. ':versions', version)
local photos = redis.call('HGET', KEYS[1], 'photos') or ''
if photos == '' then photos = tostring(id) else photos = photos .. ',' .. id end
redis.call('HSET', KEYS[1], 'photos', photos)
if file ~= '' then
  -- Two visitors' files may share an identifier: keep every photo.
  if made_from_file then made_from_file = made_from_file .. ',' .. id else made_from_file = tostring(id) end
  redis.call('HSET', KEYS[1], 'fp:' .. file, made_from_file)
end
if KEYS[4] then
  local okey = redis.call('HGET', KEYS[4], 'okey')
  redis.call('HSET', KEYS[4], 'stage', 'completed', 'record', encoded, 'version', version, 'deadline', ARGV[7])
  redis.call('EXPIREAT', KEYS[4], tonumber(ARGV[7]) + tonumber(ARGV[8]))
  if okey then redis.call('DEL', ARGV[6] .. 'ck:' .. okey) end
  redis.call('ZREM', ARGV[6] .. 'cf:deadlines', KEYS[4])
end
write_outbox(outbox, tonumber(ARGV[1]), encoded, version)
return {'ok', encoded, version}
