-- dead_retry.lua: move chosen dead jobs back to their queues (operator retry).
--
-- KEYS[1]  "{ns}"  namespace hash tag (all keys below share it).
-- Keys touched:
--   {ns}:dead       ZSET  dead jobs; each chosen member is removed here first
--   {ns}:queue:<q>  LIST  LPUSH: a retried job joins the back of the line
--   {ns}:queues     SET   known queue names
--   {ns}:wake:<q>   LIST  wake-up tokens
-- ARGV[1] wake cap
-- ARGV[2 ..] groups of 3 per job: dead member (exact bytes), queue, payload to push
--   (the caller's updated copy of the member)
-- Returns  one integer per job: 1 moved, 0 skipped because the member was no longer in
-- the dead set (retried or deleted by someone else meanwhile, trimmed), so a job is
-- never pushed twice by concurrent retries.
local p = KEYS[1]
local cap = tonumber(ARGV[1])
local dead = p .. ':dead'
local moved = {}
local woken = {}
for i = 2, #ARGV, 3 do
  local gone = redis.call('ZREM', dead, ARGV[i])
  moved[#moved + 1] = gone
  if gone == 1 then
    local q = ARGV[i + 1]
    redis.call('LPUSH', p .. ':queue:' .. q, ARGV[i + 2])
    if not woken[q] then
      woken[q] = true
      redis.call('SADD', p .. ':queues', q)
      local w = p .. ':wake:' .. q
      if redis.call('LLEN', w) < cap then redis.call('LPUSH', w, '1') end
    end
  end
end
return moved
