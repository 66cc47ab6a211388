-- locate.lua: where one job is, by its jid, through the jid index (prelude.lua).
--
-- Bounded work: one HGET of the index, then one lookup where the entry points (ZSCORE
-- of the member, ZRANGEBYSCORE of one dead score, one lease HGET), or for a queued job
-- a search among the ARGV[2] oldest entries of its queue (the end workers take from),
-- 1,000 per LRANGE, for its member or, for an entry "Q<queue>" (which holds no
-- member), for its jid: never a scan of the whole of a set. Only commands of the
-- documented ACL rule (docs/settings.md): LRANGE, not LPOS. Read-only, except that an
-- entry naming a lease that is gone (its process was reaped before it was indexed
-- again, an entry left behind) is removed, so that stale entries do not outlive a
-- lookup.
--
-- Runs after prelude.lua (prepended at load time): p, clock, run_at, wake, announce,
-- lease_field, field_queue, payload_queue, payload_jid and call_sliced are defined there.
-- KEYS[1]  "{ns}:queues"; every other key is built from its prefix p = "{ns}".
-- Keys touched:
--   {ns}:jobs           HASH  the jid index: HGET (HDEL of an entry naming a lost lease)
--   {ns}:unique:<d>     STRING mode K: a uniqueness lock (GET, PTTL): its value is "1"
--                             or, while its job retries, the jid
--   {ns}:plocks:<c>, {ns}:plocks_prev:<c>  SET  mode K: a pass lock (SMISMEMBER)
--   {ns}:lease:<proc>   HASH  the lease the entry names (HGET)
--   {ns}:schedule       ZSET  ZSCORE of the member
--   {ns}:retry          ZSET  ZSCORE of the member
--   {ns}:dead           ZSET  ZRANGEBYSCORE of the entry's score
--   {ns}:queue:<q>      LIST  LLEN, LRANGE of its ARGV[2] oldest entries
-- ARGV[1]  mode: "J" (by jid: ARGV[3] the jid) or "K" (by uniqueness lock: ARGV[3]
--          the lock digest; the lock's jid, when it names one, is located as by "J")
-- ARGV[2]  most queue entries searched (from the oldest)
-- ARGV[4], ARGV[5]  mode K, optional: the class and the key's canonical args JSON of a
--          pass lock ({ns}:plocks:<class>, {ns}:plocks_prev:<class>: SMISMEMBER),
--          looked at when the key has no lock key
-- Returns  {state, now (server clock, epoch ms), ...} where state and the rest are:
--   "unknown"                                 no entry (never indexed, or ended)
--   "running", proc, since_ms, field, payload leased by <proc> since <since_ms>
--   "scheduled", score, payload               in the scheduled set, runs at <score>
--   "retry", score, payload                   in the retry set, runs at <score>
--   "dead", score, payload                    in the dead set since <score>
--   "queued", queue, position, length, payload   <position> 0 = the next to run
--   "deep", queue, length, payload or false   in the index, not among the ARGV[2]
--                                             oldest of its queue (queued further back,
--                                             or in transit between sets)
--   "stale", entry                            the entry names a place the job left
-- mode K prepends {lock ttl ms (-2: no lock, -3: a pass lock), lock value or false}.
local mode, maxscan = ARGV[1], tonumber(ARGV[2])
local t = redis.call('TIME')
local now_ms = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local jobs = p .. ':jobs'

-- Search the ARGV[2] oldest entries of queue q for the one `match` accepts: its
-- position (0 = the next to run), the entry and the queue's length, or nil and the
-- length.
local function search(q, match)
  local key = p .. ':queue:' .. q
  local len = redis.call('LLEN', key)
  local done = 0
  while done < math.min(len, maxscan) do
    local n = math.min(1000, maxscan - done)
    local chunk = redis.call('LRANGE', key, -(done + n), -(done + 1))
    for c = #chunk, 1, -1 do
      if match(chunk[c]) then return done + (#chunk - c), chunk[c], len end
    end
    if #chunk < n then break end
    done = done + n
  end
  return nil, nil, len
end

local function by_jid(jid)
  local e = redis.call('HGET', jobs, jid)
  if not e then return {'unknown', now_ms} end
  local head = string.byte(e, 1)
  if head == 76 then  -- "L<i>|<ms>|<proc>|<field>"
    local since, proc, field = string.match(e, '^L%d|(%d+)|([^|]+)|(.+)$')
    if proc then
      local item = redis.call('HGET', p .. ':lease:' .. proc, field)
      if item then return {'running', now_ms, proc, since, field, item} end
    end
    redis.call('HDEL', jobs, jid)
    return {'stale', now_ms, e}
  end
  if head == 68 then  -- "D<score>"
    local score = string.sub(e, 2)
    for _, item in ipairs(redis.call('ZRANGEBYSCORE', p .. ':dead', score, score)) do
      if payload_jid(item) == jid then return {'dead', now_ms, score, item} end
    end
    return {'stale', now_ms, e}
  end
  if head == 81 then  -- "Q<queue>": search the queue's oldest entries for the jid
    local q = string.sub(e, 2)
    local needle = '"jid":"' .. jid .. '"'
    local pos, item, len = search(q, function(x) return string.find(x, needle, 1, true) end)
    if pos then return {'queued', now_ms, q, pos, len, item} end
    if len > maxscan then return {'deep', now_ms, q, len, false} end
    return {'stale', now_ms, e}
  end
  local score = redis.call('ZSCORE', p .. ':schedule', e)
  if score then return {'scheduled', now_ms, score, e} end
  score = redis.call('ZSCORE', p .. ':retry', e)
  if score then return {'retry', now_ms, score, e} end
  local q = payload_queue(e)
  if q then
    local pos, _, len = search(q, function(x) return x == e end)
    if pos then return {'queued', now_ms, q, pos, len, e} end
    if len > maxscan then return {'deep', now_ms, q, len, e} end
  end
  return {'stale', now_ms, e}
end

if mode == 'K' then
  local lock = p .. ':unique:' .. ARGV[3]
  local ttl = redis.call('PTTL', lock)
  local value = redis.call('GET', lock)
  if ttl == -2 and ARGV[4] and ARGV[4] ~= '' then
    -- no lock key: the key may hold a pass lock instead, a member of its class's
    -- current or previous generation (pass_enqueue.lua); -3 says so (its life is
    -- its generation's, not a TTL)
    local held = redis.call('SMISMEMBER', p .. ':plocks:' .. ARGV[4], ARGV[5])[1] == 1
      or redis.call('SMISMEMBER', p .. ':plocks_prev:' .. ARGV[4], ARGV[5])[1] == 1
    if held then return {-3, false} end
  end
  local out = {ttl, value}
  if value and value ~= '1' then
    for _, v in ipairs(by_jid(value)) do out[#out + 1] = v end
  end
  return out
end
return by_jid(ARGV[3])
