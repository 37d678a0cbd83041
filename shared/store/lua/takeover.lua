-- Hand a human action to the worker holding a paused task (Takeover.submit): the task's actions list, then a control
-- notice. Only while the task is paused and a worker holds its lease (a paused task released after pause_timeout has
-- no environment to act on).
-- KEYS: task, lease, actions
-- ARGV: 1 entry json, 2 control channel, 3 notice, 4 seconds the list lives (renewed on each action)
-- Returns {found (1 queued | 0 not paused | -1 missing | -3 paused but no worker holds it), status}
if redis.call('EXISTS', KEYS[1]) == 0 then return {-1, ''} end
local cur = redis.call('HGET', KEYS[1], 'status')
if cur ~= 'paused' then return {0, cur} end
if redis.call('EXISTS', KEYS[2]) == 0 then return {-3, cur} end
redis.call('RPUSH', KEYS[3], ARGV[1])
redis.call('EXPIRE', KEYS[3], tonumber(ARGV[4]))
redis.call('PUBLISH', ARGV[2], ARGV[3])
return {1, cur}
