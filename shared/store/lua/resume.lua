-- Resume a paused task (TaskStore.resume): paused -> running with a notice to the worker that holds it, or, when no
-- worker holds it (it was released), paused -> queued with a run message due in the dispatch outbox.
-- KEYS: task, events, lease
-- ARGV: 1 now (s), 2 now (ms), 3 stream maxlen, 4 key prefix, 5 control channel, 6 notice json
-- Returns {found (1 | 0 refused | -1 missing), status before, seq, outcome ("resumed" | "requeued" | "")}
if redis.call('EXISTS', KEYS[1]) == 0 then return {-1, '', 0, ''} end
local prefix = ARGV[4]
local cur = redis.call('HGET', KEYS[1], 'status')
if cur ~= 'paused' then return {0, cur, 0, ''} end
local task_id = id_of(KEYS[1], prefix)
local to, outcome = 'running', 'resumed'
if not redis.call('GET', KEYS[3]) then
  to, outcome = 'queued', 'requeued'
  redis.call('ZADD', prefix .. ':dispatch', ARGV[2], task_id)
end
redis.call('HSET', KEYS[1], 'status', to)
move_status(KEYS[1], prefix, cur, to)
local ev = cjson.encode({type = 'status', status = to, task_id = task_id, ts = tonumber(ARGV[1]), source = 'api',
  reason = outcome == 'requeued' and 'resumed: starts again on the next free worker' or nil})
local seq = append_event(KEYS[1], KEYS[2], ARGV[3], ev)
if outcome == 'resumed' then redis.call('PUBLISH', ARGV[5], ARGV[6]) end
return {1, cur, seq, outcome}
