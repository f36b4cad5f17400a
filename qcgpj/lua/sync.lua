-- One round trip of an executor: what started, what finished, and more work.
-- ARGV: executor id, now, want, n_adopt, n_started, n_finished, new prefetch ('' to keep it), then
--   adopt entries (moved to running by BLMOVE; to check and describe), started (entry, start time) pairs,
--   finished (entry, state, exit, start, end, message, usage) 7-tuples; usage is 'user s,system s,max RSS KiB'
--   of a process, or ''. A start may be 'time@cores' (the task's nodes and cores, 'n0:0-3,n1:0-3'): a job keeps
--   them in its hash field 'alloc', an iteration in its record's start field, as they came.
-- Returns {entry, spec, entry, spec...} for the adopted and newly claimed entries that are still wanted; spec
-- is '' when the previous entry was of the same job. Claimed entries stay SCHEDULED until reported started.
-- A report about an entry no longer in our running list (we were declared dead and it was requeued) is ignored:
-- that is the fencing that keeps a task from completing twice.
local eid, want = ARGV[1], tonumber(ARGV[3])
NOW = ARGV[2]
local n_adopt, n_started, n_finished = tonumber(ARGV[4]), tonumber(ARGV[5]), tonumber(ARGV[6])
local ready, running = K_ready(eid), K_running(eid)
local out, credit, last, finished = {}, 0, nil, 0
local gcredit = 0  -- GPUs given back (entries 'task|c+g|k|a')

-- The job's state, `field` of its hash read in the same call, and an iteration's record state, while the job
-- (and the iteration) is not final; nil once it is.
local function live(name, it, field)
  local h = redis.call('HMGET', K_job(name), 'state', field or 'state')
  if not h[1] or FINAL[h[1]] then return nil end
  local rs = it ~= nil and record_state(redis.call('HGET', K_its(name), it)) or nil
  if FINAL[rs or ''] then return nil end
  return h[1], h[2], rs
end

local function offer(entry)  -- a claimed entry: hand it out, or drop it if its job ended meanwhile
  local spec, name = placed_specs[entry], placed_names[entry]   -- placed by this very call: live, spec read
  if not spec then
    local tid, c, k, _, g = parse_entry(entry)
    local it
    name, it = split_tid(tid)
    local st
    st, spec = live(name, it, name ~= last and 'spec' or nil)
    if not st then
      redis.call('LREM', running, 1, entry)
      credit = credit + c
      if g > 0 then gcredit = gcredit + entry_gpus(g, k) end
      return
    end
  end
  out[#out + 1] = entry
  out[#out + 1] = name ~= last and spec or ''   -- the spec goes out once per run of entries of one job
  last = name
end

-- Fencing: an executor declared dead (or forgotten by a Redis that lost its data) gets nothing, and an adopted
-- entry counts only while it is still in our running list (a death may have taken it back after BLMOVE).
local est = redis.call('HGET', K_exec(eid), 'state')
local alive = est ~= false and est ~= 'DEAD' and est ~= 'LEFT'
local b = 8
for i = 1, n_adopt do
  if alive and redis.call('LPOS', running, ARGV[b]) then offer(ARGV[b]) end
  b = b + 1
end
for i = 1, n_started do
  local entry, t0 = ARGV[b], ARGV[b + 1]
  b = b + 2
  if redis.call('LPOS', running, entry) then
    local tid, c, k, att = parse_entry(entry)
    local name, it = split_tid(tid)
    local st, _, rs = live(name, it)
    if st then
      local jk = K_job(name)
      local t, cores = split_start(t0)
      if it == nil then
        redis.call('HSET', jk, 'state', 'EXECUTING', 'start', t, 'executor', eid, 'alloc', cores)
      else
        redis.call('HSET', K_its(name), it, record('EXECUTING', nil, eid, t0, nil, att, nil))
        if rs ~= 'EXECUTING' then redis.call('HINCRBY', jk, 'n_EXECUTING', 1) end
        if st ~= 'EXECUTING' then redis.call('HSET', jk, 'state', 'EXECUTING', 'start', t) end
      end
    end
  end
end
for i = 1, n_finished do
  local entry, state, exit, t0, t1, msg = ARGV[b], ARGV[b + 1], ARGV[b + 2], ARGV[b + 3], ARGV[b + 4], ARGV[b + 5]
  local usage = ARGV[b + 6]
  b = b + 7
  if redis.call('LREM', running, 1, entry) == 1 then
    local tid, c, k, att, g = parse_entry(entry)
    credit = credit + c
    if g > 0 then gcredit = gcredit + entry_gpus(g, k) end
    local name, it = split_tid(tid)
    local st, kids, rs = live(name, it, 'kids')
    if st then
      if rs == 'EXECUTING' then redis.call('HINCRBY', K_job(name), 'n_EXECUTING', -1) end
      if it ~= nil and st ~= 'EXECUTING' then   -- no start of its reported on its own (short tasks): the job's
        redis.call('HSET', K_job(name), 'state', 'EXECUTING', 'start', (split_start(t0)))   -- start is this one's
      end
      task_final(name, it, state, exit, eid, t0, t1, att, msg, not kids, usage)
      finished = finished + 1
    end
  end
end
propagate()

-- Cores given back so far go to the executor's credit, and ready work is placed on them (here or elsewhere).
local function settle()
  if credit > 0 and alive then   -- placement writes our credit, net of what it placed on us
    place(math.min(50 + credit, 1000), 1000, {id = eid, delta = credit, gdelta = gcredit})
  else
    if credit ~= 0 and alive then add_credit(eid, credit, gcredit) end   -- an entry with GPUs has cores too
    if credit > 0 then place(math.min(50 + credit, 1000), 1000) end
  end
  credit, gcredit = 0, 0
end

local prefetch = tonumber(ARGV[7])
if prefetch and alive then  -- the executor's look-ahead changed: so does its credit
  local old = tonumber(redis.call('HGET', K_exec(eid), 'prefetch') or '0')
  redis.call('HSET', K_exec(eid), 'prefetch', prefetch)
  credit = credit + prefetch - old
end
settle()
local n = alive and want > 0 and math.min(want, redis.call('LLEN', ready)) or 0
if n <= 2 then
  for i = 1, n do offer(redis.call('LMOVE', ready, running, 'LEFT', 'RIGHT')) end
elseif n > 0 then  -- a batch: three calls instead of one per entry
  local got = redis.call('LRANGE', ready, 0, n - 1)
  redis.call('LTRIM', ready, n, -1)
  push_many(running, got)
  for _, entry in ipairs(got) do offer(entry) end
end
settle()  -- claimed entries of jobs that ended meanwhile (canceled while placed here) give their cores back
if finished > 0 or n_started > 0 then emit('sync', eid .. ' ' .. n_started .. ' ' .. finished) end
return out
