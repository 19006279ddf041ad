-- KEYS: heads, log. ARGV: channel, cutoff, budget.
-- Drops the channel's entries older than cutoff; returns how many.
local cutoff, budget = tonumber(ARGV[2]), tonumber(ARGV[3])
local trimmed, keep, start = 0, nil, '-'
while true do
  local batch = redis.call('XRANGE', KEYS[2], start, '+', 'COUNT', 100)
  for _, e in ipairs(batch) do
    if tonumber(e[2][2]) < cutoff and trimmed < budget then
      trimmed = trimmed + 1
    else
      keep = e
      break
    end
  end
  if keep or #batch < 100 then break end
  start = '(' .. batch[#batch][1]
end
if trimmed > 0 then
  if keep then
    redis.call('XTRIM', KEYS[2], 'MINID', keep[1])
  else
    redis.call('XTRIM', KEYS[2], 'MAXLEN', 0)
  end
end
if keep then
  redis.call('ZADD', KEYS[1], tonumber(keep[2][2]), ARGV[1])
else
  redis.call('ZREM', KEYS[1], ARGV[1])
end
return trimmed
