-- enqueue.lua: push a batch of jobs, taking uniqueness locks in the same call.
--
-- KEYS[1]  "{ns}:queues"  the namespace's set of queue names: a real key of the
--          namespace's slot (so ACL key patterns and Redis Cluster routing apply
--          to it); every other key is built from its prefix "{ns}" (KEYS[1]
--          without ":queues"), so all keys this script touches share that slot.
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
local p = string.sub(KEYS[1], 1, -8)  -- strip ':queues'
local now = tonumber(ARGV[1])
local cap = tonumber(ARGV[2])

local function wake(q)
  local w = p .. ':wake:' .. q
  if redis.call('LLEN', w) < cap then
    redis.call('LPUSH', w, '1')
  end
end

if ARGV[3] == 'Q' then
  local q = ARGV[4]
  local key = p .. ':queue:' .. q
  -- unpack in slices: Lua's C stack holds ~8000 values
  for s = 5, #ARGV, 1000 do
    redis.call('LPUSH', key, unpack(ARGV, s, math.min(s + 999, #ARGV)))
  end
  redis.call('SADD', p .. ':queues', q)
  wake(q)
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
  for s = 1, #list, 1000 do
    redis.call('LPUSH', key, unpack(list, s, math.min(s + 999, #list)))
  end
  redis.call('SADD', p .. ':queues', q)
  wake(q)
end
return out
