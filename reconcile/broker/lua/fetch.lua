-- fetch.lua: settle finished deliveries, then lease up to N new ones, in one call.
--
-- Runs after prelude.lua (prepended at load time): p, clock, run_at, wake, announce,
-- lease_field, field_queue, payload_queue, payload_jid, jid_reader and call_sliced are
-- defined there.
-- KEYS[1]  "{ns}:queues"; every other key is built from its prefix p = "{ns}".
-- Keys touched:
--   {ns}:lease:<proc>   HASH  field "<seq>|<queue>" -> payload, the jobs <proc> holds
--   {ns}:proc:<proc>    HASH  process info; field "seq" numbers its deliveries (a lost
--                             counter restarts at the server's clock in microseconds,
--                             never at 1)
--   {ns}:queue:<q>      LIST  ready jobs (RPOP = oldest first)
--   {ns}:claim:<proc>   LIST  jobs <proc> took with BLMOVE while idle, adopted by op C
--   {ns}:queues         SET   known queue names
--   {ns}:retry          ZSET  failed jobs waiting for their retry, score = run-at
--   {ns}:schedule       ZSET  delayed jobs, score = run-at
--   {ns}:dead           ZSET  dead jobs, score = died-at; trimmed by count and age
--                             (every score: epoch seconds on the server's clock())
--   {ns}:unique:<d>     STRING uniqueness locks released by A, D and X (unlock)
--   {ns}:plocks:<c>, {ns}:plocks_prev:<c>   SET  pass locks released by A, D and X
--   {ns}:wake:<q>       LIST  wake-up tokens
--   {ns}:stat:processed, {ns}:stat:failed   STRING counters
--   {ns}:jobs           HASH  the jid index (prelude.lua): each leased job gets
--                             "L<i>|<ms>|<proc>|<field>"; A and X remove it, R and D
--                             index the retried or dead job, S and Q (index_wait)
-- ARGV[1] proc id      ARGV[2] jobs to lease (0 = settle only)   ARGV[3] settle ops k
-- ARGV[4] dead max jobs   ARGV[5] dead max age (s)   ARGV[6] wake cap
-- ARGV[7] suspect threshold: a job recovered this many times or more is leased alone
-- ARGV[8 .. 7+5k]  settle ops, 5 values each: code, lease field, a, b, c
--   A field lock jid        ack: success (lock "" = none; jid "": read from the lease)
--   X field lock jid        drop: discarded, already done, or disabled (not a failure)
--   R field delay payload lock  retry <delay> seconds after the server's clock() with
--                           the updated payload; lock kept until then + 600 s
--   S field delay payload   re-schedule <delay> s from clock() (lock busy elsewhere,
--                           database lost, held; not a failure)
--   D field payload lock    dead with the updated payload
--   Q field queue payload   push back to the head of <queue> (shutdown)
--   C "" queue              adopt: move every job of {ns}:claim:<proc> into the lease
--                           hash under new fields (returned first, before new leases)
--   An op whose lease field is no longer held (requeued by a reaper or by release.lua,
--   or already applied) is skipped.
-- ARGV[8+5k ..]  queue names in the order to try (weighted or strict, chosen by caller)
-- Returns  flat array: field1, payload1, field2, payload2, ... (adopted jobs first)
-- A payload carrying "recovered" (stamped by reap.lua) is leased alone in its batch.
local proc, want, k = ARGV[1], tonumber(ARGV[2]), tonumber(ARGV[3])
local dead_max, dead_age, cap = tonumber(ARGV[4]), tonumber(ARGV[5]), tonumber(ARGV[6])
local lease = p .. ':lease:' .. proc
local retry_lock_ms = 600000

-- The server's clock, read once and only by the ops that need a time (most exchanges
-- are acks and new leases, which need none).
local now = nil
local function clock_now()
  if not now then now = clock() end
  return now
end

local got = {}
local jobs = p .. ':jobs'
local ended = {}  -- jids of acked and dropped jobs: one HDEL of the index at the end

