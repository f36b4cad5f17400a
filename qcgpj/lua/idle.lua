-- May an idle executor serving with --exit-when-idle leave? ARGV: executor id, ready entries to look at.
-- Returns {active, stay}: active, the jobs not final (0: the queue is done); stay 1 while ready work waits that
-- this executor could run by its shape (whatever its free cores: placement gives it such work), or while none
-- waits (dependencies may still make work for it). stay 0: every waiting job needs more than it has (nodes,
-- cores on a node, GPUs, memory): it leaves, so that its allocation's nodes may go to one that fits the work.
local active = tonumber(redis.call('GET', K_active) or '0')
if active == 0 then return {0, 0} end
local scan = tonumber(ARGV[2])
local entries = redis.call('LRANGE', K_pending, 0, scan - 1)
if #entries == 0 or #entries >= scan then return {active, 1} end   -- none waits, or more than looked at
local h = redis.call('HMGET', K_exec(ARGV[1]), 'total', 'maxnode', 'nnodes', 'gpus', 'gmax', 'mem')
local cap = {total = tonumber(h[1] or '0'), maxnode = tonumber(h[2] or '0'), nnodes = tonumber(h[3] or '0'),
             gpus = tonumber(h[4] or '0'), gmax = tonumber(h[5] or '0'), mem = tonumber(h[6] or '0')}
local seen, waiting = {}, 0
for _, entry in ipairs(entries) do
  local name = split_tid(entry)
  if not seen[name] then
    seen[name] = true
    local j = redis.call('HMGET', K_job(name), 'state', 'req')
    if j[1] and not FINAL[j[1]] then   -- (entries of jobs ended meanwhile are dropped by the next placement)
      waiting = waiting + 1
      local cmin, _, kmin, _, g, m = parse_req(j[2])
      if fits({cap}, cmin, kmin, g, m) then return {active, 1} end
    end
  end
end
return {active, waiting == 0 and 1 or 0}
