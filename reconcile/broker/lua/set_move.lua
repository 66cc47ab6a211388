-- set_move.lua: operator actions on chosen members of the scheduled, retry or dead set.
--
-- Runs after prelude.lua (prepended at load time): p, clock, run_at, wake, announce,
-- lease_field, field_queue, payload_queue, payload_jid and call_sliced are defined there.
-- KEYS[1]  "{ns}:queues"; every other key is built from its prefix p = "{ns}".
-- Keys touched:
--   {ns}:schedule, {ns}:retry, {ns}:dead   ZSET  the set acted on (ARGV[2])
--   {ns}:queue:<q>    LIST    mode Q: LPUSH, the job joins the back of the line
--   {ns}:queues       SET     mode Q: known queue names
--   {ns}:wake:<q>     LIST    mode Q: wake-up tokens
--   {ns}:unique:<d>   STRING  mode X: the deleted job's uniqueness lock, released
--   {ns}:jobs         HASH    the jid index (prelude.lua): an indexed job is indexed as
--                             its pushed payload (Q) or forgotten (X)
--   {ns}:plocks:<c>, {ns}:plocks_prev:<c>   SET  mode X: or its pass lock (unlock)
-- ARGV[1] wake cap   ARGV[2] set: "schedule", "retry" or "dead"
-- ARGV[3] mode:
--   Q  groups of 3: member (exact bytes), queue, payload to push (the caller's
--      updated copy of the member): move the job to its queue now
--   X  groups of 2: member, lock digest ("" = none): delete the job, and release its
--      lock (a deleted scheduled job must not keep its key "already queued")
-- Returns  one integer per job: 1 done, 0 skipped because the member was no longer in
-- the set (moved, run or deleted by someone else meanwhile, trimmed), so concurrent
-- operators act on a job once.
local cap = tonumber(ARGV[1])
-- key names written out (see promote.lua); an unknown name is refused, not built
local set = ({schedule = p .. ':schedule', retry = p .. ':retry', dead = p .. ':dead'})[ARGV[2]]
if not set then return redis.error_reply('set_move.lua: no set named ' .. tostring(ARGV[2])) end
local mode = ARGV[3]
local out = {}
local woken = {}
local step = (mode == 'Q') and 3 or 2
for i = 4, #ARGV, step do
  local gone = redis.call('ZREM', set, ARGV[i])
  out[#out + 1] = gone
  if gone == 1 then
    local jid = payload_jid(ARGV[i])
    local indexed = jid and redis.call('HGET', p .. ':jobs', jid)  -- HGET: in the ACL rule
    if mode == 'Q' then
      if indexed then redis.call('HSET', p .. ':jobs', jid, ARGV[i + 2]) end
      local q = ARGV[i + 1]
      redis.call('LPUSH', p .. ':queue:' .. q, ARGV[i + 2])
      if not woken[q] then
        woken[q] = true
        announce(q, cap)
      end
    else
      if indexed then redis.call('HDEL', p .. ':jobs', jid) end
      if ARGV[i + 1] ~= '' then unlock(ARGV[i + 1]) end
    end
  end
end
return out