-- Give `items` (taken from queue q) lease fields "<seq>|<q>" and record them in
-- the lease hash, in the jid index and in the reply.
local function lease_items(items, q)
  local n = #items
  local last = redis.call('HINCRBY', p .. ':proc:' .. proc, 'seq', n)
  if last == n then
    -- a new counter: the first fetch, or Redis lost the process hash (flush,
    -- restart, eviction, reaped). Jump past every number this process may still
    -- hold in flight, or a new lease field would equal a running one's.
    last = redis.call('HINCRBY', p .. ':proc:' .. proc, 'seq',
      string.format('%.0f', math.floor(clock_now() * 1000000)))
  end
  local pairs_ = {}
  local jids, fields = {}, {}
  local read = jid_reader(q)
  for m = 1, n do
    local field = lease_field(last - n + m, q)
    pairs_[2 * m - 1] = field
    pairs_[2 * m] = items[m]
    got[#got + 1] = field
    got[#got + 1] = items[m]
    local jid = read(items[m])
    if jid then
      jids[#jids + 1] = jid
      fields[#fields + 1] = field
    end
  end
  redis.call('HSET', lease, unpack(pairs_))
  if #jids > 0 then
    -- one HMGET and one HSET per batch: was each job indexed before (a plain job, a
    -- retry)? Its running entry says so, for when it waits again (index_wait)
    local before = redis.call('HMGET', jobs, unpack(jids))
    local stamp = '|' .. string.format('%.0f', math.floor(clock_now() * 1000)) .. '|' .. proc .. '|'
    local running = {}
    for m = 1, #jids do
      local b = before[m]
      local was = '0'
      if b and (string.byte(b, 1) ~= 76 or string.byte(b, 2) == 49) then was = '1' end
      running[2 * m - 1] = jids[m]
      running[2 * m] = 'L' .. was .. stamp .. fields[m]
    end
    redis.call('HSET', jobs, unpack(running))
  end
end

local processed, failed, died = 0, 0, false
local suspect_at = tonumber(ARGV[7])
local i = 8
for _ = 1, k do
  local code, field, a, b, c = ARGV[i], ARGV[i + 1], ARGV[i + 2], ARGV[i + 3], ARGV[i + 4]
  i = i + 5
  -- An op applies only while its lease is still held: once a reaper or release.lua
  -- has requeued the job, a late settlement must not add a second copy (R, D, S, Q),
  -- and an op re-sent after a lost reply must not apply twice.
  local held = true
  local leased = nil  -- the leased payload, read only where the op does not carry it
  if field ~= '' then
    if (code == 'A' or code == 'X') and b == '' or code == 'D' then
      leased = redis.call('HGET', lease, field)
    end
    held = redis.call('HDEL', lease, field) == 1
  end
  if not held then
    -- skipped
  elseif code == 'A' or code == 'X' then
    if code == 'A' then processed = processed + 1 end
    if a ~= '' then unlock(a) end
    local jid = (b ~= '') and b or (leased and payload_jid(leased))
    if jid then ended[#ended + 1] = jid end
  elseif code == 'R' then
    failed = failed + 1
    local delay = math.max(tonumber(a), 0)
    redis.call('ZADD', p .. ':retry', clock_now() + delay, b)
    local jid = payload_jid(b)
    index_set(jid, b)
    if c ~= '' and string.byte(c, 1) ~= 64 then
      -- keep the uniqueness lock through the backoff, so a reconcile pass cannot
      -- enqueue the key again and bypass it (the worker sends a pass job's digest
      -- here, not its pass lock "@...", which has no TTL to set: see executor.py); its
      -- value names the jid, so that a retrying job is found by its key (locate.lua)
      redis.call('SET', p .. ':unique:' .. c, jid or '1', 'PX', math.floor(delay * 1000) + retry_lock_ms)
    end
  elseif code == 'S' then
    redis.call('ZADD', p .. ':schedule', clock_now() + math.max(tonumber(a), 0), b)
    index_wait(payload_jid(b), b)
  elseif code == 'D' then
    failed = failed + 1
    died = true
    -- the score as a string, so that the index's "D<score>" names exactly it
    local score = string.format('%.17g', clock_now())
    redis.call('ZADD', p .. ':dead', score, a)
    if b ~= '' then unlock(b) end
    local jid = payload_jid(a)
    local was = leased and payload_jid(leased)
    if was and was ~= jid then ended[#ended + 1] = was end  -- a record that lost its jid
    index_set(jid, 'D' .. score)
  elseif code == 'Q' then
    redis.call('RPUSH', p .. ':queue:' .. a, b)
    announce(a, cap)
    index_wait(payload_jid(b), b)
  elseif code == 'C' then
    local claim = p .. ':claim:' .. proc
    local items = redis.call('LRANGE', claim, 0, -1)
    if #items > 0 then
      redis.call('DEL', claim)
      lease_items(items, a)
    end
  end
end
if processed > 0 then redis.call('INCRBY', p .. ':stat:processed', processed) end
if failed > 0 then redis.call('INCRBY', p .. ':stat:failed', failed) end
if #ended > 0 then call_sliced('HDEL', jobs, ended, 1) end
if died then
  -- trim by age, then by count; the trimmed jobs leave the jid index too (most deaths
  -- trim nothing, or one member once the set is full)
  local dead = p .. ':dead'
  local old = redis.call('ZRANGEBYSCORE', dead, '-inf', clock_now() - dead_age, 'LIMIT', 0, 1000)
  if #old > 0 then
    call_sliced('ZREM', dead, old, 1)
    index_dead_trimmed(old)
  end
  local over = redis.call('ZCARD', dead) - dead_max
  if over > 0 then
    local extra = redis.call('ZRANGE', dead, 0, over - 1)
    call_sliced('ZREM', dead, extra, 1)
    index_dead_trimmed(extra)
  end
end

if want > 0 then
  for j = i, #ARGV do
    local q = ARGV[j]
    local key = p .. ':queue:' .. q
    local items = redis.call('RPOP', key, want)
    local cut = false
    if items then
      -- A job recovered from a crashed worker (reap.lua stamped "recovered") is leased
      -- alone: a poison pill must not take the jobs fetched beside it down with it
      -- again and again (they would be counted as recovered too).
      for s = 1, #items do
        local n_rec = string.match(items[s], '"recovered":(%d+)}$')
        if n_rec and tonumber(n_rec) >= suspect_at then
          local keep = (s == 1) and 1 or s - 1
          for r = #items, keep + 1, -1 do
            redis.call('RPUSH', key, items[r])
            items[r] = nil
          end
          cut = true
          break
        end
      end
      local n = #items
      lease_items(items, q)
      want = want - n
      if cut then break end
      if want == 0 then
        -- we took a full batch and work remains: wake the next idle worker (chain wake-up)
        if redis.call('LLEN', key) > 0 then wake(q, cap) end
        break
      end
    end
  end
end
return got
