#!lua flags=allow-oom
-- Set (or delete, when 0) one node's subscriber count of a channel, and say
-- whether the channel went from no subscriber anywhere to some or back.
-- Atomic, so exactly one writer cluster-wide sees each transition.
-- KEYS[1] the channel's counts hash (node id -> local count)
-- ARGV[1] node id   ARGV[2] count
-- Returns 1 (occupied), -1 (vacated) or 0.
-- allow-oom: a write here only replaces or deletes one small field, and a
-- refused vacate would leave a dead count behind.
local before = redis.call('HLEN', KEYS[1])
if tonumber(ARGV[2]) > 0 then
  redis.call('HSET', KEYS[1], ARGV[1], ARGV[2])
else
  redis.call('HDEL', KEYS[1], ARGV[1])
end
local after = redis.call('HLEN', KEYS[1])
if before == 0 and after > 0 then
  return 1
end
if before > 0 and after == 0 then
  return -1
end
return 0
