#!lua
-- Drop one connection from its user's set in a presence channel (a member
-- that expired or whose node was purged; each is handed to one caller).
-- KEYS[1] the user's set (P:pres-u:{c}:<user>)   ARGV[1] conn id
-- Returns 1 when that was the user's last connection (member_removed).
if redis.call('SREM', KEYS[1], ARGV[1]) == 1 and redis.call('SCARD', KEYS[1]) == 0 then
  return 1
end
return 0
