-- heartbeat.lua: register or refresh one process (its heartbeat, every lease_seconds / 4).
--
-- Runs after prelude.lua (prepended at load time): p, clock, run_at, wake, announce,
-- lease_field, field_queue, payload_queue, payload_jid and call_sliced are defined there.
-- KEYS[1]  "{ns}:queues"; every other key is built from its prefix p = "{ns}".
-- Keys touched:
--   {ns}:procs            SET    registered process ids (read by reconcile status, and by
--                                reapers of the previous version during an upgrade)
--   {ns}:proc:<proc>      HASH   process info, the given fields overwritten
--   {ns}:alive:<proc>     STRING "1", PX lease: the process's lease sentinel
--   {ns}:beats            ZSET   proc scored by when this beat lapses: the Redis server's
--                                TIME (ms) plus the lease, so no host's clock is involved
-- ARGV[1] proc id   ARGV[2] lease (ms)   ARGV[3..] info field, value, field, value...
-- Returns  the lapse time written (ms, server clock).
--
-- Everything is written again at each beat, so a process re-registers by itself after
-- a Redis flush or restart (the beats set is rebuilt one beat at a time).
local proc, lease_ms = ARGV[1], tonumber(ARGV[2])
local t = redis.call('TIME')
local lapse = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000) + lease_ms
redis.call('SADD', p .. ':procs', proc)
if #ARGV >= 4 then
  redis.call('HSET', p .. ':proc:' .. proc, unpack(ARGV, 3))
end
redis.call('SET', p .. ':alive:' .. proc, '1', 'PX', lease_ms)
redis.call('ZADD', p .. ':beats', lapse, proc)
return lapse
