#!lua
-- Register or refresh a node in the registry and record when it was seen.
-- KEYS[1] registry hash (id -> JSON)   KEYS[2] registry expiry set (id -> ms)
-- KEYS[3] seen set (id -> last heartbeat, ms)   (all in the {nodes} slot)
-- ARGV[1] id   ARGV[2] JSON   ARGV[3] expiry (ms)   ARGV[4] key ttl (ms)
-- ARGV[5] now (ms)
-- Returns 1 when the registry entry was created (a new node, or one whose
-- entry a live node purged while it was stalled: it must re-announce its
-- presence), else 0.
local created = redis.call('HSET', KEYS[1], ARGV[1], ARGV[2])
redis.call('ZADD', KEYS[2], ARGV[3], ARGV[1])
redis.call('ZADD', KEYS[3], ARGV[5], ARGV[1])
-- Registry entries expired long ago (nodes gone for good) are pruned here.
local dead = redis.call('ZRANGEBYSCORE', KEYS[2], '-inf', '(' .. ARGV[5], 'LIMIT', 0, 100)
if #dead > 0 then
  redis.call('HDEL', KEYS[1], unpack(dead))
  redis.call('ZREM', KEYS[2], unpack(dead))
  redis.call('ZREM', KEYS[3], unpack(dead))
end
redis.call('PEXPIRE', KEYS[1], ARGV[4])
redis.call('PEXPIRE', KEYS[2], ARGV[4])
redis.call('PEXPIRE', KEYS[3], ARGV[4])
return created
