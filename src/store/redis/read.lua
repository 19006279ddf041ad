-- KEYS: meta, log, fresh. ARGV: after, limit, a random epoch, channel.
-- Returns {epoch, last, first, entries}. Writes nothing: a channel without
-- a meta hash reads empty, in the epoch an append would create it in
-- (derived from the `fresh` key and the name; the random one while that
-- key is missing).
local epoch = redis.call('HGET', KEYS[1], 'epoch')
if not epoch then
  local fresh = redis.call('GET', KEYS[3])
  if fresh then
    epoch = string.sub(redis.sha1hex(fresh .. ARGV[4]), 1, 16)
  else
    epoch = ARGV[3]
  end
  return {epoch, 0, 1, {}}
end
local last = tonumber(redis.call('HGET', KEYS[1], 'last'))
local first = last + 1
local head = redis.call('XRANGE', KEYS[2], '-', '+', 'COUNT', 1)
if #head > 0 then
  first = tonumber(string.match(head[1][1], '^(%d+)'))
end
local entries = {}
local limit = tonumber(ARGV[2])
if limit > 0 then
  entries = redis.call('XRANGE', KEYS[2], string.format('%d-0', tonumber(ARGV[1]) + 1), '+', 'COUNT', limit)
end
return {epoch, last, first, entries}
