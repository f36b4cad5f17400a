-- An executor joins, or rejoins after it was declared dead while alive (its old work went to others). ARGV: id,
-- now, ttl, host, nodes text, total cores, max cores per node, nodes, prefetch, pid, Slurm job id ('' outside
-- Slurm), GPUs in all, most GPUs on one node, most MiB on one node.
-- Returns {'OK'}, or {'INUSE', heartbeat key exists (0/1), host, pid} when the id is registered as live already:
-- another executor of that id, or one that died and whose work the InputQueue has not taken back yet (its
-- heartbeat not expired, or expired and not checked yet). Joining over it would drop its claimed tasks (they
-- would stay EXECUTING for ever): the caller waits until it is declared dead or leaves. A rejoin comes only
-- after it was declared dead (DEAD) or forgotten (no state).
local eid = ARGV[1]
NOW = ARGV[2]
local was = redis.call('HMGET', K_exec(eid), 'state', 'host', 'pid')
if was[1] == 'ALIVE' or was[1] == 'DRAINING' then
  return {'INUSE', redis.call('EXISTS', K_alive(eid)), was[2] or '', was[3] or ''}
end
-- The event first: a user whose ACL denies streams is refused here, before anything is written (a script's
-- writes stay when a later command fails, and left a registration ALIVE that placement fed until it was declared
-- dead).
emit('executor', eid .. ' joined')
redis.call('SADD', K_executors, eid)
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
place(1000, 100000)
return {'OK'}
