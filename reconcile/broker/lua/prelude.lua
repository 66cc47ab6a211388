-- prelude.lua: what every script shares. Redis cannot load one script from another,
-- so reconcile.broker.scripts prepends this file to each script at load time: the
-- script Redis runs (and whose SHA1 EVALSHA names) is prelude + body. Line numbers in
-- Redis's error messages ("user_script:N") count this file's lines first.
--
-- KEYS[1] of every script is "{ns}:queues", the namespace's set of queue names: a
-- real key of the namespace's slot, so that ACL key patterns (~{ns}:*) and Redis
-- Cluster routing apply to it. Every other key is built from its prefix p = "{ns}"
-- (KEYS[1] without ":queues"), so all keys one call touches share that slot.
--
-- Keys the functions below touch (a script that calls one lists them in its header):
--   wake(q, cap)       {ns}:wake:<q>   LIST  wake-up tokens that idle workers BLPOP on
--   announce(q, cap)   {ns}:queues     SET   names of queues that ever held a job;
--                                            and wake(q, cap)
--   index_wait(jid, m), index_set(jid, v), index_dead_trimmed(items)
--                      {ns}:jobs       HASH  the jid index (see "The jid index" below)
--   unlock(lock)       {ns}:unique:<d> STRING a uniqueness lock (DEL), or, for a pass
--                                            lock "@<class>\n<args JSON>":
--                      {ns}:plocks:<c>, {ns}:plocks_prev:<c>   SET  (SREM from both)
--
-- Time: every run-at, score and deadline a script writes is on the Redis server's clock
-- (clock() below, from TIME), never a host's: hosts disagree by seconds to minutes, and
-- a host N s fast would otherwise run every job it schedules N s early. A caller sends
-- a delay ("+<seconds>", turned into an absolute time by run_at) or, only for a time
-- the application itself chose (perform_at, wait_until), an absolute epoch time.
--
-- Formats:
--   run-at        "0" (now), "+<s>" (<s> seconds after the script's clock()), or
--                 "<t>" (epoch seconds t, compared with the server's clock)
--   lease field   "<seq>|<queue>": <seq> a decimal integer numbering a process's
--                 deliveries, "0" for a claimed job that was never adopted
--   payload       compact JSON beginning {"queue":"<q>","jid":"<jid>" (see
--                 docs/redis-layout.md), so that both are read without decoding
--
-- The jid index {ns}:jobs: HASH jid -> where the job is, so that `reconcile job JID`
-- answers in bounded time (locate.lua) instead of scanning every set. Its values:
--   "{..."                    the job waits as exactly these bytes (the member) in its
--                             queue (searched), the scheduled or the retry set (ZSCORE)
--   "Q<queue>"                a plain job enqueued to <queue> (no copy of its payload:
--                             found by a bounded scan of the queue's oldest entries)
--   "D<score>"                dead since <score> (ZRANGEBYSCORE dead <score> <score>)
--   "L<i>|<ms>|<proc>|<f>"    leased by <proc> under lease field <f> since <ms> (server
--                             clock); <i> "1" if the job was indexed before the lease
-- Who is indexed: plain jobs from their enqueue (enqueue.lua modes FI/QI); every job
-- while leased, after a retry (R) and once dead. A ReconciledJob that a pass (or a
-- perform_async) enqueued is not indexed while it waits: it costs the index nothing,
-- and it is found by its key instead (its uniqueness lock; `reconcile key`). An entry
-- is removed when its job ends (ack, drop, the dead set's trim or delete).
--   lock          "<d>" (a digest: the key {ns}:unique:<d>) or "@<class>\n<args JSON>"
--                 (a pass lock: member <args JSON> of {ns}:plocks:<class> or of
--                 {ns}:plocks_prev:<class>; see pass_enqueue.lua)
local p = string.sub(KEYS[1], 1, -8)  -- strip ':queues'

-- The Redis server's clock, in epoch seconds with microseconds. TIME is allowed in a
-- script that writes: Redis 7 replicates a script's effects, not the script.
local function clock()
  local t = redis.call('TIME')
  return tonumber(t[1]) + tonumber(t[2]) / 1000000
end

-- The absolute run-at (epoch seconds) of a run-at argument (see Formats): a delay
-- "+<s>" counts from `now` (clock(), read once per call by the caller); "0" and an
-- absolute time are returned as numbers.
local function run_at(spec, now)
  if string.byte(spec, 1) == 43 then  -- '+'
    return now + tonumber(string.sub(spec, 2))
  end
  return tonumber(spec)
end

-- Add one wake-up token for queue q unless `cap` are waiting already: enough to wake
-- every idle process at once, and the list never grows without bound.
local function wake(q, cap)
  local w = p .. ':wake:' .. q
  if redis.call('LLEN', w) < cap then
    redis.call('LPUSH', w, '1')
  end
end

-- Queue q has just received jobs: record its name and wake one idle worker.
local function announce(q, cap)
  redis.call('SADD', p .. ':queues', q)
  wake(q, cap)
end

-- The lease field of delivery number seq (a number) taken from queue q.
local function lease_field(seq, q)
  return string.format('%.0f', seq) .. '|' .. q
end

-- The queue of a lease field, or nil if the field is not "<seq>|<queue>".
local function field_queue(field)
  return string.match(field, '^%d+|(.+)$')
end

-- The queue of a payload written by reconcile (anchored match: no decoding, so the
-- payload is moved as the same bytes), or nil.
local function payload_queue(item)
  return string.match(item, '^{"queue":"([^"\\]+)"')
end

-- The jid of a payload written by reconcile, or nil.
local function payload_jid(item)
  return string.match(item, '^{"queue":"[^"]*","jid":"(%w+)"')
end

-- A reader of the jids of payloads of queue q: at their fixed offset when a payload
-- starts as reconcile writes it ({"queue":"<q>","jid":"<24 characters>"), a third of
-- payload_jid's cost on the hot paths (measured in Redis); else payload_jid.
local function jid_reader(q)
  local prefix = '{"queue":"' .. q .. '","jid":"'
  local n = #prefix
  return function(item)
    if string.byte(item, n + 25) == 34 and string.sub(item, 1, n) == prefix then
      return string.sub(item, n + 1, n + 24)
    end
    return payload_jid(item)
  end
end

-- redis.call(cmd, key, list[first], ..., list[#list]) in slices of 1,000 values:
-- Lua's C stack holds ~8,000, so one unpack of a large list would fail.
local function call_sliced(cmd, key, list, first)
  for s = first, #list, 1000 do
    redis.call(cmd, key, unpack(list, s, math.min(s + 999, #list)))
  end
end

-- The jid index (see the header): a job that waits again as `member` (pushed back,
-- re-scheduled, recovered) stays indexed if it was before its lease (an entry "L1..."
-- or a member); a job that was not ("L0...") leaves the index with its lease.
local function index_wait(jid, member)
  if not jid then return end
  local jobs = p .. ':jobs'
  local cur = redis.call('HGET', jobs, jid)
  if not cur then return end
  if string.byte(cur, 1) == 76 and string.byte(cur, 2) ~= 49 then  -- "L0..."
    redis.call('HDEL', jobs, jid)
  else
    redis.call('HSET', jobs, jid, member)
  end
end

-- The jid index: job `jid` is now where `value` says (a member, or "D<score>").
local function index_set(jid, value)
  if jid then redis.call('HSET', p .. ':jobs', jid, value) end
end

-- The jid index: forget the dead jobs among `items` (members just trimmed from the
-- dead set), unless their jid was indexed elsewhere since.
local function index_dead_trimmed(items)
  local jobs = p .. ':jobs'
  for _, item in ipairs(items) do
    local jid = payload_jid(item)
    if jid then
      local cur = redis.call('HGET', jobs, jid)
      if cur and string.byte(cur, 1) == 68 then redis.call('HDEL', jobs, jid) end  -- "D..."
    end
  end
end

-- Release a uniqueness lock (see Formats: lock). A pass lock is dropped from both of
-- its class's generations.
local function unlock(lock)
  if string.byte(lock, 1) == 64 then  -- '@'
    local nl = string.find(lock, '\n', 2, true)
    if not nl then return end
    local cls, member = string.sub(lock, 2, nl - 1), string.sub(lock, nl + 1)
    redis.call('SREM', p .. ':plocks:' .. cls, member)
    redis.call('SREM', p .. ':plocks_prev:' .. cls, member)
  else
    redis.call('DEL', p .. ':unique:' .. lock)
  end
end

-- The pass lock of a compact pass payload holding one ("pl" field, see
-- docs/redis-layout.md), as unlock() takes it; nil for any other payload.
local function pass_lock(item)
  -- the stamp may be followed by a traceparent (tracing on): the last ',"pl":<number>'
  -- ends the args (greedy), since nothing after it holds one
  local cls, args = string.match(item, '^{"queue":"[^"]*","jid":"%w+","class":"([^"\\]+)","args":(.*),"pl":[%d%.e+-]+[,}]')
  if cls then return '@' .. cls .. '\n' .. args end
  return nil
end
