-- Reads a photo in one snapshot. KEYS[1] meta, KEYS[2] versions
-- Returns {meta, version JSON...} or {} for no photo.
local meta = redis.call('GET', KEYS[1])
if not meta then
  return {}
end
local photo = {meta}
for _, version in ipairs(redis.call('LRANGE', KEYS[2], 0, -1)) do
  photo[#photo + 1] = version
end
return photo
