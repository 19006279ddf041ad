-- KEYS: notify, heads, fresh, then (meta, log, dedupe) per notification.
-- ARGV: now, max_per_channel, dedupe_window, notify_max_len, fresh epoch,
-- then (channel, dedupe key, fields, provenance or '') per notification.
-- Returns {epoch, offset, duplicate} per notification.
local now, maxlen, window, notify_max, fresh = ARGV[1], ARGV[2], tonumber(ARGV[3]), ARGV[4], ARGV[5]
local out = {}
for i = 1, (#KEYS - 3) / 3 do
  local meta, log, dd = KEYS[3 * i + 1], KEYS[3 * i + 2], KEYS[3 * i + 3]
  local channel, key, fields, prov = ARGV[4 * i + 2], ARGV[4 * i + 3], ARGV[4 * i + 4], ARGV[4 * i + 5]
  local epoch = redis.call('HGET', meta, 'epoch')
  if not epoch then
    if redis.call('EXISTS', log, dd) > 0 then
      -- What is left of a history whose hash was lost: a new epoch, so
      -- no id of the old one resumes into the new.
      epoch = fresh
    else
      -- The epoch reads of the missing channel answered (read.lua), so a
      -- position `<epoch>-0` read then resumes into what is appended now.
      local base = redis.call('GET', KEYS[3])
      if not base then
        base = fresh
        redis.call('SET', KEYS[3], base)
      end
      epoch = string.sub(redis.sha1hex(base .. channel), 1, 16)
    end
    redis.call('DEL', log, dd)
    redis.call('HSET', meta, 'epoch', epoch, 'last', 0)
  end
  local seen = redis.call('ZSCORE', dd, key)
  if seen then
    out[i] = {epoch, tonumber(seen), 1}
  else
    local offset = redis.call('HINCRBY', meta, 'last', 1)
    local id = string.format('%d-0', offset)
    -- `p` only when there is one: an entry without reads as one written
    -- before herald kept provenance.
    if prov == '' then
      redis.call('XADD', log, 'MAXLEN', maxlen, id, 't', now, 'f', fields)
    else
      redis.call('XADD', log, 'MAXLEN', maxlen, id, 't', now, 'f', fields, 'p', prov)
    end
    if redis.call('XLEN', log) == 1 then
      redis.call('ZADD', KEYS[2], 'NX', now, channel)
    end
    redis.call('ZADD', dd, offset, key)
    if offset > window then
      redis.call('ZREMRANGEBYSCORE', dd, '-inf', offset - window)
    end
    redis.call('XADD', KEYS[1], 'MAXLEN', '~', notify_max, '*',
      'c', channel, 'e', epoch, 'o', offset, 't', now, 'f', fields, 'p', prov)
    out[i] = {epoch, offset, 0}
  end
end
return out
