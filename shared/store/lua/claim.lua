-- A worker takes a task (TaskStore.claim): queued -> running with a lease, or a restart after its last worker's
-- lease expired, or deferred when its tenant is at its running limit.
-- KEYS: task, events, lease
-- ARGV: worker id, lease ms, max attempts, now, stream maxlen, key prefix, default max running per tenant (0 = none)
-- Returns {outcome, status, attempt}; outcome: started | restarted | leased | ended | lost | missing | deferred
if redis.call('EXISTS', KEYS[1]) == 0 then return {'missing', '', 0} end
local cur = redis.call('HGET', KEYS[1], 'status')
if cur ~= 'queued' and cur ~= 'running' and cur ~= 'paused' then return {'ended', cur, 0} end
local holder = redis.call('GET', KEYS[3])
if holder and holder ~= ARGV[1] then return {'leased', cur, 0} end
local task_id = id_of(KEYS[1], ARGV[6])
if cur == 'queued' then
  local tenant = redis.call('HGET', KEYS[1], 'tenant')
  local limit = running_limit(ARGV[6], tenant, ARGV[7])
  if limit > 0 and running_count(ARGV[6], tenant) >= limit then
    local deferred = ARGV[6] .. ':t:' .. tenant .. ':deferred'
    if not redis.call('LPOS', deferred, task_id) then redis.call('RPUSH', deferred, task_id) end
    return {'deferred', cur, 0}
  end
end
local attempt = redis.call('HINCRBY', KEYS[1], 'attempt', 1)
if cur ~= 'queued' and attempt > tonumber(ARGV[3]) then return {'lost', cur, attempt} end
redis.call('SET', KEYS[3], ARGV[1], 'PX', ARGV[2])
local fields = {'worker', ARGV[1]}
local outcome = 'restarted'
if cur == 'queued' then
  move_status(KEYS[1], ARGV[6], 'queued', 'running')
  cur = 'running'
  outcome = 'started'
  fields = {'worker', ARGV[1], 'status', 'running', 'started_at', ARGV[4]}
end
redis.call('HSET', KEYS[1], unpack(fields))
local ev = cjson.encode({type = 'status', status = cur, task_id = task_id,
  ts = tonumber(ARGV[4]), worker = ARGV[1], attempt = attempt})
append_event(KEYS[1], KEYS[2], ARGV[5], ev)
return {outcome, cur, attempt}
