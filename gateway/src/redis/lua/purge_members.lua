#!lua flags=allow-oom
-- Remove one scan step of a channel's members held by one node and return
-- them. Atomic, so each member is returned to exactly one caller (a purge
-- racing another purge, or take_expired, never yields it twice).
-- KEYS[1] members hash (conn -> JSON)   KEYS[2] expiry set
-- ARGV[1] conn id prefix ("<node>.")   ARGV[2] HSCAN cursor   ARGV[3] COUNT
-- Returns {next cursor, {json, ...}}.
local step = redis.call('HSCAN', KEYS[1], ARGV[2], 'COUNT', ARGV[3])
local fields = step[2]
local ids = {}
local out = {}
local n = #ARGV[1]
for i = 1, #fields, 2 do
  if string.sub(fields[i], 1, n) == ARGV[1] then
    ids[#ids + 1] = fields[i]
    out[#out + 1] = fields[i + 1]
  end
end
for i = 1, #ids, 500 do
  local chunk = {}
  for j = i, math.min(i + 499, #ids) do chunk[#chunk + 1] = ids[j] end
  redis.call('HDEL', KEYS[1], unpack(chunk))
  redis.call('ZREM', KEYS[2], unpack(chunk))
end
return {step[1], out}
