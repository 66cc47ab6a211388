-- trim_dead.lua: keep the dead set within its size and age, and the jid index with it.
--
-- fetch.lua trims after each death it writes; this script is for the deaths that other
-- scripts write (promote.lua's unusable entries, reap.lua's poison pills), called by
-- every worker's maintenance loop. The trimmed members leave the jid index too.
--
-- Runs after prelude.lua (prepended at load time): p, clock, run_at, wake, announce,
-- lease_field, field_queue, payload_queue, payload_jid and call_sliced are defined there.
-- KEYS[1]  "{ns}:queues"; every other key is built from its prefix p = "{ns}".
-- Keys touched:
--   {ns}:dead   ZSET  score = died-at (epoch seconds, the server's clock())
--   {ns}:jobs   HASH  the jid index (prelude.lua): "D<score>" entries of trimmed members
-- ARGV[1] dead max jobs   ARGV[2] dead max age (s)   ARGV[3] most members removed per call
-- Returns  the number of members removed.
local dead_max, dead_age, limit = tonumber(ARGV[1]), tonumber(ARGV[2]), tonumber(ARGV[3])
local dead = p .. ':dead'
local removed = 0
local old = redis.call('ZRANGEBYSCORE', dead, '-inf', clock() - dead_age, 'LIMIT', 0, limit)
if #old > 0 then
  call_sliced('ZREM', dead, old, 1)
  index_dead_trimmed(old)
  removed = #old
end
local over = math.min(redis.call('ZCARD', dead) - dead_max, limit - removed)
if over > 0 then
  local extra = redis.call('ZRANGE', dead, 0, over - 1)
  call_sliced('ZREM', dead, extra, 1)
  index_dead_trimmed(extra)
  removed = removed + #extra
end
return removed
