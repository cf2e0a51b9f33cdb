-- Appends a version to a photo unless a version with the same object key is
-- already there (so finishing an interrupted commit twice is harmless).
-- KEYS[1] photo meta (string), KEYS[2] versions (list), KEYS[3] object keys (set)
-- ARGV[1] object key, ARGV[2] version JSON without its number (an object)
-- Returns {meta, version JSON...} after the append, or {} for no photo.
local meta = redis.call('GET', KEYS[1])
if not meta then
  return {}
end
if redis.call('SADD', KEYS[3], ARGV[1]) == 1 then
  local number = redis.call('LLEN', KEYS[2]) + 1
  redis.call('RPUSH', KEYS[2], '{"number":' .. number .. ',' .. string.sub(ARGV[2], 2))
end
local photo = {meta}
for _, version in ipairs(redis.call('LRANGE', KEYS[2], 0, -1)) do
  photo[#photo + 1] = version
end
return photo
