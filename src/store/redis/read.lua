-- KEYS: meta, log, dedupe. ARGV: fresh epoch, after, limit.
-- Returns {epoch, last, first, entries}.
local epoch = redis.call('HGET', KEYS[1], 'epoch')
if not epoch then
  redis.call('DEL', KEYS[2], KEYS[3])
  redis.call('HSET', KEYS[1], 'epoch', ARGV[1], 'last', 0)
  epoch = ARGV[1]
end
local last = tonumber(redis.call('HGET', KEYS[1], 'last'))
local first = last + 1
local head = redis.call('XRANGE', KEYS[2], '-', '+', 'COUNT', 1)
if #head > 0 then
  first = tonumber(string.match(head[1][1], '^(%d+)'))
end
local entries = {}
local limit = tonumber(ARGV[3])
if limit > 0 then
  entries = redis.call('XRANGE', KEYS[2], string.format('%d-0', tonumber(ARGV[2]) + 1), '+', 'COUNT', limit)
end
return {epoch, last, first, entries}
