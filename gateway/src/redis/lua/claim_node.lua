#!lua
-- Claim the purge of one stale node: at most one live node holds the claim
-- (a lease that expires, so a claimer that dies lets another take over).
-- KEYS[1] seen set (id -> last heartbeat, ms)   KEYS[2] lease key
-- ARGV[1] id   ARGV[2] cutoff (ms): stale when last seen before it
-- ARGV[3] claimer id   ARGV[4] lease (ms)
-- Returns 1 when this caller holds the claim, else 0.
local seen = redis.call('ZSCORE', KEYS[1], ARGV[1])
if not seen or tonumber(seen) >= tonumber(ARGV[2]) then
  return 0
end
if redis.call('SET', KEYS[2], ARGV[3], 'NX', 'PX', ARGV[4]) then
  return 1
end
return 0
