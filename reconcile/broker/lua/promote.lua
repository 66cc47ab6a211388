-- promote.lua: move due jobs from the scheduled and retry sets to their queues.
--
-- Runs after prelude.lua (prepended at load time): p, clock, run_at, wake, announce,
-- lease_field, field_queue, payload_queue, payload_jid and call_sliced are defined there.
-- KEYS[1]  "{ns}:queues"; every other key is built from its prefix p = "{ns}".
-- Keys touched:
--   {ns}:schedule, {ns}:retry   ZSET  score = run-at (epoch seconds, the server's clock)
--   {ns}:queue:<q>              LIST  LPUSH: promoted jobs join the back of the line
--   {ns}:queues                 SET   known queue names
--   {ns}:wake:<q>               LIST  wake-up tokens
--   {ns}:dead                   ZSET  members that name no queue go here, with a reason
-- ARGV[1] most jobs to move per set   ARGV[2] wake cap
-- "Due" is judged by the Redis server's clock() (TIME), never the caller's: a worker
-- whose clock is fast must not promote jobs early.
-- Returns  {moved from schedule, moved from retry, 1 if a set still has due jobs else 0}
--
-- Payloads written by reconcile begin with {"queue":"<name>", so the queue is read
-- with an anchored match; anything else falls back to cjson. Payloads are moved as
-- the exact same string (never re-encoded: cjson would turn [] into {}).
local limit, cap = tonumber(ARGV[1]), tonumber(ARGV[2])
local now = clock()

local function queue_of(item)
  local q = payload_queue(item)
  if q then return q end
  local ok, job = pcall(cjson.decode, item)
  if ok and type(job) == 'table' and type(job.queue) == 'string' and job.queue ~= '' then
    return job.queue
  end
  return nil
end

local counts, more = {}, 0
local woken = {}
-- key names written out (not built from the set's name), so that tests/unit/test_redis_layout.py
-- can read every key a script touches from its source
for s, entry in ipairs({{'schedule', p .. ':schedule'}, {'retry', p .. ':retry'}}) do
  local set, key = entry[1], entry[2]
  local items = redis.call('ZRANGEBYSCORE', key, '-inf', now, 'LIMIT', 0, limit)
  counts[s] = #items
  if #items == limit then more = 1 end
  for _, item in ipairs(items) do
    redis.call('ZREM', key, item)
    local q = queue_of(item)
    if q then
      redis.call('LPUSH', p .. ':queue:' .. q, item)
      if not woken[q] then
        woken[q] = true
        announce(q, cap)
      end
    else
      redis.call('ZADD', p .. ':dead', now, cjson.encode({
        error_class = 'InvalidPayload',
        error_message = 'a ' .. set .. ' entry names no queue',
        failed_at = now, raw = string.sub(item, 1, 2000)}))
    end
  end
end
return {counts[1], counts[2], more}
