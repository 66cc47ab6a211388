-- pass_enqueue.lua: a reconcile pass's enqueues, one page (up to 1,000 keys) a call
-- (a push call: at most ~100 KB of payloads, so a page may take several).
--
-- The pass sends what is the same for every key of a page once, and each key's
-- digest and payload packed into one argument each (digests at a fixed width,
-- payloads each followed by "\n"): a page costs the client a handful of arguments
-- instead of five per key. Payloads are compact JSON (orjson), which never contains a
-- raw newline, so "\n" cannot occur inside one.
--
-- Runs after prelude.lua (prepended at load time): p, clock, run_at, wake, announce,
-- lease_field, field_queue, payload_queue, payload_jid and call_sliced are defined there.
-- KEYS[1]  "{ns}:queues"; every other key is built from its prefix p = "{ns}".
-- Keys touched:
--   {ns}:unique:<d>   STRING uniqueness lock for digest <d> ("1", PX = lock ttl);
--                     the same lock enqueue.lua takes, so a pass and perform_async
--                     of the same key dedupe against each other
--   {ns}:queue:<q>    LIST   ready jobs; LPUSH here, workers RPOP (FIFO)
--   {ns}:queues       SET    names of queues that ever held a job
--   {ns}:schedule     ZSET   jobs to run later, score = run-at (epoch seconds, the
--                     server's clock)
--   {ns}:wake:<q>     LIST   wake-up tokens that idle workers BLPOP on
-- ARGV[1]  mode:
--          "P" probe: read-only; which locks are free (MGET, one command a page)
--          "N" push, taking each lock with SET NX PX; a held lock drops its job
--          "O" push, overwriting each lock with SET PX (a pass after a Redis loss,
--              which does not trust surviving locks); every job is pushed
-- ARGV[2]  digest width w (characters of one digest); 0 = the jobs take no lock
-- ARGV[3]  the digests, concatenated (w characters each, in job order)
-- probe:   ARGV[4] queue, ARGV[5] lock ttl (ms); both optional ("" or absent: a
--          read-only probe, one MGET).
-- push:    ARGV[4] wake cap (most tokens per wake list)
--          ARGV[5] queue   ARGV[6] lock ttl (ms)
--          ARGV[7] the payloads, each followed by "\n", in job order
--          ARGV[8] delays (seconds, the pass's jitter), each followed by "\n", in job
--          order; "" = every job now. A job with a delay above 0 goes to the schedule
--          (ZADD) at the server's clock() + delay, others to the queue.
-- Returns  a string with one character per job, in order. Probe: "1" lock free,
--          "0" held. Push: "1" pushed, "0" dropped because its lock was held.
-- Renewal: while the class's queue holds jobs (LLEN above 0: a backlog), a held lock
--          that a probe given the ttl or a push finds is renewed: when less than half
--          its ttl is left, PEXPIRE sets it back to the ttl (PTTL, and PEXPIRE once
--          per half ttl). So a queued backlog that drains slower than the ttl keeps
--          its locks as long as passes find its keys pending. With the queue empty
--          nothing is renewed and locks lapse as they always did: that lapse is what
--          lets a pass re-enqueue a key whose job Redis lost (an evicted queue list)
--          while its lock survived. A lock without expiry (PTTL -1) is left alone.
-- A push fails at its first write (SET) under maxmemory with noeviction: then
-- nothing of the call was written. A probe takes no lock, so a client that dies
-- between its probe and its push leaves nothing behind.
local mode = ARGV[1]
local w = tonumber(ARGV[2])
local digests = ARGV[3]
local sub, find, concat = string.sub, string.find, table.concat
local lock_prefix = p .. ':unique:'

-- Whether the queue holds jobs (read once per call, only when a lock is found held).
local backlog = nil
local function has_backlog(q)
  if backlog == nil then
    backlog = q ~= nil and q ~= '' and redis.call('LLEN', p .. ':queue:' .. q) > 0
  end
  return backlog
end

-- Renew the held lock `key` (see Renewal above); returns whether it is held.
local function renew(key, ttl)
  local left = redis.call('PTTL', key)
  if left == -2 then return false end
  if left >= 0 and left < ttl / 2 then redis.call('PEXPIRE', key, ttl) end
  return true
end

if mode == 'P' then
  local n = #digests / w
  local keys, out = {}, {}
  for i = 1, n do
    keys[i] = lock_prefix .. sub(digests, (i - 1) * w + 1, i * w)
  end
  local rttl = tonumber(ARGV[5] or '')
  if rttl and rttl > 0 and has_backlog(ARGV[4]) then
    -- a backlog: one PTTL per key (instead of the page's MGET), renewing held locks
    for i = 1, n do
      out[i] = renew(keys[i], rttl) and '0' or '1'
    end
    return concat(out)
  end
  -- MGET in slices: Lua's C stack holds ~8000 values (see call_sliced)
  for s = 1, n, 1000 do
    local got = redis.call('MGET', unpack(keys, s, math.min(s + 999, n)))
    for j = 1, #got do
      out[s + j - 1] = got[j] and '0' or '1'
    end
  end
  return concat(out)
end

local cap, q, ttl = tonumber(ARGV[4]), ARGV[5], ARGV[6]
local blob, delays = ARGV[7], ARGV[8]
local now = delays ~= '' and clock() or 0  -- read once; only a jittered page needs it
local nx = mode == 'N'
local out, ready, later = {}, {}, {}
local n, pos, apos, len = 0, 1, 1, #blob
while pos <= len do
  local stop = find(blob, '\n', pos, true)
  n = n + 1
  local ok = true
  if w > 0 then
    local key = lock_prefix .. sub(digests, (n - 1) * w + 1, n * w)
    if nx then
      ok = redis.call('SET', key, '1', 'NX', 'PX', ttl)
      if not ok and has_backlog(q) then renew(key, tonumber(ttl)) end
    else
      redis.call('SET', key, '1', 'PX', ttl)
    end
  end
  local delay = 0
  if delays ~= '' then
    local astop = find(delays, '\n', apos, true)
    delay = tonumber(sub(delays, apos, astop - 1))
    apos = astop + 1
  end
  if ok then
    out[n] = '1'
    -- the payload string is only made for jobs that are pushed
    if delay > 0 then
      later[#later + 1] = now + delay
      later[#later + 1] = sub(blob, pos, stop - 1)
    else
      ready[#ready + 1] = sub(blob, pos, stop - 1)
    end
  else
    out[n] = '0'
  end
  pos = stop + 1
end
call_sliced('ZADD', p .. ':schedule', later, 1)  -- (score, member) pairs: 1,000 is even
if #ready > 0 then
  local key = p .. ':queue:' .. q
  call_sliced('LPUSH', key, ready, 1)
  announce(q, cap)
end
return concat(out)
