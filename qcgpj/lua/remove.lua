-- Housekeeping. ARGV[1] is the mode.
-- 'jobs', now, how, names...: remove final jobs, every key of each and their share of the counters in
--   `stats`. A job that is not final, or on which a job that is not final yet depends, is kept. how: 'check'
--   (remove nothing), 'strict' (nothing is removed if one name cannot be: {'ERR', why, name, detail} comes
--   back) or 'skip'. Otherwise one (status, detail) pair per name: status 'removed' (or 'ok' for a check),
--   'unknown', 'notfinal', 'stopping' (canceled, its process not reported ended yet) or 'dependants'; a removed
--   Python call's detail is its rq id(s) (rq_calls), for the caller to delete rq's keys. The names
--   stay in `jobs`: the caller takes those of its batches off with 'unlist' (one LREM per job would scan the
--   list each time).
-- 'executors', now, retention: forget executors that left or died at least `retention` seconds ago.
-- 'unlist', now, within, names...: take removed jobs off `jobs`, the first entry of each name (a job of the same
--   name submitted since then comes later), unless it is the only entry of a job that exists; returns how many.
--   Costs the part of the list up to the last entry taken off, not the whole list; no further than index
--   `within` ('': the whole list), where the caller read the names (a name taken off meanwhile by another
--   removal is then not looked for to the end of the list). In a script, not
--   WATCH/MULTI: the minimal ACL has neither, and past maxmemory the list's LTRIM comes before its LPUSH.
-- 'listed', now, start, stop: the job list's names from index start to stop (LRANGE's), and those of them whose
--   job is gone (a removal under way, between deleting its jobs and taking their names off): {names, gone}.
--   Read-only; in one call so that both are of the same moment.
local mode = ARGV[1]
NOW = ARGV[2]
local UNLIST_WINDOW = 1000   -- names of the job list 'unlist' reads per LRANGE

-- A job canceled while placed or running is final at once, but its entries stay on an executor's lists until
-- the killed process is reported. A placed entry (ready list) goes with the job, its cores back to the executor's
-- credit; a claimed one (running list) keeps the job ('stopping') until its report came: else that late report,
-- or a claim, would act on a new job of the same name, whose entries look the same.
local held = nil   -- job name -> executor holding an entry of it in its running list, read once per call
local function holder(name)
  if not held then
    held = {}
    for _, e in ipairs(redis.call('SMEMBERS', K_live)) do
      for _, entry in ipairs(redis.call('LRANGE', K_running(e), 0, -1)) do
        local tid = parse_entry(entry)
        if tid then held[split_tid(tid)] = e end
      end
    end
  end
  return held[name]
end

