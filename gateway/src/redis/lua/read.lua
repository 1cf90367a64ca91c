#!lua flags=no-writes
-- Read a channel's history together with its position, atomically. Never
-- writes (the no-writes flag makes Redis enforce it): a read of a channel
-- without history creates no key.
-- KEYS[1] meta hash   KEYS[2] history stream
-- ARGV[1] first offset to return (since + 1)   ARGV[2] limit
-- Returns {top, epoch, first_offset, {payload, ...}}; a channel without meta
-- has no stream yet: {0, '', 1, {}} (the empty epoch matches any epoch).
local meta = redis.call('HMGET', KEYS[1], 'epoch', 'top')
local epoch = meta[1]
if not epoch then
  return {0, '', 1, {}}
end
local top = tonumber(meta[2]) or 0
local first_offset = top + 1
local head = redis.call('XRANGE', KEYS[2], '-', '+', 'COUNT', 1)
if #head > 0 then
  first_offset = tonumber(string.match(head[1][1], '^%d+'))
end
local out = {}
if tonumber(ARGV[2]) > 0 then
  local entries = redis.call('XRANGE', KEYS[2], ARGV[1], '+', 'COUNT', ARGV[2])
  for i = 1, #entries do
    out[i] = entries[i][2][2]
  end
end
return {top, epoch, first_offset, out}
