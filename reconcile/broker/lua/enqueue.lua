-- enqueue.lua: push a batch of jobs, taking uniqueness locks in the same call.
--
-- Runs after prelude.lua (prepended at load time): p, wake, announce, lease_field,
-- field_queue, payload_queue, payload_jid and call_sliced are defined there.
-- KEYS[1]  "{ns}:queues"; every other key is built from its prefix p = "{ns}".
-- Keys touched:
--   {ns}:queue:<q>    LIST  ready jobs; LPUSH here, workers RPOP (FIFO)
--   {ns}:queues       SET   names of queues that ever held a job
--   {ns}:schedule     ZSET  jobs to run later, score = run-at (epoch seconds)
--   {ns}:unique:<d>   STRING uniqueness lock for digest <d>, PX = unique_for
--   {ns}:wake:<q>     LIST  wake-up tokens that idle workers BLPOP on
-- ARGV[1]  now (epoch seconds)
-- ARGV[2]  wake cap: most tokens kept per wake list
-- ARGV[3]  mode: "F" (full) or "Q" (quick: every job immediate, same queue, no lock)
-- full:    ARGV[4..] groups of 5 per job: queue, run-at (0 = now), lock digest
--          ("" = none), lock ttl (ms), payload
-- quick:   ARGV[4] queue, ARGV[5..] payloads (a fifth of the arguments to send and parse)
-- Returns  full: one integer per job: 1 pushed, 0 dropped because its lock was held;
--          quick: the number of jobs pushed.
local now = tonumber(ARGV[1])
local cap = tonumber(ARGV[2])

if ARGV[3] == 'Q' then
  local q = ARGV[4]
  local key = p .. ':queue:' .. q
  call_sliced('LPUSH', key, ARGV, 5)
  announce(q, cap)
  return #ARGV - 4
end

local out, ready, order = {}, {}, {}
local n = 0
for i = 4, #ARGV, 5 do
  local q, at, lock, payload = ARGV[i], tonumber(ARGV[i + 1]), ARGV[i + 2], ARGV[i + 4]
  local ok = true
  if lock ~= '' then
    ok = redis.call('SET', p .. ':unique:' .. lock, '1', 'NX', 'PX', ARGV[i + 3])
  end
  n = n + 1
  if ok then
    out[n] = 1
    if at > now then
      redis.call('ZADD', p .. ':schedule', at, payload)
    else
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
return out