local function unlink(...)  -- UNLINK (freed off the main thread), or DEL where the ACL grants only that (the
  -- README's minimal ACL): an error here stopped remove, and the InputQueue's housekeeping with it
  local res = redis.pcall('UNLINK', ...)
  if type(res) == 'table' and res.err then redis.call('DEL', ...) end
end

local function purge_placed(gone)
  for _, e in ipairs(redis.call('SMEMBERS', K_live)) do
    local credit, gcredit = 0, 0
    for _, entry in ipairs(redis.call('LRANGE', K_ready(e), 0, -1)) do
      local tid, c, k, _, g = parse_entry(entry)
      if tid and gone[split_tid(tid)] and redis.call('LREM', K_ready(e), 1, entry) == 1 then
        credit, gcredit = credit + c, gcredit + entry_gpus(g, k)
      end
    end
    if credit > 0 then add_credit(e, credit, gcredit) end   -- the index too: placement reads executors from it
  end
end

-- A job canceled while it waited for cores keeps its entries in `pending`, which placement drops only when it
-- reads them: they go with the job, else they would be read as a new job of the same name (placed twice, or
-- before its dependencies). One pass over the list per call, and only when a removed job was canceled.
local function purge_pending(gone)
  local kept, dropped = {}, false
  for _, entry in ipairs(redis.call('LRANGE', K_pending, 0, -1)) do
    if gone[split_tid(entry)] then dropped = true else kept[#kept + 1] = entry end
  end
  if dropped then
    redis.call('DEL', K_pending)
    push_many(K_pending, kept)
  end
end

local function waiting_dependants(name)  -- names of jobs, not final yet, that depend on `name`
  local out = {}
  for _, m in ipairs(redis.call('SMEMBERS', K_children(name))) do
    local child = string.match(m, '^[^|]*|(.*)$')
    local st = redis.call('HGET', K_job(child), 'state')
    if st and not FINAL[st] then out[#out + 1] = child end
  end
  return out
end

local function check(name)  -- why `name` cannot be removed (nil: it can), and a detail
  local h = redis.call('HMGET', K_job(name), 'state', 'kids', 'icancel')
  if not h[1] then return 'unknown', '' end
  if not FINAL[h[1]] then return 'notfinal', h[1] end
  if (h[1] == 'CANCELED' or h[3]) and holder(name) then return 'stopping', holder(name) end
  if h[2] then
    local deps = waiting_dependants(name)
    if #deps > 0 then return 'dependants', table.concat(deps, ',') end
  end
  return nil, ''
end

local function counted(name)  -- the job's tasks as common.lua counted them: how many, and per final state
  local h = redis.call('HMGET', K_job(name), 'state', 'n', 'done', 'n_SUCCEED', 'n_FAILED', 'n_CANCELED',
    'n_OMITTED')
  local fin = {SUCCEED = tonumber(h[4] or '0'), FAILED = tonumber(h[5] or '0'), CANCELED = tonumber(h[6] or '0'),
               OMITTED = tonumber(h[7] or '0')}
  local n = 1
  if h[2] then
    n = tonumber(h[2])
    fin[h[1]] = fin[h[1]] + n - tonumber(h[3] or '0')
  else
    fin[h[1]] = 1
  end
  return n, fin
end

local function uncount(n, fin)  -- take a removed job's tasks (counted()) out of the counters
  redis.call('HINCRBY', K_stats, 'tasks', -n)
  for st, k in pairs(fin) do
    if k ~= 0 then redis.call('HINCRBY', K_stats, st, -k) end
  end
end

local function forget_failures()  -- the capped list of recent failures keeps no task of a removed job
  local kept = {}
  for _, rec in ipairs(redis.call('LRANGE', K_failures, 0, -1)) do
    local name = split_tid(string.match(rec, '^([^|]*)'))
    if redis.call('EXISTS', K_job(name)) == 1 then kept[#kept + 1] = rec end
  end
  redis.call('DEL', K_failures)
  if #kept > 0 then redis.call('RPUSH', K_failures, unpack(kept)) end
end

-- A Python call's rq job (qcgpj.Executor): its keys are rq's, outside the namespace (not ours to touch in a
-- script), so the caller deletes them: '' for other jobs, the rq id, or 'id|it0|n' (ids id-<it>) for a map.
local function rq_calls(spec, it0, n)
  if not spec or not string.find(spec, '"function"', 1, true) then return '' end
  local ok, s = pcall(cjson.decode, spec)
  local ex = ok and type(s) == 'table' and s.execution
  if type(ex) ~= 'table' or ex.model ~= 'function' or type(ex.exec) ~= 'string' then return '' end
  if n then return ex.exec .. '|' .. (it0 or '0') .. '|' .. n end
  return ex.exec
end

-- A job may be removed while a parent of it has not ended (it was OMITTED when another one failed): take it out of
-- its parents' children sets, else that parent's end would reach it still (bringing its hash back as a bare
-- `deps` counter), or a new job of the same name, released before its own dependencies.
local function unlink_parents(name, spec)
  if not spec or not string.find(spec, '"after"', 1, true) then return end
  local ok, s = pcall(cjson.decode, spec)
  local deps = ok and type(s) == 'table' and type(s.dependencies) == 'table' and s.dependencies.after
  if type(deps) ~= 'table' then return end
  for _, d in ipairs(deps) do
    local dn, sel = string.match(d, '^(.-):(.+)$')
    local rel = (not sel and 'w') or (sel == '${it}' and 'p') or ('i' .. sel)
    redis.call('SREM', K_children(dn or d), rel .. '|' .. name)
  end
end

if mode == 'jobs' then
  local strict, only_check = ARGV[3] ~= 'skip', ARGV[3] == 'check'
  local out = {}
  for i = 4, #ARGV do
    local why, detail = check(ARGV[i])
    if why and strict then return {'ERR', why, ARGV[i], detail} end
    out[#out + 1] = why or (only_check and 'ok' or 'removed')
    out[#out + 1] = detail
  end
  if only_check then return out end
  local removed, killed = 0, {}
  for i = 4, #ARGV do
    if out[2 * (i - 3) - 1] == 'removed' then
      local h = redis.call('HMGET', K_job(ARGV[i]), 'icancel', 'state', 'spec', 'it0', 'n')
      if h[1] or h[2] == 'CANCELED' then killed[ARGV[i]] = true end
      out[2 * (i - 3)] = rq_calls(h[3], h[4], h[5])
      local n, fin = counted(ARGV[i])
      -- the deletion first: past maxmemory a script may write only once it has deleted (the first write that
      -- may grow memory is refused), and removing is how a full Redis gets back under its limit
      unlink(K_job(ARGV[i]), K_its(ARGV[i]), K_att(ARGV[i]), K_itwait(ARGV[i]), K_children(ARGV[i]))
      unlink_parents(ARGV[i], h[3])
      uncount(n, fin)
      removed = removed + 1
    end
  end
  if next(killed) then purge_placed(killed); purge_pending(killed) end
  if removed > 0 then
    forget_failures()
    redis.call('HINCRBY', K_stats, 'removed', removed)   -- ever: a name known before may be another job now
  end
  return out
elseif mode == 'executors' then
  local horizon, gone = tonumber(NOW) - tonumber(ARGV[3]), 0
  for _, e in ipairs(redis.call('SMEMBERS', K_executors)) do
    if redis.call('SISMEMBER', K_live, e) == 0 then
      local h = redis.call('HMGET', K_exec(e), 'state', 'ended')
      if h[1] ~= 'ALIVE' and h[1] ~= 'DRAINING' and tonumber(h[2] or '0') <= horizon then
        unlink(K_exec(e), K_alive(e), K_ready(e), K_running(e), K_control(e))
        redis.call('SREM', K_executors, e)
        gone = gone + 1
      end
    end
  end
  return gone
elseif mode == 'listed' then
  local names, gone = redis.call('LRANGE', K_jobs, tonumber(ARGV[3]), tonumber(ARGV[4])), {}
  for _, name in ipairs(names) do
    if redis.call('EXISTS', K_job(name)) == 0 then gone[#gone + 1] = name end
  end
  return {names, gone}
elseif mode == 'unlist' then
  -- The removed jobs are mostly at the head of the list (it is in submission order, and a removal goes through
  -- it from its head): read it in windows from the head only up to the last entry to take off, and rewrite that
  -- part only (LTRIM it away, push back what it kept), not the whole list (300 ms at 500,000 names, however few
  -- went). LTRIM comes first: past maxmemory a script may push only once it has written.
  -- A job of that name that exists again keeps its own entry, the last one: the name may have been taken off
  -- already (a pass takes off names whose job is gone, a removal under way elsewhere among them).
  local function stale(name, index)
    if redis.call('EXISTS', K_job(name)) == 0 then return true end
    local at = redis.call('LPOS', K_jobs, name, 'RANK', -1)
    return at ~= false and at > index
  end
  local gone, left = {}, 0
  local within = tonumber(ARGV[3])
  for i = 4, #ARGV do gone[ARGV[i]] = (gone[ARGV[i]] or 0) + 1; left = left + 1 end
  local kept, last, pos = {}, -1, 0   -- entries kept before the last one taken off (0-based index `last`)
  local held = {}                     -- entries read since the last one taken off
  while left > 0 and (not within or pos < within) do
    local upto = pos + UNLIST_WINDOW - 1
    if within then upto = math.min(upto, within - 1) end
    local win = redis.call('LRANGE', K_jobs, pos, upto)
    for j, name in ipairs(win) do
      if (gone[name] or 0) > 0 then
        gone[name], left = gone[name] - 1, left - 1
        if stale(name, pos + j - 1) then
          last = pos + j - 1
          for _, k in ipairs(held) do kept[#kept + 1] = k end
          held = {}
        else
          held[#held + 1] = name
        end
        if left == 0 then break end
      else
        held[#held + 1] = name
      end
    end
    if #win < upto - pos + 1 then break end
    pos = pos + #win
  end
  if last < 0 then return 0 end
  redis.call('LTRIM', K_jobs, last + 1, -1)
  for i = #kept, 1, -1000 do   -- LPUSH a b c leaves c b a: each call pushes a run of `kept` backwards
    local run = {}
    for k = i, math.max(1, i - 999), -1 do run[#run + 1] = kept[k] end
    redis.call('LPUSH', K_jobs, unpack(run))
  end
  return last + 1 - #kept
end
return redis.error_reply('remove.lua: unknown mode ' .. tostring(mode))
