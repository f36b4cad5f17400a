-- Leader lease of the InputQueue (or, ARGV[3] 'alloc', of the allocator). ARGV: candidate id, ttl ms or 'release', role. Take it if free, renew it if ours;
-- returns the holder. 'release' gives it up if ours (a stopping InputQueue), so a standby takes over at once.
local K_leader = ARGV[3] == 'alloc' and K_alloc_leader or K_leader
local cur = redis.call('GET', K_leader)
if ARGV[2] == 'release' then
  if cur == ARGV[1] then redis.call('DEL', K_leader) end
  return false
end
if not cur or cur == ARGV[1] then
  redis.call('SET', K_leader, ARGV[1], 'PX', ARGV[2])
  return ARGV[1]
end
return cur
