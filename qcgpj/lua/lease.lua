-- Leader lease of the InputQueue. ARGV: candidate id, ttl ms. Take it if free, renew it if ours; returns the holder.
local cur = redis.call('GET', K_leader)
if not cur or cur == ARGV[1] then
  redis.call('SET', K_leader, ARGV[1], 'PX', ARGV[2])
  return ARGV[1]
end
return cur
