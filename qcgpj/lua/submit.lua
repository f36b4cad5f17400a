-- Make a staged batch visible, in one atomic step. ARGV: now, batch id, staging attempt, count, batch ttl (s).
-- The client wrote the rows to K_stage(attempt) in chunks beforehand (nothing else reads that list): per job
-- name, spec, req (";spread" after it for maximum-iters' unequal shares), iter ("it0|n" or ""), deps (space-separated "a" whole job, "a:3" iteration 3, "a:*" per
-- iteration), dependencies first. Everything is checked again here (another client may have submitted since the
-- client's checks) before the first write; on error nothing is written and the staging list is deleted:
-- {'ERR', kind, job, detail}.
-- A batch id committed before returns {'DONE', count} and writes nothing: a retried submit is safe.
NOW = ARGV[1]
local bid, stage, count, ttl = ARGV[2], K_stage(ARGV[3]), tonumber(ARGV[4]), tonumber(ARGV[5])
local done = redis.call('GET', K_batch(bid))
if done then
  redis.call('DEL', stage)
  return {'DONE', done}
end
if redis.call('LLEN', stage) ~= count * 5 then
  redis.call('DEL', stage)
  return {'ERR', 'staging', '', tostring(count)}
end

local SLICE = 2000   -- jobs per read of the staging list
local function each_row(fn)  -- fn(name, spec, req, iter, deps) for every staged job, in order
  for first = 0, count - 1, SLICE do
    local r = redis.call('LRANGE', stage, first * 5, math.min(first + SLICE, count) * 5 - 1)
    for k = 1, #r, 5 do fn(r[k], r[k + 1], r[k + 2], r[k + 3], r[k + 4]) end
  end
end

-- Checks, in one pass: dependencies first, so a parent of the batch is always read before its children; only
-- each job's iterations are kept (a table per job would cost a lot of collecting for 100,000 jobs).
local batch = {}   -- name -> iter, for the jobs read so far

local function iter_of(name)  -- it0, n of a job in the batch or in Redis (n nil: not iterative)
  local iter = batch[name]
  if iter then
    if iter == '' then return nil, nil end
    local a, b = string.match(iter, '^(-?%d+)|(%d+)$')
    return tonumber(a), tonumber(b)
  end
  local h = redis.call('HMGET', K_job(name), 'it0', 'n')
  return tonumber(h[1]), tonumber(h[2])
end

local function check_deps(name, deps)
  for d in string.gmatch(deps, '%S+') do
    local dn, sel = string.match(d, '^(.-):([%d*]+)$')
    dn = dn or d
    if not batch[dn] and redis.call('EXISTS', K_job(dn)) == 0 then return {'ERR', 'unknown', name, dn} end
    local it0, n = iter_of(dn)
    if sel == '*' then
      local mit0, mn = iter_of(name)
      if not n or not mn or n ~= mn or it0 ~= mit0 then return {'ERR', 'periteration', name, dn} end
    elseif sel then
      local k = tonumber(sel)
      if not n or k < it0 or k >= it0 + n then return {'ERR', 'iteration', name, d} end
    end
  end
end

local function check_free(names)  -- names already taken: one EXISTS for them all, name by name only on a hit
  local ks = {}
  for i, name in ipairs(names) do ks[i] = K_job(name) end
  if #ks == 0 or redis.call('EXISTS', unpack(ks)) == 0 then return end
  for _, name in ipairs(names) do
    if redis.call('EXISTS', K_job(name)) == 1 then return {'ERR', 'duplicate', name, ''} end
  end
end

local bad, group = nil, {}
each_row(function(name, _spec, _req, iter, deps)
  if bad then return end
  batch[name] = iter
  group[#group + 1] = name
  bad = check_deps(name, deps)
  if not bad and #group == 1000 then bad = check_free(group); group = {} end
end)
bad = bad or check_free(group)
if bad then
  redis.call('DEL', stage)   -- a refused batch's rows: no other client reads them
  return bad
end

-- The event before the first write: a user whose ACL denies streams is refused here, with nothing written (a
-- script's writes stay when a later command fails: the batch was queued while its submit said 'denied').
emit('submit', tostring(count))
local omit, ready_now, late, names, tasks = {}, {}, {}, {}, 0
each_row(function(name, spec, req, iter, depstr)
  local jk = K_job(name)
  local omitted_before = #omit
  local spread
  req, spread = string.match(req, '^([^;]*);?(.*)$')   -- "req;spread": maximum-iters' unequal shares
  local fields = {'spec', spec, 'state', 'QUEUED', 'req', req, 'created', NOW}
  if spread ~= '' then fields[#fields + 1] = 'spread'; fields[#fields + 1] = spread end
  tasks = tasks + 1
  if iter ~= '' then
    local it0, n = string.match(iter, '^(-?%d+)|(%d+)$')
    for _, v in ipairs({'it0', it0, 'n', n, 'next', it0, 'done', 0}) do fields[#fields + 1] = v end
    tasks = tasks + tonumber(n) - 1
  end
  local deps, pdeps = 0, 0
  for d in string.gmatch(depstr, '%S+') do
    local dn, sel = string.match(d, '^(.-):([%d*]+)$')
    dn = dn or d
    local st = redis.call('HGET', K_job(dn), 'state')   -- a parent of this batch was written above
    if sel == '*' then
      pdeps = pdeps + 1
      redis.call('SADD', K_children(dn), 'p|' .. name)
      redis.call('HSET', K_job(dn), 'itch', 1, 'kids', 1)
      if st then  -- an existing parent: count its iterations that already succeeded or failed
        local its = redis.call('HGETALL', K_its(dn))
        for i = 1, #its, 2 do
          local rs = record_state(its[i + 1])
          if rs == 'SUCCEED' then redis.call('HINCRBY', K_itwait(name), its[i], 1) end
        end
        if FINAL[st] and st ~= 'SUCCEED' then omit[#omit + 1] = {name, 'p', dn, st} end
      end
    elseif sel then
      local rs = st and record_state(redis.call('HGET', K_its(dn), sel))
      if rs == 'SUCCEED' then
        -- done already
      elseif (rs and FINAL[rs]) or (st and FINAL[st]) then
        omit[#omit + 1] = {name, 'w', dn .. ':' .. sel, (rs and FINAL[rs]) and rs or st}
      else
        deps = deps + 1
        redis.call('SADD', K_children(dn), 'i' .. sel .. '|' .. name)
        redis.call('HSET', K_job(dn), 'itch', 1, 'kids', 1)
      end
    else
      if st == 'SUCCEED' then
        -- done already
      elseif st and FINAL[st] then
        omit[#omit + 1] = {name, 'w', dn, st}
      else
        deps = deps + 1
        redis.call('SADD', K_children(dn), 'w|' .. name)
        redis.call('HSET', K_job(dn), 'kids', 1)
      end
    end
  end
  if deps > 0 then fields[#fields + 1] = 'deps'; fields[#fields + 1] = deps end
  if pdeps > 0 then fields[#fields + 1] = 'pdeps'; fields[#fields + 1] = pdeps end
  if deps == 0 and pdeps == 0 and #omit == omitted_before then
    fields[4] = 'READY'   -- nothing to wait for: ready at once, queued below in one RPUSH
    ready_now[#ready_now + 1] = name
  elseif deps == 0 then
    late[#late + 1] = name   -- made ready below, unless omitted meanwhile
  end
  redis.call('HSET', jk, unpack(fields))
  names[#names + 1] = name
end)
push_many(K_pending, ready_now)
redis.call('INCRBY', K_active, count)
redis.call('HINCRBY', K_stats, 'tasks', tasks)   -- submitted tasks, iterations counted (for `top`)
push_many(K_jobs, names)

for _, o in ipairs(omit) do
  if o[2] == 'p' then
    -- a per-iteration parent that already ended badly: omit the iterations whose parent iteration did not succeed
    local it0, n = iter_of(o[1])
    omit_iterations(o[1], o[3], o[4], it0, it0 + n - 1)
  else
    omit_job(o[1], omitted_why(o[3], o[4]))
  end
end
for _, name in ipairs(late) do
  if redis.call('HGET', K_job(name), 'state') == 'QUEUED' then make_ready(name) end
end
propagate()
redis.call('DEL', stage)
redis.call('SET', K_batch(bid), count, 'EX', ttl)
return {'OK', place(200, 100000)}
