-- A worker takes a queued task (TaskStore.claim): queued -> running with a lease, or deferred when its tenant is at
-- its running limit. A task that is running or paused is not taken: its lease holder owns it, or, when its worker
-- was lost, the reaper requeues it (requeue.lua). Claiming again a task one already holds changes nothing.
-- KEYS: task, events, lease
-- ARGV: 1 worker id, 2 lease ms, 3 now (s), 4 stream maxlen, 5 key prefix, 6 default max running per tenant (0 = none),
--       7 now (ms)
-- Returns {outcome, status, attempt}; outcome: started | held | leased | orphaned | deferred | ended | missing
if redis.call('EXISTS', KEYS[1]) == 0 then return {'missing', '', 0} end
local cur = redis.call('HGET', KEYS[1], 'status')
if cur ~= 'queued' and cur ~= 'running' and cur ~= 'paused' then return {'ended', cur, 0} end
local prefix = ARGV[5]
local task_id = id_of(KEYS[1], prefix)
local attempt = tonumber(redis.call('HGET', KEYS[1], 'attempt') or '0')
local holder = redis.call('GET', KEYS[3])
if holder == ARGV[1] then return {'held', cur, attempt} end
if cur ~= 'queued' then
  if holder then return {'leased', cur, attempt} end
  return {'orphaned', cur, attempt}
end
local tenant = redis.call('HGET', KEYS[1], 'tenant')
local limit = running_limit(prefix, tenant, ARGV[6])
if limit > 0 and running_count(prefix, tenant) >= limit then
  local deferred = prefix .. ':t:' .. tenant .. ':deferred'
  if not redis.call('LPOS', deferred, task_id) then redis.call('RPUSH', deferred, task_id) end
  redis.call('SADD', prefix .. ':deferring', tenant)
  redis.call('ZREM', prefix .. ':dispatch', task_id)
  -- it waits for its tenant, not for the queue (queue_add puts it back when it is released)
  redis.call('ZREM', prefix .. ':queue:' .. (redis.call('HGET', KEYS[1], 'kind') or 'browser'), task_id)
  return {'deferred', cur, attempt}
end
attempt = redis.call('HINCRBY', KEYS[1], 'attempt', 1)
redis.call('SET', KEYS[3], ARGV[1], 'PX', ARGV[2])
redis.call('ZADD', prefix .. ':leases', tonumber(ARGV[7]) + tonumber(ARGV[2]), task_id)
redis.call('ZREM', prefix .. ':dispatch', task_id)
move_status(KEYS[1], prefix, 'queued', 'running')
redis.call('HSET', KEYS[1], 'worker', ARGV[1], 'status', 'running')
if not redis.call('HGET', KEYS[1], 'started_at') then redis.call('HSET', KEYS[1], 'started_at', ARGV[3]) end
local ev = cjson.encode({type = 'status', status = 'running', task_id = task_id,
  ts = tonumber(ARGV[3]), worker = ARGV[1], attempt = attempt})
append_event(KEYS[1], KEYS[2], ARGV[4], ev)
return {'started', 'running', attempt}
