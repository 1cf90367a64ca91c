#!lua flags=no-writes
-- Read a channel's history together with its position, atomically. Never
-- writes (the no-writes flag makes Redis enforce it): a read of a channel
-- without history creates no key.
-- KEYS[1] meta hash   KEYS[2] history stream
-- ARGV[1] first offset to return (since + 1)   ARGV[2] limit
-- ARGV[3] replay budget in bytes (0: none). With a budget, only the newest
-- of the wanted entries are read, newest first, until their estimated
-- frames pass it (estimate: the entry's length - 1024, at least 1, never
-- more than the frame the gateway builds, so the gateway's exact trim
-- still has every entry it keeps); the rest never leaves Redis.
-- Returns {top, epoch, first_offset, {payload, ...}, stale}; a channel
-- without meta has no stream yet: {0, '', 1, {}, 0} (the empty epoch
-- matches any epoch). stale is 1 when the meta was written under another
-- primary (its rid is not this server's replication id, see publish.lua):
-- the stream may lack publications that were live, so no entry of it is
-- returned ({top, epoch, top + 1, {}, 1}: the caller must not offer that
-- epoch as valid), and the next publish starts a new epoch.
local meta = redis.call('HMGET', KEYS[1], 'epoch', 'top', 'rid')
local epoch = meta[1]
if not epoch then
  return {0, '', 1, {}, 0}
end
if meta[3] then
  local info = redis.call('INFO', 'replication')
  if meta[3] ~= (string.match(info, 'master_replid:(%w+)') or '') then
    local top = tonumber(meta[2]) or 0
    return {top, epoch, top + 1, {}, 1}
  end
end
local top = tonumber(meta[2]) or 0
local first_offset = top + 1
local head = redis.call('XRANGE', KEYS[2], '-', '+', 'COUNT', 1)
if #head > 0 then
  first_offset = tonumber(string.match(head[1][1], '^%d+'))
end
local out = {}
local from = tonumber(ARGV[1])
local limit = tonumber(ARGV[2])
local budget = tonumber(ARGV[3])
if limit > 0 and budget <= 0 then
  local entries = redis.call('XRANGE', KEYS[2], ARGV[1], '+', 'COUNT', ARGV[2])
  for i = 1, #entries do
    out[i] = entries[i][2][2]
  end
elseif limit > 0 then
  -- Offsets are contiguous ids <offset>-0 from first_offset to top: the
  -- wanted ones (the first `limit` from `from` on) start at lo, end at hi.
  local lo = math.max(from, first_offset)
  local hi = math.min(top, lo + limit - 1)
  local newest_first = {}
  local bytes = 0
  local full = false
  while not full and hi >= lo do
    local chunk = redis.call('XREVRANGE', KEYS[2], hi, lo, 'COUNT', 100)
    if #chunk == 0 then
      break
    end
    for i = 1, #chunk do
      local value = chunk[i][2][2]
      bytes = bytes + math.max(#value - 1024, 1)
      if bytes > budget then
        full = true
        break
      end
      newest_first[#newest_first + 1] = value
    end
    hi = tonumber(string.match(chunk[#chunk][1], '^%d+')) - 1
  end
  for i = #newest_first, 1, -1 do
    out[#out + 1] = newest_first[i]
  end
end
return {top, epoch, first_offset, out, 0}
