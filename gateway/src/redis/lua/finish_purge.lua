#!lua flags=allow-oom
-- End the purge of a node: drop it from the registry unless it came back
-- meanwhile (heartbeat after the cutoff), and release the claim.
-- KEYS[1] seen set   KEYS[2] registry hash   KEYS[3] registry expiry set
-- KEYS[4] lease key
-- ARGV[1] id   ARGV[2] cutoff (ms)
-- Returns 1 when the node was dropped (still stale), 0 when it came back.
local seen = redis.call('ZSCORE', KEYS[1], ARGV[1])
local dropped = 0
if not seen or tonumber(seen) < tonumber(ARGV[2]) then
  redis.call('ZREM', KEYS[1], ARGV[1])
  redis.call('HDEL', KEYS[2], ARGV[1])
  redis.call('ZREM', KEYS[3], ARGV[1])
  dropped = 1
end
redis.call('DEL', KEYS[4])
return dropped
