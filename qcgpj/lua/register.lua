-- An executor joins, or rejoins after it was declared dead while alive (its old work went to others). ARGV: id,
-- now, ttl, host, nodes text, total cores, max cores per node, nodes, prefetch, pid, Slurm job id ('' outside
-- Slurm), GPUs in all, most GPUs on one node, most MiB on one node.
local eid = ARGV[1]
NOW = ARGV[2]
redis.call('SADD', K_executors, eid)
local was = redis.call('HGET', K_exec(eid), 'state')
if was == 'ALIVE' or was == 'DRAINING' then count_shape(eid, -1) end   -- joins again while counted
redis.call('SADD', K_live, eid)
redis.call('DEL', K_ready(eid), K_running(eid), K_control(eid))
redis.call('HSET', K_exec(eid), 'state', 'ALIVE', 'started', NOW, 'host', ARGV[4], 'nodes', ARGV[5],
  'total', ARGV[6], 'maxnode', ARGV[7], 'nnodes', ARGV[8], 'free', tonumber(ARGV[6]) + tonumber(ARGV[9]),
  'prefetch', ARGV[9], 'pid', ARGV[10], 'ttl', ARGV[3],
  'slurm_job', ARGV[11] or '', 'gpus', ARGV[12] or 0, 'gfree', ARGV[12] or 0, 'gmax', ARGV[13] or 0,
  'mem', ARGV[14] or 0)
index_executor(eid)
count_shape(eid, 1)
redis.call('SET', K_alive(eid), NOW, 'EX', ARGV[3])
emit('executor', eid .. ' joined')
return place(1000, 100000)
