#!lua
-- Write one entry of an expiring hash and prune entries long expired.
-- KEYS[1] hash (id -> JSON)   KEYS[2] sorted set (id -> expiry ms)
-- ARGV[1] id   ARGV[2] JSON   ARGV[3] expiry (ms)   ARGV[4] key ttl (ms)
-- ARGV[5] delete entries that expired before this time (ms)
-- KEYS[3] (members of a named user only) the set of that user's
-- connections in the channel.
-- Returns, with KEYS[3], 1 when the id made the set go from empty to one
-- (the user's first connection: member_added), else 0; without it, the
-- number of pruned entries.
redis.call('HSET', KEYS[1], ARGV[1], ARGV[2])
redis.call('ZADD', KEYS[2], ARGV[3], ARGV[1])
-- Bounded pruning on the write path keeps a busy key from collecting the
-- entries of crashed nodes forever (its key TTL keeps being extended).
local dead = redis.call('ZRANGEBYSCORE', KEYS[2], '-inf', '(' .. ARGV[5], 'LIMIT', 0, 100)
if #dead > 0 then
  redis.call('HDEL', KEYS[1], unpack(dead))
  redis.call('ZREM', KEYS[2], unpack(dead))
end
redis.call('PEXPIRE', KEYS[1], ARGV[4])
redis.call('PEXPIRE', KEYS[2], ARGV[4])
if KEYS[3] then
  -- No TTL: the set is deleted with its last member (SREM).
  local added = redis.call('SADD', KEYS[3], ARGV[1])
  if added == 1 and redis.call('SCARD', KEYS[3]) == 1 then return 1 end
  return 0
end
return #dead
