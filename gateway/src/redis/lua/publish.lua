#!lua
-- Append a publication to a channel's history and publish it, atomically.
-- KEYS[1] meta hash (epoch, top)   KEYS[2] history stream
-- ARGV[1] pub/sub channel          ARGV[2] history size (MAXLEN)
-- ARGV[3] history ttl (ms)         ARGV[4] envelope prefix
-- ARGV[5] envelope suffix          ARGV[6] epoch to use if the stream is new
-- Returns {offset, epoch}.
local epoch = redis.call('HGET', KEYS[1], 'epoch')
if not epoch then
  -- No meta: the stream is new or was lost. A stream without meta is stale
  -- (its epoch is gone), so drop it before starting the new epoch.
  epoch = ARGV[6]
  redis.call('DEL', KEYS[2])
  redis.call('HSET', KEYS[1], 'epoch', epoch)
end
local offset = redis.call('HINCRBY', KEYS[1], 'top', 1)
-- The payload is concatenated, never parsed: `data` bytes stay untouched.
-- The epoch is ours (history::new_epoch: 16 hex digits), safe to splice in
-- unescaped.
local payload = ARGV[4] .. offset .. ',"epoch":"' .. epoch .. '"' .. ARGV[5]
redis.call('XADD', KEYS[2], 'MAXLEN', ARGV[2], offset .. '-0', 'e', payload)
redis.call('PEXPIRE', KEYS[1], ARGV[3])
redis.call('PEXPIRE', KEYS[2], ARGV[3])
redis.call('PUBLISH', ARGV[1], payload)
return {offset, epoch}
