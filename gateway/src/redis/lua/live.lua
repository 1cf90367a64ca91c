#!lua flags=allow-oom
-- Unexpired values of an expiring hash (hash + sorted set of expiry times).
-- KEYS[1] hash (id -> JSON)   KEYS[2] sorted set (id -> expiry ms)
-- ARGV[1] now (ms)   ARGV[2] '1' to delete expired entries first (for
-- entries nobody sends events about: user index, node registry)
-- Returns {json, ...}.
if ARGV[2] == '1' then
  local dead = redis.call('ZRANGEBYSCORE', KEYS[2], '-inf', ARGV[1], 'LIMIT', 0, 1000)
  for i = 1, #dead, 500 do
    local chunk = {}
    for j = i, math.min(i + 499, #dead) do chunk[#chunk + 1] = dead[j] end
    redis.call('HDEL', KEYS[1], unpack(chunk))
    redis.call('ZREM', KEYS[2], unpack(chunk))
  end
end
local ids = redis.call('ZRANGEBYSCORE', KEYS[2], '(' .. ARGV[1], '+inf')
local out = {}
-- HMGET in chunks: unpack() of a huge table overflows the Lua stack.
for i = 1, #ids, 500 do
  local chunk = {}
  for j = i, math.min(i + 499, #ids) do chunk[#chunk + 1] = ids[j] end
  local vals = redis.call('HMGET', KEYS[1], unpack(chunk))
  for j = 1, #vals do
    if vals[j] then out[#out + 1] = vals[j] end
  end
end
return out
