-- reap.lua: return the leased jobs of dead worker processes to their queues.
--
-- A process is dead when its heartbeat lapsed: its {ns}:beats score (Redis server
-- time of its last beat plus its lease, ms) is past and its {ns}:alive:<proc> key
-- (PX = lease) is gone. The work of one call grows with the lapsed processes only
-- (ZRANGEBYSCORE of the head of {ns}:beats), not with the fleet. One process per
-- interval calls it: the caller first takes the fleet-wide reaper's turn with a plain
-- SET {ns}:reaper NX PX (Broker.take_reaper_turn, as Sidekiq does for its process
-- cleanup). Idempotent: a second reaper finds nothing left to do.
--
-- A lapsed score whose alive key still exists (a beat refused under maxmemory keeps
-- only the alive key, by PEXPIRE) is moved to the alive key's expiry instead. Records
-- of processes of the previous version (in {ns}:procs, never in {ns}:beats) are
-- adopted: while {ns}:procs has more members than {ns}:beats (two O(1) reads), ARGV[5]
-- random members of {ns}:procs are sampled per call, and each that {ns}:beats lacks is
-- added with score now, so that its alive key decides at once.
--
-- Runs after prelude.lua (prepended at load time): p, clock, run_at, wake, announce,
-- lease_field, field_queue, payload_queue, payload_jid and call_sliced are defined there.
-- KEYS[1]  "{ns}:queues"; every other key is built from its prefix p = "{ns}".
-- Keys touched:
--   {ns}:beats            ZSET   proc -> lapse time (ms, server clock); ZREM when reaped
--   {ns}:procs            SET    registered process ids (SCARD, SRANDMEMBER: adoption; SREM)
--   {ns}:alive:<proc>     STRING lease sentinel of a process (PTTL)
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
--   {ns}:unique:<d>       STRING a poison pill's uniqueness lock, released (unlock)
--   {ns}:plocks:<c>, {ns}:plocks_prev:<c>   SET  or its pass lock
--   {ns}:jobs             HASH   the jid index (prelude.lua): a requeued job is indexed
--                                again if it was before its lease; a poison pill "D"
-- ARGV[1] max recoveries   ARGV[2] recovery counter ttl (s)   ARGV[3] wake cap
-- ARGV[4] most lapsed processes examined per call   ARGV[5] legacy records sampled
-- Returns  {jobs requeued, processes reaped, 1 if more lapsed processes wait else 0,
--           poison payload 1, poison payload 2, ...}
-- A requeued payload gets "recovered": <n> appended, so fetch.lua leases it alone.
--
-- A poison payload gets error fields appended as extra keys at the end of the
-- object: JSON decoders keep the last of duplicate keys, so they override older ones
-- without re-encoding the payload (cjson would turn [] into {}).
local max_rec, ttl, cap = tonumber(ARGV[1]), ARGV[2], tonumber(ARGV[3])
local limit, sample = tonumber(ARGV[4]), tonumber(ARGV[5])
local requeued, reaped, poison = 0, 0, {}

local t = redis.call('TIME')
local now_ms = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
-- seconds with millisecond precision, for the dead set's score and failed_at
local now = string.format('%.3f', now_ms / 1000)
local beats = p .. ':beats'

-- the cheap gate: once every registered process beats, nothing is sampled
if sample > 0 and redis.call('SCARD', p .. ':procs') > redis.call('ZCARD', beats) then
  for _, proc in ipairs(redis.call('SRANDMEMBER', p .. ':procs', sample)) do
    if not redis.call('ZSCORE', beats, proc) then
      redis.call('ZADD', beats, now_ms, proc)
    end
  end
end

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
  index_set(payload_jid(item), 'D' .. now)
  -- release its uniqueness lock, as a D settlement does: the key is quarantined, and
  -- once an operator releases it the next pass must be able to enqueue it again
  -- (a kept lock would make passes report it "already queued" for up to unique_for)
  local plock = pass_lock(item)  -- a compact pass payload names no lock: derived
  if plock then
    unlock(plock)
    return
  end
  local ok, job = pcall(cjson.decode, item)
  if ok and type(job) == 'table' and type(job.lock) == 'string' and job.lock ~= ''
      and job.unique_until ~= 'start' then
    unlock(job.lock)
  end
end

local lapsed = redis.call('ZRANGEBYSCORE', beats, '-inf', now_ms, 'LIMIT', 0, limit)
for _, proc in ipairs(lapsed) do
  local left = redis.call('PTTL', p .. ':alive:' .. proc)
  if left > 0 then
    redis.call('ZADD', beats, now_ms + left, proc)  -- alive after all: look again then
  elseif left == -1 then
    -- an alive key without expiry (not written by reconcile): never lapses; keep it
    -- out of the head so it does not crowd the lapsed ones
    redis.call('ZADD', beats, '+inf', proc)
  else
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
        index_wait(payload_jid(item), item)
        requeued = requeued + 1
      end
    end
    redis.call('DEL', lease, claim, p .. ':proc:' .. proc)
    redis.call('SREM', p .. ':procs', proc)
    redis.call('ZREM', beats, proc)
  end
end
local out = {requeued, reaped, #lapsed == limit and 1 or 0}
for _, item in ipairs(poison) do out[#out + 1] = item end
return out
