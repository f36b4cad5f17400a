-- An executor's heartbeat. ARGV: id, now, ttl. Returns its state: 'DEAD' tells it that its work went to others,
-- 'GONE' that Redis lost its registration (a restart without persistence); both make it rejoin.
local eid = ARGV[1]
local st = redis.call('HGET', K_exec(eid), 'state')
if st == 'ALIVE' or st == 'DRAINING' then redis.call('SET', K_alive(eid), ARGV[2], 'EX', ARGV[3]) end
return st or 'GONE'
