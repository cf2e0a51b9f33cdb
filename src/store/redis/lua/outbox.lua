-- Put before the commit scripts (append_version.lua, create_from_token.lua),
-- after expiry.lua:
-- a commit's outbox (see delivery/outbox.rs), written in the commit's own
-- script. The outbox is one JSON argument, {prefix, entries}; each entry a
-- delivery {kind 'delivery', id, json, due, created, keep_until, token} or
-- the event {kind 'event', json, order, kept, keep_until, token}. Each is
-- kept as {"t": its JSON, "r": the photo record, "v": the version} (the
-- keys and their shapes as deliveries.lua's).

-- Decodes the outbox argument (before the script's first write).
local function read_outbox(argument)
  if not argument or argument == '' then
    return nil
  end
  return cjson.decode(argument)
end


-- Writes `outbox`'s entries, each with the commit's `record` and `version`.
local function write_outbox(outbox, now, record, version)
  if not outbox then
    return
  end
  local prefix = outbox.prefix
  for _, entry in ipairs(outbox.entries) do
    local kept = '{"t":' .. entry.json .. ',"r":' .. record .. ',"v":' .. version .. '}'
    local of_token
    if entry.kind == 'delivery' then
      local key = prefix .. 'd:' .. entry.id
      redis.call('HSET', key, 'record', kept)
      redis.call('EXPIREAT', key, entry.keep_until)
      redis.call('ZADD', prefix .. 'dq:due', entry.due, entry.id)
      redis.call('ZADD', prefix .. 'dq:pending', entry.created, entry.id)
      of_token = prefix .. 'td:' .. entry.token
      redis.call('ZADD', of_token, entry.created, entry.id)
    else
      of_token = prefix .. 'te:' .. entry.token
      redis.call('ZADD', of_token, entry.order, kept)
      redis.call('ZREMRANGEBYRANK', of_token, 0, -(entry.kept + 1))
    end
    keep_until(of_token, entry.keep_until, now)
  end
end

