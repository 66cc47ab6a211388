-- release.lua: a stopping process hands back every job it still holds and leaves.
--
-- Runs after prelude.lua (prepended at load time): p, clock, run_at, wake, announce,
-- lease_field, field_queue, payload_queue, payload_jid and call_sliced are defined there.
-- KEYS[1]  "{ns}:queues"; every other key is built from its prefix p = "{ns}".
-- Keys touched:
--   {ns}:lease:<proc>   HASH   field "<seq>|<queue>" -> payload; emptied and deleted
--   {ns}:claim:<proc>   LIST   jobs taken with BLMOVE, not yet adopted; pushed back too
--                              (to the process's only queue, else the payload's "queue")
--   {ns}:queue:<q>      LIST   jobs are RPUSHed back: they run next, in lease order
--   {ns}:queues         SET    known queue names
--   {ns}:wake:<q>       LIST   wake-up tokens
--   {ns}:proc:<proc>, {ns}:alive:<proc>   deleted;   {ns}:procs   SREM <proc>
--   {ns}:beats          ZSET   ZREM <proc>
--   {ns}:jobs           HASH   the jid index (prelude.lua): a job pushed back is indexed
--                              again if it was before its lease
-- ARGV[1] proc id   ARGV[2] wake cap
-- Returns  number of jobs pushed back.
local proc, cap = ARGV[1], tonumber(ARGV[2])
local lease = p .. ':lease:' .. proc
local entries = redis.call('HGETALL', lease)
local claim = p .. ':claim:' .. proc
local claimed = redis.call('LRANGE', claim, 0, -1)
if #claimed > 0 then
  local only = redis.call('HGET', p .. ':proc:' .. proc, 'queues')
  if only and string.find(only, ',', 1, true) then only = nil end
  -- LRANGE lists the newest claim first: RPUSHed in that order, the oldest runs first
  for c = 1, #claimed do
    local item = claimed[c]
    entries[#entries + 1] = lease_field(0, only or payload_queue(item) or 'default')
    entries[#entries + 1] = item
  end
end
local n = 0
for e = 1, #entries, 2 do
  local q = field_queue(entries[e]) or 'default'
  redis.call('RPUSH', p .. ':queue:' .. q, entries[e + 1])
  announce(q, cap)
  index_wait(payload_jid(entries[e + 1]), entries[e + 1])
  n = n + 1
end
redis.call('DEL', lease, claim, p .. ':proc:' .. proc, p .. ':alive:' .. proc)
redis.call('SREM', p .. ':procs', proc)
redis.call('ZREM', p .. ':beats', proc)
return n
