-- THE PREVIOUS reap.lua, kept as it was before {ns}:beats and the reaper's turn (commit
-- 549d39d): benchmarks/reap_cost.py measures it against the current one, and
-- tests/integration/test_reaping.py runs it beside the current one (a fleet being
-- upgraded). Loaded after reconcile/broker/lua/prelude.lua, like every script.
--
-- reap.lua: return the leased jobs of dead worker processes to their queues.
--
-- A process is dead when its {ns}:alive:<proc> key (PX = lease time, refreshed by
-- its heartbeat) has expired. Any live process may run this; it is idempotent.
--
-- Runs after prelude.lua (prepended at load time): p, wake, announce, lease_field,
-- field_queue, payload_queue, payload_jid and call_sliced are defined there.
-- KEYS[1]  "{ns}:queues"; every other key is built from its prefix p = "{ns}".
-- Keys touched:
--   {ns}:procs            SET    registered process ids
--   {ns}:alive:<proc>     STRING lease sentinel of a process
--   {ns}:proc:<proc>      HASH   process info (deleted with the process)
--   {ns}:lease:<proc>     HASH   field "<seq>|<queue>" -> payload
--   {ns}:claim:<proc>     LIST   jobs taken with BLMOVE, not yet adopted: treated as
--                                leased (their queue: the process's only queue, else
--                                the payload's "queue")
--   {ns}:queue:<q>        LIST   recovered jobs are RPUSHed: they run next
--   {ns}:queues           SET    known queue names
--   {ns}:wake:<q>         LIST   wake-up tokens
--   {ns}:recov:<jid>      STRING how often this job was recovered (expires)
--   {ns}:dead             ZSET   poison pills: recovered more than the maximum
--   {ns}:unique:<d>       STRING a poison pill's uniqueness lock, released
-- ARGV[1] now   ARGV[2] max recoveries   ARGV[3] recovery counter ttl (s)   ARGV[4] wake cap
-- Returns  {jobs requeued, processes reaped, poison payload 1, poison payload 2, ...}
-- A requeued payload gets "recovered": <n> appended, so fetch.lua leases it alone.
--
-- A poison payload gets error fields appended as extra keys at the end of the
-- object: JSON decoders keep the last of duplicate keys, so they override older ones
-- without re-encoding the payload (cjson would turn [] into {}).
local now, max_rec, ttl, cap = ARGV[1], tonumber(ARGV[2]), ARGV[3], tonumber(ARGV[4])
local requeued, reaped, poison = 0, 0, {}

local function mark_dead(item, n)
  local msg = 'recovered from crashed workers ' .. n .. ' times (max_recoveries ' .. max_rec .. ')'
  local body = string.match(item, '^{(.+)}$')
  local entry
  if body then
    entry = '{' .. body .. ',"error_class":"WorkerCrashed","error_message":' .. cjson.encode(msg)
      .. ',"failed_at":' .. now .. '}'
  else
    entry = cjson.encode({error_class = 'WorkerCrashed', error_message = msg,
      failed_at = tonumber(now), raw = string.sub(item, 1, 2000)})
  end
  redis.call('ZADD', p .. ':dead', now, entry)
  -- release its uniqueness lock, as a D settlement does: the key is quarantined, and
  -- once an operator releases it the next pass must be able to enqueue it again
  -- (a kept lock would make passes report it "already queued" for up to unique_for)
  local ok, job = pcall(cjson.decode, item)
  if ok and type(job) == 'table' and type(job.lock) == 'string' and job.lock ~= ''
      and job.unique_until ~= 'start' then
    redis.call('DEL', p .. ':unique:' .. job.lock)
  end
end

for _, proc in ipairs(redis.call('SMEMBERS', p .. ':procs')) do
  if redis.call('EXISTS', p .. ':alive:' .. proc) == 0 then
    reaped = reaped + 1
    local lease = p .. ':lease:' .. proc
    local entries = redis.call('HGETALL', lease)
    local claim = p .. ':claim:' .. proc
    local claimed = redis.call('LRANGE', claim, 0, -1)
    if #claimed > 0 then
      local only = redis.call('HGET', p .. ':proc:' .. proc, 'queues')
      if only and string.find(only, ',', 1, true) then only = nil end
      for _, item in ipairs(claimed) do
        entries[#entries + 1] = lease_field(0, only or payload_queue(item) or 'default')
        entries[#entries + 1] = item
      end
    end
    for e = 1, #entries, 2 do
      local field, item = entries[e], entries[e + 1]
      local q = field_queue(field) or 'default'
      local id = payload_jid(item) or redis.sha1hex(item)
      local rk = p .. ':recov:' .. id
      local n = redis.call('INCR', rk)
      redis.call('EXPIRE', rk, ttl)
      if n > max_rec then
        mark_dead(item, n)
        poison[#poison + 1] = item
      else
        -- stamp the recovery (appended key: the last duplicate wins when decoded), so
        -- fetch.lua leases this suspect alone next time
        local body = string.match(item, '^{(.+)}$')
        if body then item = '{' .. body .. ',"recovered":' .. n .. '}' end
        redis.call('RPUSH', p .. ':queue:' .. q, item)
        announce(q, cap)
        requeued = requeued + 1
      end
    end
    redis.call('DEL', lease, claim, p .. ':proc:' .. proc)
    redis.call('SREM', p .. ':procs', proc)
  end
end
local out = {requeued, reaped}
for _, item in ipairs(poison) do out[#out + 1] = item end
return out
