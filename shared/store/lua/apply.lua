-- A guarded write to one task (TaskStore.apply): check its status (and, for a worker's write, that the worker still
-- holds the task's lease: fencing), set fields, append an event, and when the task ends: expire its keys, drop its
-- lease, add the webhook delivery of its end to the outbox; publish a control notice. All or nothing.
-- KEYS: task, events, inbox, shots, lease, webhooks
-- ARGV: 1 allowed_from (csv, '' = any status, '-' = none), 2 event json ('' = none), 3 stream maxlen,
--       4 expire seconds (0 = the task goes on), 5 control channel ('' = none), 6 notice, 7 key prefix,
--       8 holder (the worker that must hold the lease; '' = any caller), 9 delivery id of the end's webhook ('' = none),
--       10 now (ms since the epoch), then field/value pairs
-- Returns {found (1 | 0 refused by status | -1 missing | -2 lease not held), status before, seq of the event (0 = none),
--          1 when the end's webhook delivery was added}
if redis.call('EXISTS', KEYS[1]) == 0 then return {-1, '', 0} end
local cur = redis.call('HGET', KEYS[1], 'status')
if ARGV[1] ~= '' and not status_in(cur, ARGV[1]) then return {0, cur, 0} end
if not holds(KEYS[5], ARGV[8]) then return {-2, cur, 0} end
local prefix = ARGV[7]
local task_id = id_of(KEYS[1], prefix)
local new = nil
for i = 11, #ARGV, 2 do
  if ARGV[i] == 'status' then new = ARGV[i + 1] end
  -- a step written again (a retry after a lost reply) is not written twice
  if ARGV[i] == 'steps_taken' and tonumber(redis.call('HGET', KEYS[1], 'steps_taken') or '0') >= tonumber(ARGV[i + 1])
  then return {1, cur, 0} end
end
if #ARGV > 10 then redis.call('HSET', KEYS[1], unpack(ARGV, 11)) end
if new and new ~= cur then move_status(KEYS[1], prefix, cur, new) end
local seq = 0
if ARGV[2] ~= '' then seq = append_event(KEYS[1], KEYS[2], ARGV[3], ARGV[2]) end
local ttl = tonumber(ARGV[4])
local delivered = 0
if ttl > 0 then
  for i = 1, 4 do redis.call('EXPIRE', KEYS[i], ttl) end
  redis.call('EXPIRE', KEYS[6], ttl)
  drop_lease(KEYS[5], prefix, task_id)
  redis.call('ZREM', prefix .. ':dispatch', task_id)
  redis.call('HDEL', KEYS[1], 'sealed_secrets')  -- a task's secrets live no longer than the task
  if ARGV[9] ~= '' and redis.call('HGET', KEYS[1], 'webhook_url') then
    local delivery = prefix .. ':delivery:' .. ARGV[9]
    redis.call('HSET', delivery, 'task_id', task_id, 'tenant', redis.call('HGET', KEYS[1], 'tenant'),
               'event', 'task.' .. new, 'attempt', 1)
    redis.call('EXPIRE', delivery, ttl)
    redis.call('ZADD', prefix .. ':deliveries', ARGV[10], ARGV[9])
    delivered = 1
  end
  redis.call('PUBLISH', prefix .. ':ended', task_id)
end
if ARGV[5] ~= '' then redis.call('PUBLISH', ARGV[5], ARGV[6]) end
return {1, cur, seq, delivered}
