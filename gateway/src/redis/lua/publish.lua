#!lua
-- Append a publication to a channel's history and publish it, atomically.
-- KEYS[1] meta hash (epoch, top, rid)   KEYS[2] history stream
-- ARGV[1] pub/sub channel          ARGV[2] history size (MAXLEN)
-- ARGV[3] history ttl (ms)         ARGV[4] envelope prefix
-- ARGV[5] envelope suffix          ARGV[6] epoch to use if the stream is new
-- ARGV[7] PUBLISH, or SPUBLISH in cluster mode (the channel shares the
--         keys' hash tag, so it lives in the script's slot)
-- ARGV[8] '1' for a durable namespace (history_min_replicas > 0): a meta
--         written under another primary keeps its epoch and jumps the
--         offset instead (see below)
-- Returns {offset, epoch, fenced epoch, fenced top, fenced rid, rid}: the
-- three fenced fields are '' unless this call started a new epoch because
-- the meta was written under another primary (see below).
--
-- `rid` is the replication id of the primary that wrote the meta. Effects
-- replicate, so a replica holds its primary's rid; a promoted replica (or a
-- primary restarted without its data) has a new replication id. Replication
-- is asynchronous: the promoted one may lack the last publications, and
-- going on with its `top` would give their offsets to new publications
-- under the same epoch. So a rid that is not the current one ends the epoch.
-- INFO is allowed in scripts (also with no-writes) on Redis 7.0.
local info = redis.call('INFO', 'replication')
local rid = string.match(info, 'master_replid:(%w+)') or ''
local meta = redis.call('HMGET', KEYS[1], 'epoch', 'top', 'rid')
local epoch = meta[1]
local fenced_epoch, fenced_top, fenced_rid = '', '', ''
local jumped = false
if epoch and meta[3] and meta[3] ~= rid then
  -- Written under another primary: what it holds may be a prefix of what
  -- was published. Start a new epoch (durable: jump), so the old offsets
  -- are never reused.
  fenced_epoch, fenced_top, fenced_rid = epoch, meta[2] or '0', meta[3]
  if ARGV[8] == '1' then
    -- Durable: every acknowledged publication reached the replicas, so
    -- this stream holds all of them; keep it and its epoch, and skip a
    -- million offsets so that none the old primary gave to
    -- unacknowledged publications is given again.
    redis.call('HINCRBY', KEYS[1], 'top', 1000000)
    redis.call('HSET', KEYS[1], 'rid', rid)
    jumped = true
  else
    epoch = false
  end
end
if not epoch then
  -- No meta (or fenced above): the stream is new, was lost, or belongs to
  -- an ended epoch, so drop it before starting the new epoch.
  epoch = ARGV[6]
  redis.call('DEL', KEYS[2])
  redis.call('HSET', KEYS[1], 'epoch', epoch, 'top', 0, 'rid', rid)
elseif not meta[3] and not jumped then
  -- Meta written by a gateway version without rids: adopt this primary's.
  redis.call('HSET', KEYS[1], 'rid', rid)
end
local offset = redis.call('HINCRBY', KEYS[1], 'top', 1)
-- The payload is concatenated, never parsed: `data` bytes stay untouched.
-- The epoch is ours (history::new_epoch: 16 hex digits), safe to splice in
-- unescaped.
local payload = ARGV[4] .. offset .. ',"epoch":"' .. epoch .. '"' .. ARGV[5]
redis.call('XADD', KEYS[2], 'MAXLEN', ARGV[2], offset .. '-0', 'e', payload)
redis.call('PEXPIRE', KEYS[1], ARGV[3])
redis.call('PEXPIRE', KEYS[2], ARGV[3])
redis.call(ARGV[7], ARGV[1], payload)
return {offset, epoch, fenced_epoch, fenced_top, fenced_rid, rid}
