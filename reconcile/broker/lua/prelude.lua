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
--
-- Formats:
--   lease field   "<seq>|<queue>": <seq> a decimal integer numbering a process's
--                 deliveries, "0" for a claimed job that was never adopted
--   payload       compact JSON beginning {"queue":"<q>","jid":"<jid>" (see
--                 docs/redis-layout.md), so that both are read without decoding
local p = string.sub(KEYS[1], 1, -8)  -- strip ':queues'

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

-- redis.call(cmd, key, list[first], ..., list[#list]) in slices of 1,000 values:
-- Lua's C stack holds ~8,000, so one unpack of a large list would fail.
local function call_sliced(cmd, key, list, first)
  for s = first, #list, 1000 do
    redis.call(cmd, key, unpack(list, s, math.min(s + 999, #list)))
  end
end
