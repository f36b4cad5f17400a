-- An executor gives back entries of its running list that it does not know (Redis lost the writes that would
-- have removed them: a crash under appendfsync everysec). ARGV: executor id, now, entries.
-- They go back to READY without counting an attempt; a task whose job ended meanwhile is just dropped.
local eid = ARGV[1]
NOW = ARGV[2]
local credit, gcredit, back = 0, 0, 0
for i = 3, #ARGV do
  local entry = ARGV[i]
  if redis.call('LREM', K_running(eid), 1, entry) == 1 then
    local tid, c, k, att, g = parse_entry(entry)
    credit = credit + c
    gcredit = gcredit + entry_gpus(g, k)
    local name, it = split_tid(tid)
    local st = redis.call('HGET', K_job(name), 'state')
    local rs = it ~= nil and record_state(redis.call('HGET', K_its(name), it)) or nil
    if st and not FINAL[st] and not FINAL[rs or ''] then
      if it == nil then
        redis.call('HSET', K_job(name), 'state', 'READY', 'executor', '')
      else
        if rs == 'EXECUTING' then redis.call('HINCRBY', K_job(name), 'n_EXECUTING', -1) end
        redis.call('HSET', K_its(name), it, record('READY', nil, nil, nil, nil, att, 'released by ' .. eid))
      end
      redis.call('LPUSH', K_pending, tid)
      back = back + 1
    end
  end
end
if credit > 0 then add_credit(eid, credit, gcredit) end
emit('executor', eid .. ' released ' .. back)
place(50, 1000)
return back
