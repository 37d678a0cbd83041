-- A guarded write to one task (TaskStore.apply): check its status, set fields, append an event, expire its keys
-- when it ended, publish a control notice; all or nothing.
-- KEYS: task, events, inbox, shots, lease, webhooks
-- ARGV: allowed_from (csv, '' = any status, '-' = none), event json ('' = none), stream maxlen,
--       expire seconds (0 = keep), control channel ('' = none), notice, key prefix, then field/value pairs
-- Returns {found (1 | 0 refused | -1 missing), status before, seq of the event (0 = none)}
if redis.call('EXISTS', KEYS[1]) == 0 then return {-1, '', 0} end
local cur = redis.call('HGET', KEYS[1], 'status')
if ARGV[1] ~= '' and not status_in(cur, ARGV[1]) then return {0, cur, 0} end
local new = nil
for i = 8, #ARGV, 2 do if ARGV[i] == 'status' then new = ARGV[i + 1] end end
if #ARGV > 7 then redis.call('HSET', KEYS[1], unpack(ARGV, 8)) end
if new and new ~= cur then move_status(KEYS[1], ARGV[7], cur, new) end
local seq = 0
if ARGV[2] ~= '' then seq = append_event(KEYS[1], KEYS[2], ARGV[3], ARGV[2]) end
local ttl = tonumber(ARGV[4])
if ttl > 0 then
  for i = 1, 4 do redis.call('EXPIRE', KEYS[i], ttl) end
  redis.call('EXPIRE', KEYS[6], ttl)
  redis.call('DEL', KEYS[5])
  redis.call('PUBLISH', ARGV[7] .. ':ended', id_of(KEYS[1], ARGV[7]))
end
if ARGV[5] ~= '' then redis.call('PUBLISH', ARGV[5], ARGV[6]) end
return {1, cur, seq}
