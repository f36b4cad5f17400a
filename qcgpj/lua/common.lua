-- Shared functions of every qcgpj script; store.py prepends the key prelude and this file to each script.
-- Records of a task: "STATE|exit|executor|start|end|attempt|message".
local FINAL = {SUCCEED = true, FAILED = true, CANCELED = true, OMITTED = true}
local NOW = 0  -- set by each script from its ARGV

-- Counters read by `top` at a cost that does not grow with the jobs (keys stats, rate, failures): tallied in
-- Lua while a script runs and written once, by propagate(), so a batch of reports costs a few commands more.
local RATE_SLOTS, FAILURES_KEPT = 64, 50   -- 64 s of per-second counts: the last minute and the current second
local tally, ran, failed_now, ended = {}, 0, 0, 0   -- ended: jobs gone final, off the 'active' count at the end

local function count_final(state, k)
  tally[state] = (tally[state] or 0) + k
  if state == 'SUCCEED' or state == 'FAILED' then ran = ran + k end
end

local function note_failure(tid, t1, eid, exit, msg)
  redis.call('LPUSH', K_failures, table.concat({tid, t1 or NOW, eid or '', exit or '', msg or ''}, '|'))
  failed_now = failed_now + 1
end

local function count_whole(jk, state)  -- a whole job ended without its tasks: its unfinished tasks end with it
  local h = redis.call('HMGET', jk, 'n', 'done')
  count_final(state, h[1] and (tonumber(h[1]) - tonumber(h[2] or '0')) or 1)
end

local function flush_counts()
  for st, k in pairs(tally) do redis.call('HINCRBY', K_stats, st, k) end
  tally = {}
  if ended > 0 then redis.call('INCRBY', K_active, -ended); ended = 0 end   -- INCRBY: in the minimal ACL
  if failed_now > 0 then redis.call('LTRIM', K_failures, 0, FAILURES_KEPT - 1); failed_now = 0 end
  if ran == 0 then return end
  local sec = math.floor(tonumber(NOW))
  local slot = sec % RATE_SLOTS
  if tonumber(redis.call('HGET', K_rate, 's' .. slot)) == sec then
    redis.call('HINCRBY', K_rate, 'c' .. slot, ran)
  else
    redis.call('HSET', K_rate, 's' .. slot, sec, 'c' .. slot, ran)
  end
  ran = 0
end

local function split_tid(tid)
  local name, it = string.match(tid, '^(.-):(%d+)$')
  if name then return name, tonumber(it) end
  return tid, nil
end

local function parse_entry(entry)  -- "task|cores|nodes|attempt", cores "c+g" with g GPUs per node
  local tid, c, g, k, a = string.match(entry, '^(.*)|(%d+)%+?(%d*)|(%d+)|(%d+)$')
  return tid, tonumber(c), tonumber(k), tonumber(a), tonumber(g) or 0
end

local function entry_gpus(g, k)  -- GPUs an entry holds: g on each of its nodes (one node when k is 0)
  return g * math.max(k, 1)
end

local function record(state, exit, eid, t0, t1, att, msg)
  return table.concat({state, exit or '', eid or '', t0 or '', t1 or '', att or 0, msg or ''}, '|')
end

local function record_state(rec)
  if not rec then return nil end
  return string.match(rec, '^([^|]*)')
end

local function emit(kind, data)
  redis.call('XADD', K_events, 'MAXLEN', '~', 10000, '*', 'type', kind, 'data', data)
end

