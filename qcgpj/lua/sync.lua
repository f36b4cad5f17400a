-- One round trip of an executor: what started, what finished, and more work.
-- ARGV: executor id, now, want, n_adopt, n_started, n_finished, new prefetch ('' to keep it), n_followed, then
--   adopt entries (moved to running by BLMOVE; to check and describe), started (entry, start time) pairs,
--   finished (entry, state, exit, start, end, message, usage) 7-tuples; usage is 'user s,system s,max RSS KiB'
--   of a process, or ''. A start may be 'time@cores' (the task's nodes and cores, 'n0:0-3,n1:0-3'): a job keeps
--   them in its hash field 'alloc', an iteration in its record's start field, as they came. Then followed
--   (i, entry, start) triples: the follower of the i-th finished task (1-based) started on its cores.
-- Returns {entry, spec, entry, spec...} for the adopted and newly claimed entries that are still wanted; spec
-- is '' when the previous entry was of the same job. Claimed entries stay SCHEDULED until reported started.
-- Among them, '?TASK ENTRY', spec: the follower of TASK (handed out or started here), and '!ENTRY', '': a
-- follower started here that may not run (its job was canceled meanwhile, or its parent's end was not taken).
--
-- Followers: a job (of one task, exact cores, no nodes, GPUs or memory asked) whose last dependency is a job
-- this executor runs is named to it with that job, and the executor may start it on the same cores the moment
-- the dependency succeeds, reporting both in the next call: a chain of dependent jobs then never waits for a
-- round trip between two of its jobs. The follower's start is taken here only after its dependency's end, in
-- the same call, as if placed then: Redis never shows it running before its dependency succeeded.
-- A report about an entry no longer in our running list (we were declared dead and it was requeued) is ignored:
-- that is the fencing that keeps a task from completing twice.
local eid, want = ARGV[1], tonumber(ARGV[3])
NOW = ARGV[2]
local n_adopt, n_started, n_finished = tonumber(ARGV[4]), tonumber(ARGV[5]), tonumber(ARGV[6])
local n_followed = tonumber(ARGV[8])
local ready, running = K_ready(eid), K_running(eid)
local out, credit, last, finished = {}, 0, nil, 0
local gcredit = 0  -- GPUs given back (entries 'task|c+g|k|a')

-- The job's state, `field` of its hash read in the same call, and an iteration's record state, while the job
-- (and the iteration) is not final; nil once it is.
-- Also whether jobs depend on it ('kids').
local function live(name, it, field)
  local h = redis.call('HMGET', K_job(name), 'state', field or 'state', 'kids')
  if not h[1] or FINAL[h[1]] then return nil end
  local rs = it ~= nil and record_state(redis.call('HGET', K_its(name), it)) or nil
  if FINAL[rs or ''] then return nil end
  return h[1], h[2], rs, h[3]
end

-- The follower of job `name` about to run here on c cores (see the top), named to the executor: '?name entry'
-- and its spec go out; and, depth 2, the follower's own, so that a chain need not wait for the answer to the
-- report of a follower's start before the next can follow it. The child's 'hint' field names the executor, so
-- that a cancel of it reaches us.
local FAN_OUT = 64   -- a job with more dependents is a fan-out, not a chain: not worth reading them all here
local function name_follower(name, c, depth)
  if redis.call('SCARD', K_children(name)) > FAN_OUT then return end
  for _, m in ipairs(redis.call('SMEMBERS', K_children(name))) do
    local rel, child = string.match(m, '^([^|]*)|(.*)$')
    if rel == 'w' then
      local h = redis.call('HMGET', K_job(child), 'state', 'deps', 'pdeps', 'n', 'req', 'attempts', 'spec', 'kids')
      if h[1] == 'QUEUED' and h[2] == '1' and (h[3] or '0') == '0' and not h[4] then
        local cmin, cmax, kmin, _, g, mem = parse_req(h[5])
        if cmin == cmax and cmin <= c and kmin == 0 and g == 0 and mem == 0 then
          redis.call('HSET', K_job(child), 'hint', eid)
          out[#out + 1] = '?' .. name .. ' ' .. child .. '|' .. str(cmin) .. '|0|' .. (h[6] or '0')
          out[#out + 1] = h[7]
          if depth > 1 and h[8] then name_follower(child, cmin, depth - 1) end
          return
        end
      end
    end
  end
end

local function offer(entry)  -- a claimed entry: hand it out, or drop it if its job ended meanwhile
  local spec, name = placed_specs[entry], placed_names[entry]   -- placed by this very call: live, spec read
  local kids = placed_kids[entry]
  if not spec then
    local tid, c, k, _, g = parse_entry(entry)
    local it, st
    name, it = split_tid(tid)
    st, spec, _, kids = live(name, it, name ~= last and 'spec' or nil)
    if not st then
      redis.call('LREM', running, 1, entry)
      credit = credit + c
      if g > 0 then gcredit = gcredit + entry_gpus(g, k) end
      return
    end
    if it ~= nil then kids = nil end
  end
  out[#out + 1] = entry
  out[#out + 1] = name ~= last and spec or ''   -- the spec goes out once per run of entries of one job
  last = name
  if kids then
    local _, c, k, _, g = parse_entry(entry)
    if k == 0 and g == 0 then name_follower(name, c, 2) end
  end
end

-- Fencing: an executor declared dead (or forgotten by a Redis that lost its data) gets nothing, and an adopted
-- entry counts only while it is still in our running list (a death may have taken it back after BLMOVE).
local est = redis.call('HGET', K_exec(eid), 'state')
local alive = est ~= false and est ~= 'DEAD' and est ~= 'LEFT'

-- A follower the executor started as its dependency (the finished entry just taken, `ok` if it counted) ended:
-- its start counts only if that end made it ready (and nothing else ended it): then it runs here, as if placed
-- and started now. Else the executor is told to stop it ('!entry'): Redis never saw it run.
-- The same report sent again (the answer to the call that took it was lost: a connection cut, Redis killed after
-- writing it) finds its follower's start taken already: it runs here, and stopping it would leave it EXECUTING in
-- Redis with no process until the executor's reconcile gave it back, to run again.
local function followed(entry, t0, ok)
  local tid, c = parse_entry(entry)
  local jk = K_job(tid)
  local t, cores = split_start(t0)
  local h = redis.call('HMGET', jk, 'state', 'executor', 'start', 'kids')
  if ok and alive and h[1] == 'READY' and redis.call('LREM', K_pending, -1, tid) == 1 then
    redis.call('HSET', jk, 'state', 'EXECUTING', 'start', t, 'executor', eid, 'alloc', cores)
    redis.call('RPUSH', running, entry)
    credit = credit - c
    if h[4] then name_follower(tid, c, 2) end
  elseif not ok and alive and h[1] == 'EXECUTING' and h[2] == eid and h[3] == t
      and redis.call('LPOS', running, entry) then
    if h[4] then name_follower(tid, c, 2) end   -- (named in the answer that was lost)
  else
    out[#out + 1] = '!' .. entry
    out[#out + 1] = ''
  end
end

local b = 9
local follows = {}   -- finished index -> {entry, start} of the follower started on its cores
local fb = b + n_adopt + 2 * n_started + 7 * n_finished
for i = 1, n_followed do
  follows[tonumber(ARGV[fb])] = {ARGV[fb + 1], ARGV[fb + 2]}
  fb = fb + 3
end
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
  local ok = false
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
      ok = true
    end
  end
  local f = follows[i]
  if f then
    propagate()   -- the end reaches the follower first
    followed(f[1], f[2], ok)
    n_started = n_started + 1
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
