-- Take back the work of an executor: dead (heartbeat lost) or leaving.
-- ARGV: id, now, max attempts, reason, final state.
-- A death charges an attempt to every task the executor had claimed (its running list), started or not: a task
-- that kills its executor before its start is reported must still run out of attempts. Tasks only placed on it
-- (its ready list) are not charged, nor is anything an executor hands back when it leaves, except the starts it
-- reported. Each charge adds the executor to the task's 'lost' list (job hash field 'lost', or 'lost:<it>' for
-- an iteration), which the FAILED message names. Past max attempts a task ends FAILED. Returns {requeued, failed, acted}: acted is 0 when there was nothing to take back (the
-- executor already left, or, for a death, its heartbeat is back: the check that called us raced with it).
local eid, maxatt, why, final = ARGV[1], tonumber(ARGV[3]), ARGV[4], ARGV[5]
NOW = ARGV[2]
local st = redis.call('HGET', K_exec(eid), 'state')
if not st or st == 'DEAD' or st == 'LEFT' then return {0, 0, 0} end
if final == 'DEAD' and redis.call('EXISTS', K_alive(eid)) == 1 then return {0, 0, 0} end
local requeued, failed, back = 0, 0, {}

local function started_here(name, it, jst)
  if it == nil then return jst == 'EXECUTING' and redis.call('HGET', K_job(name), 'executor') == eid end
  local rec = redis.call('HGET', K_its(name), it)
  return rec ~= false and record_state(rec) == 'EXECUTING' and string.match(rec, '^[^|]*|[^|]*|([^|]*)') == eid
end

local function charge(jk, it)  -- the executors lost while holding the task, this one included
  local field = it == nil and 'lost' or 'lost:' .. it
  local lost = redis.call('HGET', jk, field)
  lost = lost and (lost .. ' ' .. eid) or eid
  redis.call('HSET', jk, field, lost)
  return lost
end

local function take_back(entry, claimed)
  local tid, c, k, att = parse_entry(entry)
  local name, it = split_tid(tid)
  local jk = K_job(name)
  local jst = redis.call('HGET', jk, 'state')
  if not jst or FINAL[jst] then return end
  local rs = it ~= nil and record_state(redis.call('HGET', K_its(name), it)) or nil
  if FINAL[rs or ''] then return end
  if rs == 'EXECUTING' then redis.call('HINCRBY', jk, 'n_EXECUTING', -1) end   -- it ends or goes back to READY
  local charged = (claimed and final == 'DEAD') or started_here(name, it, jst)
  local nxt = charged and att + 1 or att
  local lost = charged and final == 'DEAD' and charge(jk, it) or nil
  if nxt >= maxatt then
    if it == nil then redis.call('HSET', jk, 'attempts', nxt) end   -- the attempt that failed it counts too
    task_final(name, it, 'FAILED', nil, eid, nil, NOW, nxt,
      'executor ' .. eid .. ' ' .. why .. '; gave up after ' .. nxt .. ' attempts' ..
      (lost and ('; executors lost while it was claimed: ' .. lost) or ''))
    failed = failed + 1
    return
  end
  if it == nil then
    redis.call('HSET', jk, 'state', 'READY', 'attempts', nxt, 'executor', '')
  else
    redis.call('HSET', K_att(name), it, nxt)
    redis.call('HSET', jk, 'retried', 1)
    local msg = 'requeued: executor ' .. eid .. ' ' .. why
    redis.call('HSET', K_its(name), it, record('READY', nil, nil, nil, nil, nxt, msg))
  end
  back[#back + 1] = tid
  requeued = requeued + 1
end

for _, e in ipairs(redis.call('LRANGE', K_running(eid), 0, -1)) do take_back(e, true) end
for _, e in ipairs(redis.call('LRANGE', K_ready(eid), 0, -1)) do take_back(e, false) end
for i = #back, 1, -1 do redis.call('LPUSH', K_pending, back[i]) end
redis.call('DEL', K_ready(eid), K_running(eid), K_alive(eid))
count_shape(eid, -1)
redis.call('HSET', K_exec(eid), 'state', final, 'free', 0, 'gfree', 0, 'ended', NOW)
redis.call('SREM', K_live, eid)
redis.call('ZREM', K_free, eid)
propagate()
emit('executor', eid .. ' ' .. why)
place(1000, 100000)
return {requeued, failed, 1}