local function push_many(key, items)
  for i = 1, #items, 1000 do
    redis.call('RPUSH', key, unpack(items, i, math.min(i + 999, #items)))
  end
end

-- Work list of the propagation: {op, name, it, msg}; an explicit stack keeps deep chains off the C stack.
local work = {}

-- A function library (FUNCTION LOAD) keeps its chunk's locals from one call to the next: each call starts clean.
-- entry -> its job's spec and name (and whether jobs depend on it), for the entries place() put on an executor in
-- this call
local placed_specs, placed_names, placed_kids = {}, {}, {}

local function begin_call()
  tally, ran, failed_now, ended, work = {}, 0, 0, 0, {}
  placed_specs, placed_names, placed_kids = {}, {}, {}
end

local function make_ready(name, pdeps)  -- pdeps: its per-iteration parent count, if already read
  local jk = K_job(name)
  redis.call('HSET', jk, 'state', 'READY')
  pdeps = tonumber(pdeps or redis.call('HGET', jk, 'pdeps') or '0')
  if pdeps == 0 then
    redis.call('RPUSH', K_pending, name)
    return
  end
  local waiting = redis.call('HGETALL', K_itwait(name))
  for i = 1, #waiting, 2 do
    if tonumber(waiting[i + 1]) >= pdeps then
      redis.call('RPUSH', K_pending, name .. ':' .. waiting[i])
      redis.call('HDEL', K_itwait(name), waiting[i])
    end
  end
end

local function dec_deps(name)
  local jk = K_job(name)
  local left = redis.call('HINCRBY', jk, 'deps', -1)
  if left > 0 then return end
  local h = redis.call('HMGET', jk, 'state', 'pdeps')
  if h[1] == 'QUEUED' then make_ready(name, h[2] or '0') end
end

local function parent_iteration_ok(name, it)  -- one per-iteration parent of name:it succeeded
  local jk = K_job(name)
  local h = redis.call('HMGET', jk, 'state', 'pdeps', 'deps')
  if not h[1] or FINAL[h[1]] then return end
  local got = redis.call('HINCRBY', K_itwait(name), it, 1)
  if got >= tonumber(h[2]) and tonumber(h[3] or '0') <= 0 and h[1] ~= 'QUEUED' then
    redis.call('HDEL', K_itwait(name), it)
    redis.call('RPUSH', K_pending, name .. ':' .. it)
  end
end

-- Why every iteration of a job was omitted: its first iteration's cause ('dependency NAME ended STATE'), which
-- alone says it for a job of one iteration; for more, a count before it (their causes may differ: one read, not n).
local function all_omitted_why(name, it0, n)
  local rec = redis.call('HGET', K_its(name), it0)
  local first = rec and string.match(rec, '^[^|]*|[^|]*|[^|]*|[^|]*|[^|]*|[^|]*|(.*)$') or ''
  if n == 1 or first == '' then return first end
  return 'all ' .. n .. ' iterations omitted, the first because ' .. first
end

-- The state of an iterative job once its last iteration ended (a job canceled whole is CANCELED at once, in
-- cancel.lua), and its message. As in QCG-PilotJob, any iteration that did not succeed (failed, canceled, omitted)
-- makes it FAILED: its work is not all done, and CANCELED would tell its user that someone canceled the job.
-- OMITTED only when no iteration ran at all for that reason, with the cause of its first iteration (each has a
-- record then: omit_iteration wrote it), so `run`'s summary and `info` say why as for a job omitted whole.
local function final_of_iterations(jk, name)
  local h = redis.call('HMGET', jk, 'n', 'n_SUCCEED', 'n_FAILED', 'n_CANCELED', 'n_OMITTED', 'it0')
  local n, ok = tonumber(h[1]), tonumber(h[2] or '0')
  if ok == n then return 'SUCCEED', '' end
  local counts, why = {tonumber(h[3] or '0'), tonumber(h[4] or '0'), tonumber(h[5] or '0')}, {}
  if counts[3] == n then return 'OMITTED', all_omitted_why(name, tonumber(h[6] or '0'), n) end
  for i, word in ipairs({'failed', 'canceled', 'omitted'}) do
    if counts[i] > 0 then why[#why + 1] = counts[i] .. ' ' .. word end
  end
  return 'FAILED', table.concat(why, ', ') .. ' of ' .. n .. ' iterations'
end

local function split_start(t)  -- 'time@cores' -> time, cores ('' when none came)
  local t0, cores = string.match(t, '^([^@]*)@(.*)$')
  if t0 then return t0, cores end
  return t, ''
end

-- A task (job or iteration) reached a final state: record it and queue the consequences. t0: its start, with the
-- cores it got ('time@cores', from a report): a job keeps them in 'alloc', an iteration in its record, as they came.
-- childless: the caller already knows that no job depends on this one (saves reading it again)
-- usage: 'user s,system s,max RSS KiB' of a process that ran (from sync), else nil or ''; an iteration's rides on
-- its record's attempt field ('attempt,usage'), since the message, last, may hold any character.
local function task_final(name, it, state, exit, eid, t0, t1, att, msg, childless, usage)
  local jk = K_job(name)
  if it == nil then
    local t, cores = split_start(t0 or '')
    if cores ~= '' then   -- the cores it got, in the same write
      redis.call('HSET', jk, 'state', state, 'exit', exit or '', 'start', t, 'end', t1 or NOW, 'message', msg or '',
                 'usage', usage or '', 'alloc', cores)
    else
      redis.call('HSET', jk, 'state', state, 'exit', exit or '', 'start', t, 'end', t1 or NOW, 'message', msg or '',
                 'usage', usage or '')
    end
    count_final(state, 1)
    if state == 'FAILED' then note_failure(name, t1, eid, exit, msg) end
    if childless then ended = ended + 1   -- all on_job_final would do
    else work[#work + 1] = {'job_final', name, nil, state, childless} end
    return
  end
  if usage and usage ~= '' then att = (att or 0) .. ',' .. usage end
  redis.call('HSET', K_its(name), it, record(state, exit, eid, t0, t1 or NOW, att, msg))
  redis.call('HINCRBY', jk, 'n_' .. state, 1)
  count_final(state, 1)
  if state == 'FAILED' then note_failure(name .. ':' .. it, t1, eid, exit, msg) end
  local done = redis.call('HINCRBY', jk, 'done', 1)
  if redis.call('HGET', jk, 'itch') then work[#work + 1] = {'it_final', name, it, state} end
  if done >= tonumber(redis.call('HGET', jk, 'n')) then
    local st = redis.call('HGET', jk, 'state')
    if not FINAL[st] then
      local fin, why = final_of_iterations(jk, name)
      redis.call('HSET', jk, 'state', fin, 'end', NOW, 'message', why)
      work[#work + 1] = {'job_final', name, nil, fin}
    end
  end
end

-- Why a job or an iteration is OMITTED, in the same words whichever path omits it (its dependency ending, or a
-- submit after the dependency ended; a whole job or one iteration): dep names the job or iteration, state its end.
local function omitted_why(dep, state)
  return 'dependency ' .. dep .. ' ended ' .. state
end

-- How iteration it of a final job ended: its record's state, or without a final record its job's (jstate): an
-- iterative job canceled, omitted or failed whole keeps no record for each iteration.
local function iteration_end(name, it, jstate)
  local rs = record_state(redis.call('HGET', K_its(name), it))
  if rs and FINAL[rs] then return rs end
  return jstate
end

local function omit_job(name, why)
  local jk = K_job(name)
  local st = redis.call('HGET', jk, 'state')
  if not st or FINAL[st] then return end
  redis.call('HSET', jk, 'state', 'OMITTED', 'end', NOW, 'message', why)
  count_whole(jk, 'OMITTED')
  work[#work + 1] = {'job_final', name, nil, 'OMITTED'}
end

local function omit_iteration(name, it, why)
  local st = redis.call('HGET', K_job(name), 'state')
  if not st or FINAL[st] then return end
  if record_state(redis.call('HGET', K_its(name), it)) then
    local rs = record_state(redis.call('HGET', K_its(name), it))
    if FINAL[rs] then return end
  end
  task_final(name, it, 'OMITTED', nil, nil, nil, NOW, 0, why)
end

-- Iterations from..last of a job (child) that waits per iteration on parent, which ended pstate: each whose parent
-- iteration did not succeed is omitted. OMIT_STEP of them per call: the rest goes on K_omitting, for the
-- InputQueue's next pass (place.lua), so that a job of a million iterations does not hold Redis for seconds
-- (100,000 took 2.1 s in one call). Meanwhile the child is not final, as while its iterations run.
local OMIT_STEP = 1000
local function omit_iterations(child, parent, pstate, from, last)
  local upto = math.min(last, from + OMIT_STEP - 1)
  for it = from, upto do
    local rs = iteration_end(parent, it, pstate)
    if rs ~= 'SUCCEED' then omit_iteration(child, it, omitted_why(parent .. ':' .. it, rs)) end
  end
  if upto < last then
    redis.call('RPUSH', K_omitting, table.concat({child, parent, pstate,
      redis.call('HGET', K_job(child), 'created') or '', string.format('%d', upto + 1), string.format('%d', last)}, '|'))
  end
end

-- childless: true, false (it has children) or nil (not known yet: read it)
local function on_job_final(name, state, childless)
  ended = ended + 1
  if childless == nil then childless = not redis.call('HGET', K_job(name), 'kids') end
  if childless then return end  -- no job depends on it (the common case: skip the children set)
  local why = omitted_why(name, state)
  for _, m in ipairs(redis.call('SMEMBERS', K_children(name))) do
    local rel, child = string.match(m, '^([^|]*)|(.*)$')
    if rel == 'w' then
      if state == 'SUCCEED' then dec_deps(child) else omit_job(child, why) end
    elseif rel == 'p' then
      if state ~= 'SUCCEED' then
        local h = redis.call('HMGET', K_job(name), 'n', 'it0')
        local n, it0 = tonumber(h[1] or '0'), tonumber(h[2] or '0')
        omit_iterations(child, name, state, it0, it0 + n - 1)
      end
    else
      local k = string.sub(rel, 2)
      local rs = iteration_end(name, k, state)
      if rs ~= 'SUCCEED' then omit_job(child, omitted_why(name .. ':' .. k, rs)) end
    end
  end
end

local function on_iteration_final(name, it, state)
  for _, m in ipairs(redis.call('SMEMBERS', K_children(name))) do
    local rel, child = string.match(m, '^([^|]*)|(.*)$')
    if rel == 'p' then
      if state == 'SUCCEED' then parent_iteration_ok(child, it)
      else omit_iteration(child, it, omitted_why(name .. ':' .. it, state)) end
    elseif rel == 'i' .. it then
      if state == 'SUCCEED' then dec_deps(child)
      else omit_job(child, omitted_why(name .. ':' .. it, state)) end
    end
  end
end

local function propagate()
  while #work > 0 do
    local w = table.remove(work)
    if w[1] == 'job_final' then on_job_final(w[2], w[4], w[5]) else on_iteration_final(w[2], w[3], w[4]) end
  end
  flush_counts()
end

-- ---------------------------------------------------------------- placement
-- Executors are read from the credit index (K_free: ALIVE executors by their 'free'), a page at a time in order
-- of credit, and only as far as a pick needs: an executor's sync places on itself and the few with the most
-- credit, so its cost does not grow with the number of executors. The index changes only through add_credit,
-- so it is stable while a script places.
local PAGE = 16

-- The executor's credit, in its hash and in the index (if indexed); gdelta: its free GPUs ('gfree'), if any moved.
local function add_credit(eid, delta, gdelta)
  local f = redis.call('HINCRBY', K_exec(eid), 'free', delta)
  redis.call('ZADD', K_free, 'XX', f, eid)
  if gdelta and gdelta ~= 0 then redis.call('HINCRBY', K_exec(eid), 'gfree', gdelta) end
end

local function index_executor(eid)  -- it joined: placement may use it
  redis.call('ZADD', K_free, redis.call('HGET', K_exec(eid), 'free') or 0, eid)
end

local function count_shape(eid, delta)  -- a live executor joined (1) or left (-1): K_shapes counts them
  local h = redis.call('HMGET', K_exec(eid), 'total', 'nnodes', 'maxnode', 'gpus', 'gmax', 'mem')
  if not h[1] then return end
  local shape = h[1] .. '|' .. h[2] .. '|' .. h[3] .. '|' .. (h[4] or '0') .. '|' .. (h[5] or '0') .. '|' ..
    (h[6] or '0')
  if redis.call('HINCRBY', K_shapes, shape, delta) <= 0 then redis.call('HDEL', K_shapes, shape) end
end

local function rebuild_index()  -- live executors that joined before the index existed (an upgrade)
  for _, e in ipairs(redis.call('SMEMBERS', K_live)) do
    if redis.call('HGET', K_exec(e), 'state') == 'ALIVE' then index_executor(e) end
  end
end

-- ex.list: the loaded executors that still have credit; ex.bound: no executor not loaded yet has more credit
-- than this (0: all loaded); ex.all: every executor loaded (touched by this pass).
local function loaded(id, h)  -- an executor as placement sees it, from its hash fields (see load_page)
  return {id = id, free = tonumber(h[2] or '0'), maxnode = tonumber(h[3]), nnodes = tonumber(h[4]),
          total = tonumber(h[5]), out = {}, used = 0, gfree = tonumber(h[6] or '0'), gmax = tonumber(h[7] or '0'),
          mem = tonumber(h[8] or '0'), gused = 0}
end

local function load_page(ex)
  local got = redis.call('ZREVRANGEBYSCORE', K_free, '+inf', 1, 'WITHSCORES', 'LIMIT', ex.offset, PAGE)
  -- an index missing while executors live (an upgrade) is rebuilt by the next pass not of a round trip (whose
  -- own executor may be the only one with credit, still 0 in the index: no EXISTS on every round trip)
  if #got == 0 and ex.offset == 0 and not ex.own and redis.call('EXISTS', K_free) == 0 and
      redis.call('SCARD', K_live) > 0 then
    rebuild_index()
    got = redis.call('ZREVRANGEBYSCORE', K_free, '+inf', 1, 'WITHSCORES', 'LIMIT', 0, PAGE)
  end
  ex.offset = ex.offset + #got / 2
  ex.bound = #got == 2 * PAGE and tonumber(got[#got]) or 0
  for i = 1, #got, 2 do
    local id = got[i]
    if id ~= ex.own then   -- the round trip's own executor is loaded already, with its credit given back
      local h = redis.call('HMGET', K_exec(id), 'state', 'free', 'maxnode', 'nnodes', 'total', 'gfree', 'gmax',
                                  'mem')
      if h[1] ~= 'ALIVE' then
        redis.call('ZREM', K_free, id)   -- left without its entry removed: heal (the next page moves up by one)
        ex.offset = ex.offset - 1
      elseif tonumber(h[2] or '0') > 0 then
        local e = loaded(id, h)
        ex.list[#ex.list + 1] = e
        ex.all[#ex.all + 1] = e
      end
    end
  end
end

-- own: {id, delta, gdelta}, the executor of a round trip that gave back delta cores (gdelta GPUs), not yet
-- written: it is placed on with that credit and its credit is written once, with what it got (net 0 when a core
-- came back and went to the next task: no write at all).
local function load_executors(own)
  local ex = {list = {}, all = {}, offset = 0, bound = 0}
  if own then
    local h = redis.call('HMGET', K_exec(own.id), 'state', 'free', 'maxnode', 'nnodes', 'total', 'gfree', 'gmax',
                         'mem')
    if h[1] == 'ALIVE' then
      local e = loaded(own.id, h)
      e.free, e.gfree, e.delta, e.gdelta = e.free + own.delta, e.gfree + own.gdelta, own.delta, own.gdelta
      ex.own, ex.all[1] = own.id, e
      if e.free > 0 then ex.list[1] = e end
    else
      add_credit(own.id, own.delta, own.gdelta)   -- draining: the credit, and no work
    end
  end
  load_page(ex)
  return ex
end

-- "cmin|cmax|kmin|kmax[|gpus|mem]": cmax 0 = no upper bound, k 0 = no node request; GPUs and MiB per node
-- Parsed once per distinct request in a call (and, in a function library, across calls): jobs mostly share a few.
local reqs, nreqs = {}, 0
local function parse_req(req)
  req = req or '1|1|0|0'
  local r = reqs[req]
  if not r then
    local a, b, c, d, g, m = string.match(req, '^(%d+)|(%d+)|(%d+)|(%d+)|?(%d*)|?(%d*)$')
    r = {tonumber(a), tonumber(b), tonumber(c), tonumber(d), tonumber(g) or 0, tonumber(m) or 0}
    if nreqs >= 256 then reqs, nreqs = {}, 0 end
    reqs[req], nreqs = r, nreqs + 1
  end
  return r[1], r[2], r[3], r[4], r[5], r[6]
end

-- Whether executor e could hold g GPUs on each of k nodes (one when k is 0) and m MiB per node, now (gfree).
local function crs_ok(e, g, m, k)
  return g <= e.gmax and g * math.max(k, 1) <= e.gfree and m <= e.mem
end

-- The executor with the most credit that can run the task, among those loaded; returns executor, cores, nodes.
-- g, m: nodeCrs (GPUs, MiB per node); 0 for most tasks, which skip their checks.
local function pick_loaded(ex, cmin, cmax, kmin, kmax, g, m)
  local best, bc, bk = nil, 0, 0
  local crs = (g or 0) > 0 or (m or 0) > 0
  for _, e in ipairs(ex.list) do
    local c, k = 0, 0
    if kmin > 0 then
      -- numCores is per node when nodes are requested (QCG-PilotJob's convention)
      k = math.min(kmax > 0 and kmax or e.nnodes, e.nnodes)
      if k >= kmin then
        local per = cmax > 0 and math.min(cmax, e.maxnode) or e.maxnode
        if per >= cmin and k * cmin <= e.free then
          per = math.min(per, math.floor(e.free / k)); c = k * per
        end
      end
    else
      -- a range without nodes stays on one node when its min fits one: its process runs on one node
      local cap = math.min(e.free, (crs or cmin <= e.maxnode) and e.maxnode or e.total)
      c = cmax > 0 and math.min(cmax, cap) or cap
      if c < cmin then c = 0 end
    end
    if crs and c > 0 and not crs_ok(e, g, m, k) then c = 0 end
    if c > 0 and (best == nil or e.free > best.free) then best, bc, bk = e, c, (kmin > 0 and k or 0) end
  end
  return best, bc, bk
end

-- The executor with the most credit that can run the task; more pages are read while one not loaded yet might
-- have more credit than the best loaded, and enough for the task (the least credit that could fit it).
local function pick(ex, cmin, cmax, kmin, kmax, g, m)
  local least = kmin > 0 and kmin * cmin or math.max(cmin, 1)
  while true do
    local best, bc, bk = pick_loaded(ex, cmin, cmax, kmin, kmax, g, m)
    if ex.bound < least or (best and best.free >= ex.bound) then return best, bc, bk end
    load_page(ex)
  end
end

-- Whether a task could ever run on an executor of one of these shapes (caps: total, nnodes, maxnode, gpus, gmax,
-- mem), whatever their free cores: the InputQueue's unplaceable check and an idle executor's (idle.lua).
local function crs_fit(c, g, m, kmin)  -- GPUs and memory per node (nodeCrs) an idle executor could give
  return g <= c.gmax and g * math.max(kmin, 1) <= c.gpus and m <= c.mem
end

local function fits(caps, cmin, kmin, g, m)  -- as pick() would place it on an idle executor
  for _, c in ipairs(caps) do
    if (g == 0 and m == 0) or crs_fit(c, g, m, kmin) then
      if kmin > 0 then
        if kmin <= c.nnodes and cmin <= c.maxnode and kmin * cmin <= c.total then return true end
      elseif cmin <= ((g > 0 or m > 0) and c.maxnode or c.total) then
        return true
      end
    end
  end
  return false
end

local numstr = {}   -- small integers as strings: a table read, not a number formatted for every entry
local function str(n)
  local s = numstr[n]
  if not s then
    s = tostring(n)
    if n >= 0 and n < 4096 then numstr[n] = s end
  end
  return s
end

local function assign(ex, e, tid, c, k, att, g, name, spec)
  local entry
  if g and g > 0 then
    entry = tid .. '|' .. str(c) .. '+' .. str(g) .. '|' .. str(k) .. '|' .. str(att)
    e.gfree, e.gused = e.gfree - entry_gpus(g, k), e.gused + entry_gpus(g, k)
  else
    entry = tid .. '|' .. str(c) .. '|' .. str(k) .. '|' .. str(att)
  end
  e.out[#e.out + 1] = entry
  placed_specs[entry], placed_names[entry] = spec, name   -- claimed in this call (sync): no second read of the job
  e.free = e.free - c
  e.used = e.used + c
  if e.free <= 0 then
    for i, x in ipairs(ex.list) do if x == e then table.remove(ex.list, i) break end end
  end
  return entry
end

local function has_room(ex)  -- some executor, loaded or not, still has credit
  return #ex.list > 0 or ex.bound > 0
end

local function flush_placement(ex)
  for _, e in ipairs(ex.all) do
    if #e.out > 0 then push_many(K_ready(e.id), e.out) end
    local d, gd = (e.delta or 0) - e.used, (e.gdelta or 0) - e.gused
    if d ~= 0 or gd ~= 0 then add_credit(e.id, d, gd) end
  end
end

local function iteration_attempt(name, it, retried)
  if not retried then return 0 end
  return tonumber(redis.call('HGET', K_att(name), it) or '0')
end

-- A job the InputQueue had flagged as fitting no live executor was placed after all: the flag goes.
local function placeable_again(jk)
  redis.call('HDEL', jk, 'unplaceable')
  redis.call('HSET', jk, 'message', '')
end

-- QCG-PilotJob's maximum-iters share of iteration j (0-based) of n out of known cores or nodes: as few rounds as
-- least allows, the earlier rounds one iteration larger, and in a round of m iterations known // m each, one more
-- for its last known % m. jobspec.maximum_iters_share is the same; submit sized the job's req to the least share.
local function maximum_iters_share(known, least, n, j)
  local rounds = math.ceil(n / math.max(math.floor(known / least), 1))
  local q, big = math.floor(n / rounds), n % rounds
  local m, pos
  if j < big * (q + 1) then m, pos = q + 1, j % (q + 1) else m, pos = q, (j - big * (q + 1)) % q end
  if pos >= m - known % m then return math.floor(known / m) + 1 end
  return math.floor(known / m)
end

-- The request of iteration it of a job whose 'spread' ("c|known|least", "k|..." for nodes) gives its iterations
-- unequal shares: its own share as an exact count of cores (or nodes); else the job's request.
local function iteration_req(spread, it, it0, n, cmin, cmax, kmin, kmax)
  if not spread then return cmin, cmax, kmin, kmax end
  local what, known, least = string.match(spread, '^(%a)|(%d+)|(%d+)$')
  local size = maximum_iters_share(tonumber(known), tonumber(least), tonumber(n), it - tonumber(it0))
  if what == 'k' then return cmin, cmax, size, size end
  return size, size, kmin, kmax
end

-- One pending entry (at position pos of the list): placed if it fits, its tasks as far as the budget allows;
-- returns the count placed so far. Entries to take off the list go to drop.
local function place_entry(ex, entry, pos, budget, placed, drop)
  local name, it = split_tid(entry)
  local jk = K_job(name)
  local h = redis.call('HMGET', jk, 'state', 'req', 'n', 'it0', 'next', 'attempts', 'retried', 'icancel',
    'unplaceable', 'spec', 'spread', 'kids')
  local cmin, cmax, kmin, kmax, g, m = parse_req(h[2])
  if not h[1] or FINAL[h[1]] then
    drop[#drop + 1] = {pos, entry}
  elseif it ~= nil then
    if h[8] and FINAL[record_state(redis.call('HGET', K_its(name), it)) or ''] then
      drop[#drop + 1] = {pos, entry}
    else
      local c0, c1, k0, k1 = iteration_req(h[11], it, h[4], h[3], cmin, cmax, kmin, kmax)
      local e, c, k = pick(ex, c0, c1, k0, k1, g, m)
      if e then
        assign(ex, e, entry, c, k, iteration_attempt(name, it, h[7]), g, name, h[10]); placed = placed + 1
        drop[#drop + 1] = {pos, entry}
        if h[1] == 'READY' then redis.call('HSET', jk, 'state', 'SCHEDULED'); h[1] = 'SCHEDULED' end
        if h[9] then placeable_again(jk); h[9] = false end
      end
    end
  elseif h[3] then
    local nxt, last = tonumber(h[5]), tonumber(h[4]) + tonumber(h[3]) - 1
    local start = nxt
    while nxt <= last and placed < budget do
      if h[8] and FINAL[record_state(redis.call('HGET', K_its(name), nxt)) or ''] then
        nxt = nxt + 1
      else
        local c0, c1, k0, k1 = iteration_req(h[11], nxt, h[4], h[3], cmin, cmax, kmin, kmax)
        local e, c, k = pick(ex, c0, c1, k0, k1, g, m)
        if not e then break end
        assign(ex, e, name .. ':' .. nxt, c, k, iteration_attempt(name, nxt, h[7]), g, name, h[10])
        placed = placed + 1; nxt = nxt + 1
      end
    end
    if nxt ~= start then
      redis.call('HSET', jk, 'next', nxt)
      if h[1] == 'READY' then redis.call('HSET', jk, 'state', 'SCHEDULED') end
      if h[9] then placeable_again(jk) end
    end
    if nxt > last then drop[#drop + 1] = {pos, entry} end
  else
    local e, c, k = pick(ex, cmin, cmax, kmin, kmax, g, m)
    if e then
      local placed_entry = assign(ex, e, name, c, k, tonumber(h[6] or '0'), g, name, h[10]); placed = placed + 1
      if h[12] then placed_kids[placed_entry] = true end
      drop[#drop + 1] = {pos, entry}
      redis.call('HSET', jk, 'state', 'SCHEDULED', 'executor', e.id)
      if h[9] then placeable_again(jk) end
    end
  end
  return placed
end

-- Place ready work on executors by credit: scan at most `scan` pending entries, place at most `budget` tasks.
-- Backfill: an entry that does not fit yet stays, later (smaller) entries may still be placed. The list is read
-- a page at a time (8, 32, 128... entries), only as far as the scan goes on: a round trip that gave back one core
-- reads a few entries, not 50 (nothing changes the list until the pass ends, so the pages are one read of it).
local function place(scan, budget, own)
  local ex = load_executors(own)   -- first: while every executor is full (most passes in a long run) the
  if not has_room(ex) then         -- pending list is not read at all (the InputQueue's pass reads 1,000)
    flush_placement(ex)
    return 0
  end
  local placed, drop, pos, size = 0, {}, 0, 8
  while pos < scan and has_room(ex) and placed < budget do
    local entries = redis.call('LRANGE', K_pending, pos, math.min(pos + size, scan) - 1)
    for _, entry in ipairs(entries) do
      if not has_room(ex) or placed >= budget then break end
      pos = pos + 1
      placed = place_entry(ex, entry, pos, budget, placed, drop)
    end
    if #entries < size then break end
    size = size * 4
  end
  -- Placed entries are mostly a prefix of the list: trim it in one call, remove the others one by one.
  local prefix = 0
  while prefix < #drop and drop[prefix + 1][1] == prefix + 1 do prefix = prefix + 1 end
  if prefix > 0 then redis.call('LTRIM', K_pending, prefix, -1) end
  for j = prefix + 1, #drop do redis.call('LREM', K_pending, 1, drop[j][2]) end
  flush_placement(ex)
  return placed
end
