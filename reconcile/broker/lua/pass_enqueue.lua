-- pass_enqueue.lua: a reconcile pass's enqueues, one page (up to 1,000 keys) a call
-- (a push call: at most ~100 KB of payloads, so a page may take several).
--
-- The pass sends what is the same for every key of a page once, and each key's
-- digest, lock member and payload packed into one argument each (digests at a fixed
-- width, members and payloads each followed by "\n"): a page costs the client a
-- handful of arguments instead of five per key. Payloads and members are compact JSON
-- (orjson), which never contains a raw newline, so "\n" cannot occur inside one.
--
-- Pass locks. A pass takes a key's uniqueness lock as a member of a set of its class,
-- not as a key of its own: the member is the key's canonical args JSON (the "args" of
-- its compact payload, so any script can name the lock from the payload), about 55
-- bytes of Redis a lock against 150 for a key with a TTL, and one hash table for the
-- whole class instead of two entries in the keyspace and its expiry table (whose
-- growth and rehashing made a pass's Redis time per key grow with the table). A set
-- member has no TTL: a lock's life is its generation's. {ns}:plocks:<c> is the
-- current generation, {ns}:plocks_prev:<c> the previous one; a lock is held while it
-- is a member of either. Mode G (called after each pass) turns the generations when
-- the current one is older than half the class's unique_for: the previous one is
-- dropped (UNLINK) and the current one becomes the previous. So a lock nobody renews
-- lives between half and once unique_for (plus a pass interval), as the TTL did.
-- Renewal: a held lock found in the previous generation while the class's queue holds
-- jobs (LLEN above 0: a backlog) is moved to the current one (SREM, SADD), so a backlog
-- that drains slower than unique_for keeps its locks as long as passes find its keys
-- pending. With the queue empty nothing is renewed and locks lapse: that is what lets
-- a pass re-enqueue a key whose job Redis lost (an evicted queue list) while its lock
-- survived.
-- A key is also held while {ns}:unique:<d> exists: the lock perform_async (enqueue.lua)
-- takes for the same key, so a pass does not enqueue a key perform_async queued.
-- The checks are batched: SMISMEMBER of each generation and one MGET per 1,000 keys
-- (a few commands a call instead of one or more per key).
--
-- Runs after prelude.lua (prepended at load time): p, clock, run_at, wake, announce,
-- lease_field, field_queue, payload_queue, payload_jid, call_sliced and unlock are
-- defined there.
-- KEYS[1]  "{ns}:queues"; every other key is built from its prefix p = "{ns}".
-- Keys touched:
--   {ns}:plocks:<c>       SET    pass locks of class <c>, current generation
--   {ns}:plocks_prev:<c>  SET    pass locks of class <c>, previous generation
--   {ns}:plocks_gen:<c>   STRING "1" while the current generation is younger than
--                         half of unique_for (PX); mode G turns them when it is gone
--   {ns}:unique:<d>   STRING perform_async's lock of the same key (MGET: held)
--   {ns}:queue:<q>    LIST   ready jobs; LPUSH here, workers RPOP (FIFO); LLEN: backlog
--   {ns}:queues       SET    names of queues that ever held a job
--   {ns}:schedule     ZSET   jobs to run later, score = run-at (epoch seconds, the
--                     server's clock)
--   {ns}:wake:<q>     LIST   wake-up tokens that idle workers BLPOP on
-- ARGV[1]  mode:
--          "P" probe: which locks are held; takes none (renews held ones, above)
--          "N" push, taking each free lock (SADD); a held lock drops its job
--          "O" push, taking every lock even if held (a pass after a Redis loss,
--              which does not trust surviving locks); every job is pushed
--          "G" turn the generations (above); returns 1 if it did, else 0
-- ARGV[2]  class name <c>
-- mode G:  ARGV[3] half of unique_for (ms). Nothing else.
-- ARGV[3]  digest width w (characters of one digest); 0 = the jobs take no lock
-- ARGV[4]  the digests, concatenated (w characters each, in job order)
-- ARGV[5]  the lock members (args JSON), each followed by "\n", in job order
-- ARGV[6]  queue
-- probe:   nothing else.
-- push:    ARGV[7] wake cap (most tokens per wake list)
--          ARGV[8] the payloads, each followed by "\n", in job order
--          ARGV[9] delays (seconds, the pass's jitter), each followed by "\n", in job
--          order; "" = every job now. A job with a delay above 0 goes to the schedule
--          (ZADD) at the server's clock() + delay, others to the queue.
--          ARGV[10] half of unique_for (ms): a push that takes a lock starts the
--          current generation's clock if it is not running (SET NX PX)
-- Returns  a string with one character per job, in order. Probe: "1" lock free,
--          "0" held. Push: "1" pushed, "0" dropped because its lock was held.
-- A push fails at its first write under maxmemory with noeviction: then nothing of
-- the call was written. A probe takes no lock, so a client that dies between its
-- probe and its push leaves nothing behind.
local mode, cls = ARGV[1], ARGV[2]
local sub, find, concat = string.sub, string.find, table.concat
local cur, prev = p .. ':plocks:' .. cls, p .. ':plocks_prev:' .. cls

if mode == 'G' then
  if not redis.call('SET', p .. ':plocks_gen:' .. cls, '1', 'NX', 'PX', ARGV[3]) then
    return 0
  end
  redis.call('UNLINK', prev)
  if redis.call('EXISTS', cur) == 1 then redis.call('RENAME', cur, prev) end
  return 1
end

local w, digests, members, q = tonumber(ARGV[3]), ARGV[4], ARGV[5], ARGV[6]
local lock_prefix = p .. ':unique:'

-- The lock members of the call, in job order (each followed by "\n" in ARGV[5]).
local function split(blob)
  local out, pos, len = {}, 1, #blob
  while pos <= len do
    local stop = find(blob, '\n', pos, true)
    out[#out + 1] = sub(blob, pos, stop - 1)
    pos = stop + 1
  end
  return out
end

-- Which of the members `ms` are held: a table index -> true. Batched, a few commands
-- per call whatever its size (SMISMEMBER of each generation, MGET of perform_async's
-- locks, in slices of 1,000: see call_sliced); held locks of the previous generation
-- are renewed (SREM there, SADD to the current one) while q has a backlog.
local function held_of(ms)
  local held, n = {}, #ms
  local prev_exists = redis.call('EXISTS', prev) == 1
  local renew = {}
  for s = 1, n, 1000 do
    local e = math.min(s + 999, n)
    local in_cur = redis.call('SMISMEMBER', cur, unpack(ms, s, e))
    local in_prev = prev_exists and redis.call('SMISMEMBER', prev, unpack(ms, s, e)) or nil
    local keys, at = {}, {}
    for j = 1, e - s + 1 do
      local i = s + j - 1
      if in_cur[j] == 1 then
        held[i] = true
      elseif in_prev and in_prev[j] == 1 then
        held[i] = true
        renew[#renew + 1] = ms[i]
      else
        keys[#keys + 1] = lock_prefix .. sub(digests, (i - 1) * w + 1, i * w)
        at[#keys] = i
      end
    end
    if #keys > 0 then
      local got = redis.call('MGET', unpack(keys))
      for j = 1, #keys do
        if got[j] then held[at[j]] = true end
      end
    end
  end
  if #renew > 0 and redis.call('LLEN', p .. ':queue:' .. q) > 0 then
    call_sliced('SREM', prev, renew, 1)
    call_sliced('SADD', cur, renew, 1)
  end
  return held
end

if mode == 'P' then
  local ms = split(members)
  local held, out = held_of(ms), {}
  for i = 1, #ms do
    out[i] = held[i] and '0' or '1'
  end
  return concat(out)
end

local cap, blob, delays = tonumber(ARGV[7]), ARGV[8], ARGV[9]
local now = delays ~= '' and clock() or 0  -- read once; only a jittered page needs it
local ms = w > 0 and split(members) or {}
local held = (w > 0 and mode == 'N') and held_of(ms) or {}
local out, ready, later, taken, seen = {}, {}, {}, {}, {}
local n, pos, apos, len = 0, 1, 1, #blob
while pos <= len do
  local stop = find(blob, '\n', pos, true)
  n = n + 1
  local ok = true
  if w > 0 then
    local m = ms[n]
    ok = not held[n] and not seen[m]
    if ok then
      seen[m] = true  -- a key twice in one call (a pending query with duplicates)
      taken[#taken + 1] = m
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
if #taken > 0 then
  call_sliced('SADD', cur, taken, 1)
  -- the generation's age counts from its first lock, not from the first pass's end
  redis.call('SET', p .. ':plocks_gen:' .. cls, '1', 'NX', 'PX', ARGV[10])
end
call_sliced('ZADD', p .. ':schedule', later, 1)  -- (score, member) pairs: 1,000 is even
if #ready > 0 then
  local key = p .. ':queue:' .. q
  call_sliced('LPUSH', key, ready, 1)
  announce(q, cap)
end
return concat(out)
