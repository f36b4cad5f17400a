-- The InputQueue's deep placement pass. ARGV: now, entries to scan, tasks to place at most, and the unplaceable
-- timeout in seconds ('' : no check this pass; 0: flag, never fail).
-- The check (about once a second) looks at the ready jobs no live executor could ever fit, whatever their free
-- cores: such a job is flagged ('unplaceable' = since when, and a message) while executors are live, and
-- ends FAILED once it has been so for longer than the timeout. Before the first executor joins nothing is
-- flagged: jobs wait for executors as long as it takes (an allocation may sit in Slurm's queue for hours).
NOW = ARGV[1]

local function capacities()  -- what each shape of live executor could ever offer
  local caps, counted = {}, 0
  local shapes = redis.call('HGETALL', K_shapes)
  for i = 1, #shapes, 2 do
    -- "total|nnodes|maxnode[|gpus|gmax|mem]"
    local t, k, m, g, gm, mem = string.match(shapes[i], '^(%d+)|(%d+)|(%d+)|?(%d*)|?(%d*)|?(%d*)$')
    caps[#caps + 1] = {total = tonumber(t), nnodes = tonumber(k), maxnode = tonumber(m), gpus = tonumber(g) or 0,
                       gmax = tonumber(gm) or 0, mem = tonumber(mem) or 0}
    counted = counted + tonumber(shapes[i + 1])
  end
  if counted == redis.call('SCARD', K_live) then return caps end
  caps = {}   -- executors that joined before the shapes were counted (an upgrade): read each
  for _, e in ipairs(redis.call('SMEMBERS', K_live)) do
    local h = redis.call('HMGET', K_exec(e), 'state', 'total', 'maxnode', 'nnodes', 'gpus', 'gmax', 'mem')
    if h[1] == 'ALIVE' then
      caps[#caps + 1] = {total = tonumber(h[2]), maxnode = tonumber(h[3]), nnodes = tonumber(h[4]),
                         gpus = tonumber(h[5] or '0'), gmax = tonumber(h[6] or '0'), mem = tonumber(h[7] or '0')}
    end
  end
  return caps
end

local function need(caps, cmin, kmin, g, m)
  local total, nodes, per, gpn, mem = 0, 0, 0, 0, 0
  for _, c in ipairs(caps) do
    total, nodes, per = math.max(total, c.total), math.max(nodes, c.nnodes), math.max(per, c.maxnode)
    gpn, mem = math.max(gpn, c.gmax), math.max(mem, c.mem)
  end
  if g > 0 or m > 0 then
    return 'needs ' .. math.max(kmin, 1) .. ' node(s) of ' .. cmin .. ' core(s)' ..
      (g > 0 and (', ' .. g .. ' GPU(s)') or '') .. (m > 0 and (', ' .. m .. ' MiB') or '') ..
      ' each; the live executors have at most ' .. gpn .. ' GPU(s) and ' .. mem .. ' MiB declared on a node'
  end
  if kmin > 0 then
    return 'needs ' .. kmin .. ' node(s) of ' .. cmin .. ' core(s); the largest live executor has ' .. nodes ..
      ' node(s), at most ' .. per .. ' cores on one'
  end
  return 'needs ' .. cmin .. ' cores; the largest live executor has ' .. total
end

local function fail(name, h, entries, why)  -- every task of the job still waiting for cores ends FAILED
  local jk = K_job(name)
  if not h[4] then
    task_final(name, nil, 'FAILED', nil, nil, nil, NOW, tonumber(h[6] or '0'), why)
  else
    for _, entry in ipairs(entries) do
      local _, it = split_tid(entry)
      if it ~= nil then
        if not FINAL[record_state(redis.call('HGET', K_its(name), it)) or ''] then
          task_final(name, it, 'FAILED', nil, nil, nil, NOW, 0, why)
        end
      else  -- all iterations from 'next' on: counted at once (no record each), the job's message says why
        local nxt, last = tonumber(h[5]), tonumber(h[4]) + tonumber(h[3]) - 1
        if nxt <= last then
          redis.call('HSET', jk, 'next', last + 1, 'message', why)
          redis.call('HINCRBY', jk, 'n_FAILED', last - nxt + 1)
          if redis.call('HINCRBY', jk, 'done', last - nxt + 1) >= tonumber(h[3]) then
            local st = final_of_iterations(jk, name)
            redis.call('HSET', jk, 'state', st, 'end', NOW)
            work[#work + 1] = {'job_final', name, nil, st}
          end
        end
      end
    end
  end
  for _, entry in ipairs(entries) do redis.call('LREM', K_pending, 1, entry) end
  propagate()
end

local function check_unplaceable(scan, timeout)
  if redis.call('LLEN', K_pending) == 0 then return end
  local caps = capacities()
  if #caps == 0 then return end
  local jobs, order = {}, {}
  for _, entry in ipairs(redis.call('LRANGE', K_pending, 0, scan - 1)) do
    local name = split_tid(entry)
    if not jobs[name] then jobs[name] = {}; order[#order + 1] = name end
    table.insert(jobs[name], entry)
  end
  for _, name in ipairs(order) do
    local jk = K_job(name)
    local h = redis.call('HMGET', jk, 'state', 'req', 'n', 'it0', 'next', 'attempts', 'unplaceable')
    if h[1] and not FINAL[h[1]] then
      local cmin, _, kmin, _, g, m = parse_req(h[2])
      if fits(caps, cmin, kmin, g, m) then
        if h[7] then placeable_again(jk) end
      elseif not h[7] then
        redis.call('HSET', jk, 'unplaceable', NOW, 'message', 'waiting: ' .. need(caps, cmin, kmin, g, m))
      elseif timeout > 0 and tonumber(NOW) - tonumber(h[7]) > timeout then
        fail(name, h, jobs[name], 'no live executor could run it for ' .. timeout .. ' s: ' ..
          need(caps, cmin, kmin, g, m))
      end
    end
  end
end

-- One step of the per-iteration omissions left to do (common.lua's omit_iterations): how many are left after it.
-- A child that ended meanwhile (canceled), or was removed and submitted again (another 'created'), is skipped.
local function omit_step()
  local entry = redis.call('LPOP', K_omitting)
  if not entry then return 0 end
  local child, parent, pstate, created, from, last =
    string.match(entry, '^([^|]*)|([^|]*)|([^|]*)|([^|]*)|(-?%d+)|(-?%d+)$')
  local h = redis.call('HMGET', K_job(child or ''), 'state', 'created')
  if h[1] and not FINAL[h[1]] and (h[2] or '') == created then
    omit_iterations(child, parent, pstate, tonumber(from), tonumber(last))
    propagate()
  end
  return redis.call('LLEN', K_omitting)
end

local omitting = omit_step()
local placed = place(tonumber(ARGV[2]), tonumber(ARGV[3]))
if ARGV[4] and ARGV[4] ~= '' then check_unplaceable(tonumber(ARGV[2]), tonumber(ARGV[4])) end
return {placed, omitting}
