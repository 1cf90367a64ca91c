-- Read a channel's history together with its position, atomically.
-- KEYS[1] meta hash   KEYS[2] history stream
-- ARGV[1] first offset to return (since + 1)   ARGV[2] limit
-- ARGV[3] epoch to use if the stream is new    ARGV[4] ttl (ms) of meta created here
-- Returns {top, epoch, first_offset, {payload, ...}}.
local meta = redis.call('HMGET', KEYS[1], 'epoch', 'top')
local epoch = meta[1]
if not epoch then
  -- Fix the epoch now so that everyone who reads before the first
  -- publication agrees on it; the first publish sets the history ttl.
  epoch = ARGV[3]
  redis.call('DEL', KEYS[2])
  redis.call('HSET', KEYS[1], 'epoch', epoch, 'top', 0)
  redis.call('PEXPIRE', KEYS[1], ARGV[4])
  return {0, epoch, 1, {}}
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
