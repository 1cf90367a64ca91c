#!lua flags=allow-oom
-- Remove expired entries of an expiring hash and return them. Atomic, so
-- each expired entry is returned to exactly one caller.
-- KEYS[1] hash (id -> JSON)   KEYS[2] sorted set (id -> expiry ms)
-- ARGV[1] now (ms)   ARGV[2] at most this many entries per call
-- Returns {number of ids removed, {json of each removed entry that still
-- had one, ...}}.
local ids = redis.call('ZRANGEBYSCORE', KEYS[2], '-inf', ARGV[1], 'LIMIT', 0, ARGV[2])
local out = {}
for i = 1, #ids, 500 do
  local chunk = {}
  for j = i, math.min(i + 499, #ids) do chunk[#chunk + 1] = ids[j] end
  local vals = redis.call('HMGET', KEYS[1], unpack(chunk))
  for j = 1, #vals do
    if vals[j] then out[#out + 1] = vals[j] end
  end
  redis.call('HDEL', KEYS[1], unpack(chunk))
  redis.call('ZREM', KEYS[2], unpack(chunk))
end
return {#ids, out}
