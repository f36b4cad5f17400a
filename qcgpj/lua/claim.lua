-- An executor claims work. ARGV: executor id, now, free cores, max tasks, first entry ('' or one BLMOVE already moved).
-- Moves entries from its ready list to its running list while they fit in the free cores, marks them EXECUTING,
-- and drops (with their credit returned) entries whose job or iteration was canceled meanwhile.
-- Returns {status, entry, spec, entry, spec...}: status 'more' (ready list still has work that did not fit) or
-- 'empty'; spec is the job's JSON, or '' when the previous entry was of the same job (the executor caches specs).
local eid, free, max = ARGV[1], tonumber(ARGV[3]), tonumber(ARGV[4])
NOW = ARGV[2]
local ready, running = K_ready(eid), K_running(eid)
local out, credit, last = {'empty'}, 0, nil

local function take(entry)
  local tid, c, k, att = parse_entry(entry)
  local name, it = split_tid(tid)
  local jk = K_job(name)
  local st = redis.call('HGET', jk, 'state')
  local dead = (not st) or FINAL[st]
  if not dead and it ~= nil then dead = FINAL[record_state(redis.call('HGET', K_its(name), it)) or ''] end
  if dead then
    redis.call('LREM', running, 1, entry)
    credit = credit + c
    return
  end
  if it == nil then
    redis.call('HSET', jk, 'state', 'EXECUTING', 'start', NOW, 'executor', eid)
  else
    redis.call('HSET', K_its(name), it, record('EXECUTING', nil, eid, NOW, nil, att, nil))
    if st ~= 'EXECUTING' then redis.call('HSET', jk, 'state', 'EXECUTING', 'start', NOW) end
  end
  out[#out + 1] = entry
  if name ~= last then out[#out + 1] = redis.call('HGET', jk, 'spec'); last = name else out[#out + 1] = '' end
  free = free - c
end

if ARGV[5] ~= '' then take(ARGV[5]) end
while (#out - 1) / 2 < max do
  local head = redis.call('LINDEX', ready, 0)
  if not head then break end
  local _, c = parse_entry(head)
  if c > free then out[1] = 'more' break end
  redis.call('LMOVE', ready, running, 'LEFT', 'RIGHT')
  take(head)
end
if credit > 0 then
  redis.call('HINCRBY', K_exec(eid), 'free', credit)
  place(50, 1000)
end
return out
