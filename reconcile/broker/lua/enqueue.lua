-- enqueue.lua: push a batch of jobs, taking uniqueness locks in the same call.
--
-- Runs after prelude.lua (prepended at load time): p, clock, run_at, wake, announce,
-- lease_field, field_queue, payload_queue, payload_jid, jid_reader and call_sliced are
-- defined there.
-- KEYS[1]  "{ns}:queues"; every other key is built from its prefix p = "{ns}".
-- Keys touched:
--   {ns}:queue:<q>    LIST  ready jobs; LPUSH here, workers RPOP (FIFO)
--   {ns}:queues       SET   names of queues that ever held a job
--   {ns}:schedule     ZSET  jobs to run later, score = run-at (epoch seconds, Redis clock)
--   {ns}:unique:<d>   STRING uniqueness lock for digest <d>, PX = unique_for
--   {ns}:plocks:<c>, {ns}:plocks_prev:<c>   SET  a ReconciledJob key's pass locks
--                     (SISMEMBER): a key a pass has queued is held for this enqueue too
--   {ns}:wake:<q>     LIST  wake-up tokens that idle workers BLPOP on
--   {ns}:jobs         HASH  the jid index (prelude.lua): modes FI and QI only
-- ARGV[1]  wake cap: most tokens kept per wake list
-- ARGV[2]  mode: "F" (full) or "Q" (quick: every job immediate, same queue, no lock);
--          "FI" and "QI" also index each pushed job by its jid (plain jobs, in the
--          same call: HSET jid "Q<queue>" for a job pushed to its queue, found by a
--          bounded scan of the queue; jid -> payload for a scheduled one, found by
--          ZSCORE), "F" and "Q" do not (ReconciledJobs)
-- full:    ARGV[3..] groups of 5 per job: queue, run-at (prelude's format: "0" now,
--          "+<s>" a delay from this script's clock(), "<t>" an absolute epoch time),
--          lock digest ("" = none), lock ttl (ms), payload. A lock
--          "<d>\n<class>\n<args JSON>" also names the key's pass lock (member
--          <args JSON> of {ns}:plocks:<class> or {ns}:plocks_prev:<class>): while
--          that is held the job is dropped as if <d> were (see pass_enqueue.lua)
-- quick:   ARGV[3] queue, ARGV[4..] payloads (a fifth of the arguments to send and parse)
-- A job whose run-at is after the server's clock goes to the schedule, others to the queue.
-- Returns  full: one integer per job: 1 pushed, 0 dropped because its lock was held;
--          quick: the number of jobs pushed.
local cap = tonumber(ARGV[1])
local mode = ARGV[2]
local indexed = (mode == 'FI' or mode == 'QI')

-- jid -> entry pairs of the pushed jobs, written with one HSET per 500 (call_sliced):
-- "Q<queue>" for a queued job (a few bytes, not a copy of the payload), the payload
-- for a scheduled one (the member ZSCORE needs)
local entries = {}
local readers = {}  -- queue -> its jid_reader
local function index(q, payload, value)
  local read = readers[q]
  if not read then
    read = jid_reader(q)
    readers[q] = read
  end
  local jid = read(payload)
  if jid then
    entries[#entries + 1] = jid
    entries[#entries + 1] = value
  end
end

if mode == 'Q' or mode == 'QI' then
  local q = ARGV[3]
  local key = p .. ':queue:' .. q
  call_sliced('LPUSH', key, ARGV, 4)
  announce(q, cap)
  if indexed then
    local value = 'Q' .. q
    for i = 4, #ARGV do index(q, ARGV[i], value) end
    if #entries > 0 then call_sliced('HSET', p .. ':jobs', entries, 1) end
  end
  return #ARGV - 3
end

local now = nil  -- the server's clock, read once and only when a job has a run-at
local out, ready, order = {}, {}, {}
local n = 0
for i = 3, #ARGV, 5 do
  local q, at, lock, payload = ARGV[i], ARGV[i + 1], ARGV[i + 2], ARGV[i + 4]
  local ok = true
  if lock ~= '' then
    local nl = string.find(lock, '\n', 1, true)
    if nl then
      local rest = string.sub(lock, nl + 1)
      lock = string.sub(lock, 1, nl - 1)
      local sep = string.find(rest, '\n', 1, true)
      local cls, member = string.sub(rest, 1, sep - 1), string.sub(rest, sep + 1)
      ok = redis.call('SISMEMBER', p .. ':plocks:' .. cls, member) == 0
        and redis.call('SISMEMBER', p .. ':plocks_prev:' .. cls, member) == 0
    end
    ok = ok and redis.call('SET', p .. ':unique:' .. lock, '1', 'NX', 'PX', ARGV[i + 3])
  end
  n = n + 1
  if ok then
    out[n] = 1
    local later = false
    if at ~= '0' then
      now = now or clock()
      at = run_at(at, now)
      later = at > now
    end
    if later then
      redis.call('ZADD', p .. ':schedule', at, payload)
      if indexed then index(q, payload, payload) end
    else
      if indexed then index(q, payload, 'Q' .. q) end
      local list = ready[q]
      if not list then
        list = {}
        ready[q] = list
        order[#order + 1] = q
      end
      list[#list + 1] = payload
    end
  else
    out[n] = 0
  end
end
for _, q in ipairs(order) do
  local list = ready[q]
  local key = p .. ':queue:' .. q
  call_sliced('LPUSH', key, list, 1)
  announce(q, cap)
end
if #entries > 0 then call_sliced('HSET', p .. ':jobs', entries, 1) end
return out
