-- Changes an upload token's metadata: without a file, the token's own
-- (for files to come) and every photo created from it; with a file, that
-- file's own and its photo, if created already.
-- KEYS[1] token hash
-- ARGV[1] now, ARGV[2] the fields to change (a JSON object), ARGV[3] the
-- file's Resumable.js identifier or '', ARGV[4] the key prefix, ARGV[5]
-- the most files with metadata of their own.
-- Returns 'ok', 'unknown' (no such upload token, or expired) or 'too_many_files'.
local token = redis.call('HMGET', KEYS[1], 'until', 'kind')
if not token[1] or token[2] ~= 'upload' or tonumber(token[1]) <= tonumber(ARGV[1]) then
  return 'unknown'
end
local update = cjson.decode(ARGV[2])
local function merged(json)
  local object = cjson.decode(json)
  for field, value in pairs(update) do
    object[field] = value
  end
  return cjson.encode(object)
end
local function update_photo(id)
  local key = ARGV[4] .. 'p:' .. id
  local record = redis.call('GET', key)
  if record then
    redis.call('SET', key, merged(record))
  end
end
local file = ARGV[3]
if file == '' then
  redis.call('HSET', KEYS[1], 'meta', merged(redis.call('HGET', KEYS[1], 'meta')))
  for id in string.gmatch(redis.call('HGET', KEYS[1], 'photos') or '', '[^,]+') do
    update_photo(id)
  end
  return 'ok'
end
local own = redis.call('HGET', KEYS[1], 'f:' .. file)
if not own then
  if tonumber(redis.call('HGET', KEYS[1], 'files') or 0) >= tonumber(ARGV[5]) then
    return 'too_many_files'
  end
  redis.call('HINCRBY', KEYS[1], 'files', 1)
  own = '{}'
end
redis.call('HSET', KEYS[1], 'f:' .. file, merged(own))
local id = redis.call('HGET', KEYS[1], 'fp:' .. file)
if id then
  update_photo(id)
end
return 'ok'
