-- Queue a user message for the agent (TaskStore.inject): inbox, a `message` event, a control notice.
-- KEYS: task, events, inbox
-- ARGV: allowed statuses (csv), message json, event json, stream maxlen, control channel, notice,
--       idempotency field of the record ('' = none; see keys.py message_key_field)
-- Returns {found (1 | 0 refused | -1 missing | 2 already injected with this key), status, seq of the event}
if redis.call('EXISTS', KEYS[1]) == 0 then return {-1, '', 0} end
local cur = redis.call('HGET', KEYS[1], 'status')
if ARGV[7] ~= '' then
  local seen = redis.call('HGET', KEYS[1], ARGV[7])
  if seen then return {2, cur, tonumber(seen)} end
end
if not status_in(cur, ARGV[1]) then return {0, cur, 0} end
redis.call('RPUSH', KEYS[3], ARGV[2])
local seq = append_event(KEYS[1], KEYS[2], ARGV[4], ARGV[3])
if ARGV[7] ~= '' then redis.call('HSET', KEYS[1], ARGV[7], seq) end
redis.call('PUBLISH', ARGV[5], ARGV[6])
return {1, cur, seq}
