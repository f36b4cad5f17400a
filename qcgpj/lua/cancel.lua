-- Cancel jobs or iterations. ARGV: now, mode, then task ids ("name" or "name:it").
-- mode 'all': all or none: if any id is unknown, nothing is canceled ('unknown' for those, 'skipped' for the
--   others); else per id 'canceled' or 'final' (already ended).
-- mode 'check': cancels nothing, writes nothing: 'known' or 'unknown' per id (the first pass of a cancel too
--   large for one call, see Store.cancel).
-- mode 'known': a later batch of such a cancel, whose ids were all known at the check: one gone since then was
--   removed, which only a final job can be, so it is answered 'final' and the others are canceled.
-- Running work is killed by its executor on a "cancel <id>" control message; its late report is then ignored
-- because the state is already final. After the answers come (executor, job) pairs: named followers whose
-- executor was sent "cancelack <job>" and answers on the job's cancel_ack list once it dropped the follower.
NOW = ARGV[1]
local MODE = ARGV[2]
local FIRST = 3
local out = {}
local function known(tid)
  local name, it = split_tid(tid)
  local h = redis.call('HMGET', K_job(name), 'state', 'n', 'it0')
  if not h[1] then return false end
  if it == nil then return true end
  local n, it0 = tonumber(h[2] or '0'), tonumber(h[3] or '0')
  return n > 0 and it >= it0 and it < it0 + n
end
if MODE == 'check' then
  for i = FIRST, #ARGV do out[#out + 1] = known(ARGV[i]) and 'known' or 'unknown' end
  return out
end
if MODE == 'all' then
  local unknown = false
  for i = FIRST, #ARGV do if not known(ARGV[i]) then unknown = true end end
  if unknown then
    for i = FIRST, #ARGV do out[#out + 1] = known(ARGV[i]) and 'skipped' or 'unknown' end
    return out
  end
end
-- Every id is known here, or was at the check ('known'): one gone since was removed, so it had ended.
-- The event before the first write, as submit's: an ACL that denies streams then refuses the cancel whole.
emit('cancel', tostring(#ARGV - FIRST + 1))
local GONE = 'final'
-- state, executor, start (with the cores it got) and attempt of an iteration record, kept when it is canceled
local function running_fields(rec)
  if not rec then return nil end
  local st, _, eid, t0, _, att = string.match(rec, '^([^|]*)|([^|]*)|([^|]*)|([^|]*)|([^|]*)|([^|]*)|')
  return st, eid, t0, att
end

-- A job canceled whole: its iterations not final yet end with it, so that none stays EXECUTING (the executors'
-- reports of the killed ones come too late to count) and the counts add up to its iterations.
local function cancel_iterations(name, jk)
  local h = redis.call('HMGET', jk, 'n', 'done')
  if not h[1] then return end
  local recs = redis.call('HGETALL', K_its(name))
  for i = 1, #recs, 2 do
    local st, eid, t0, att = running_fields(recs[i + 1])
    if not FINAL[st] then
      redis.call('HSET', K_its(name), recs[i], record('CANCELED', nil, eid, t0, NOW, att, 'canceled'))
    end
  end
  redis.call('HDEL', jk, 'n_EXECUTING')
  local left = tonumber(h[1]) - tonumber(h[2] or '0')
  if left > 0 then
    redis.call('HINCRBY', jk, 'n_CANCELED', left)
    redis.call('HSET', jk, 'done', h[1])
  end
end

local acks = {}   -- (executor, job) pairs: named followers whose executor must say it dropped them (see below)
local function notify(tid, hint)
  for _, e in ipairs(redis.call('SMEMBERS', K_live)) do
    if e == hint then   -- it may start the follower the moment its parent ends: the caller waits for its word
      redis.call('RPUSH', K_control(e), 'cancelack ' .. tid)
      acks[#acks + 1] = e
      acks[#acks + 1] = tid
    else
      redis.call('RPUSH', K_control(e), 'cancel ' .. tid)
    end
  end
end
for i = FIRST, #ARGV do
  local tid = ARGV[i]
  local name, it = split_tid(tid)
  local jk = K_job(name)
  local st, hint = unpack(redis.call('HMGET', jk, 'state', 'hint'))
  if not st then
    out[#out + 1] = GONE
  elseif FINAL[st] then
    out[#out + 1] = 'final'
  elseif it == nil then
    redis.call('HSET', jk, 'state', 'CANCELED', 'end', NOW, 'message', 'canceled')
    count_whole(jk, 'CANCELED')
    cancel_iterations(name, jk)
    work[#work + 1] = {'job_final', name, nil, 'CANCELED'}
    -- A follower named to an executor (see sync.lua) may be started there the moment its dependency ends, and
    -- the cancel reaches the executor a little later: while its dependency runs (QUEUED), the caller waits
    -- until that executor has dropped it, so that a follower whose cancel returned never starts.
    if st == 'SCHEDULED' or st == 'EXECUTING' or hint then notify(name, st == 'QUEUED' and hint or nil) end
    out[#out + 1] = 'canceled'
  else
    local n, it0 = tonumber(redis.call('HGET', jk, 'n') or '0'), tonumber(redis.call('HGET', jk, 'it0') or '0')
    local rs, eid, t0, att = running_fields(redis.call('HGET', K_its(name), it))
    if n == 0 or it < it0 or it >= it0 + n then
      out[#out + 1] = GONE
    elseif rs and FINAL[rs] then
      out[#out + 1] = 'final'
    else
      redis.call('HSET', jk, 'icancel', 1)
      if rs == 'EXECUTING' then redis.call('HINCRBY', jk, 'n_EXECUTING', -1) end
      task_final(name, it, 'CANCELED', nil, eid, t0, NOW, att or 0, 'canceled')
      -- claimed by an executor but not reported started yet: it must hear of it too
      if rs == 'EXECUTING' or st == 'SCHEDULED' or st == 'EXECUTING' then notify(tid) end
      out[#out + 1] = 'canceled'
    end
  end
end
propagate()
for _, v in ipairs(acks) do out[#out + 1] = v end   -- after the answers, one per id
return out
