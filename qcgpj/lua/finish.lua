-- An executor reports finished tasks. ARGV: executor id, now, count, then per task: entry, state, exit, start, end, msg.
-- A report for a task no longer in the executor's running list (requeued after the executor was declared dead,
-- or reported twice) is ignored: that is the fencing that keeps a task from completing twice.
local eid = ARGV[1]
NOW = ARGV[2]
local count, accepted, credit = tonumber(ARGV[3]), 0, 0
local running = K_running(eid)
for i = 0, count - 1 do
  local b = 4 + i * 6
  local entry, state, exit, t0, t1, msg = ARGV[b], ARGV[b + 1], ARGV[b + 2], ARGV[b + 3], ARGV[b + 4], ARGV[b + 5]
  if redis.call('LREM', running, 1, entry) == 1 then
    local tid, c, k, att = parse_entry(entry)
    credit = credit + c
    local name, it = split_tid(tid)
    local st = redis.call('HGET', K_job(name), 'state')
    if st and not FINAL[st] then
      if it == nil or not FINAL[record_state(redis.call('HGET', K_its(name), it)) or ''] then
        task_final(name, it, state, exit, eid, t0, t1, att, msg)
        accepted = accepted + 1
      end
    end
  end
end
propagate()
if credit > 0 and redis.call('HGET', K_exec(eid), 'state') ~= 'DEAD' then
  redis.call('HINCRBY', K_exec(eid), 'free', credit)
end
place(50, 1000)
emit('finish', tostring(accepted))
return accepted
