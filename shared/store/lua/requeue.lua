-- Give a running or paused task back (TaskStore.requeue): a running task goes back to `queued` with a run message
-- due in the dispatch outbox; a paused task stays `paused` with no worker ("released": a resume queues it again).
-- mode "lost" (the reaper): only when the task's lease is gone; the attempt it used counts. A running task that has
--   used up its attempts is not requeued: the reply says "exhausted" and the caller ends it (exit code 6).
-- mode "handback" (its worker shuts down, or lets a paused task go): only by the lease holder; the attempt it
--   used is given back, so the task's next start has the same attempt number.
-- mode "retry" (its environment crashed and the task may be started again): only by the lease holder; the attempt
--   counts.
-- KEYS: task, events, lease
-- ARGV: 1 mode, 2 worker (handback: the holder), 3 now (s), 4 now (ms), 5 stream maxlen, 6 key prefix,
--       7 max attempts, 8 reason (for the status event)
-- Returns {outcome, status, attempt}; outcome: requeued | released | exhausted | alive | lost | ended | missing
local prefix = ARGV[6]
local task_id = id_of(KEYS[1], prefix)
if redis.call('EXISTS', KEYS[1]) == 0 then
  redis.call('ZREM', prefix .. ':leases', task_id)
  return {'missing', '', 0}
end
local cur = redis.call('HGET', KEYS[1], 'status')
local attempt = tonumber(redis.call('HGET', KEYS[1], 'attempt') or '0')
if cur ~= 'running' and cur ~= 'paused' then
  redis.call('ZREM', prefix .. ':leases', task_id)
  return {'ended', cur, attempt}
end
local holder = redis.call('GET', KEYS[3])
if ARGV[1] == 'lost' then
  if holder then  -- alive after all (renewed meanwhile): put its index entry right
    redis.call('ZADD', prefix .. ':leases', tonumber(ARGV[4]) + redis.call('PTTL', KEYS[3]), task_id)
    return {'alive', cur, attempt}
  end
  if cur == 'running' and attempt >= tonumber(ARGV[7]) then
    count(prefix, 1, 'requeues', ARGV[1], 'exhausted')
    return {'exhausted', cur, attempt}
  end
else
  if holder ~= ARGV[2] then return {'lost', cur, attempt} end
  if ARGV[1] == 'handback' then attempt = redis.call('HINCRBY', KEYS[1], 'attempt', -1) end
end
drop_lease(KEYS[3], prefix, task_id)
local fields = {'worker', '', 'message', ARGV[8]}
local status = cur
local outcome = 'released'
if cur == 'running' then
  status = 'queued'
  outcome = 'requeued'
  move_status(KEYS[1], prefix, 'running', 'queued')
  fields = {'worker', '', 'status', 'queued', 'message', ARGV[8]}
  redis.call('ZADD', prefix .. ':dispatch', ARGV[4], task_id)
end
redis.call('HSET', KEYS[1], unpack(fields))
count(prefix, 1, 'requeues', ARGV[1], outcome)
local ev = cjson.encode({type = 'status', status = status, task_id = task_id, ts = tonumber(ARGV[3]),
  reason = ARGV[8], attempt = attempt})
append_event(KEYS[1], KEYS[2], ARGV[5], ev)
return {outcome, status, attempt}
