-- Saved environments (shared/store/environments.py): take one for a task, let go of it, save it, delete it.
-- KEYS: the environment's record (<prefix>:env:<id>), the tenant's index (<prefix>:t:<tenant>:environments).
-- ARGV[1] is the operation, ARGV[2] the key prefix, ARGV[3] now in ms, ARGV[4] the grace in ms, then per operation:
--   take    ARGV: op, prefix, now_ms, grace_ms, task_id, tenant, kind, create (1|0), now_s, retention_s
--           -> {1} taken (created when missing and create is 1), {-1} no such environment of the tenant,
--              {-2, kind} it is of another kind, {0, holder} another active task holds it
--   release ARGV: op, prefix, now_ms, grace_ms, task_id
--           -> 1 let go (an environment this task created and never saved is deleted), 0 not held by it
--   save    ARGV: op, prefix, now_ms, grace_ms, task_id, now_s, size_bytes, artifact, retention_s
--           -> {1, previous artifact or ""} saved, {-1} no such environment, {0, holder} held by another task
--   delete  ARGV: op, prefix, now_ms, grace_ms, tenant
--           -> {1, artifact or ""} deleted, {-1} no such environment of the tenant, {0, holder} in use
local env, index = KEYS[1], KEYS[2]
local op, prefix, now_ms, grace_ms = ARGV[1], ARGV[2], tonumber(ARGV[3]), tonumber(ARGV[4])
local TERMINAL = {completed = true, failed = true, cancelled = true, timed_out = true}  -- shared/states.py
local function env_id()
  return string.sub(env, string.len(prefix) + 6)
end

-- the active task holding the environment, other than `me` (false when none): a holder whose record ended no
-- longer holds it; one with no record holds it only within the grace (its submit is still storing it)
local function holder_other_than(me)
  local h = redis.call('HMGET', env, 'in_use_by', 'in_use_since')
  local holder = h[1]
  if not holder or holder == '' or holder == me then return false end
  local status = redis.call('HGET', prefix .. ':task:' .. holder, 'status')
  if status then
    if TERMINAL[status] then return false end
    return holder
  end
  if now_ms - tonumber(h[2] or '0') < grace_ms then return holder end
  return false
end

if op == 'take' then
  local task_id, tenant, kind, create, now_s, retention = ARGV[5], ARGV[6], ARGV[7], ARGV[8], ARGV[9], ARGV[10]
  local meta = redis.call('HMGET', env, 'tenant', 'kind')
  if not meta[1] then
    if create ~= '1' then return {-1} end
    redis.call('HSET', env, 'tenant', tenant, 'kind', kind, 'created_at', now_s, 'updated_at', now_s,
               'size_bytes', '0', 'source_task_id', task_id, 'artifact', '', 'saves', '0',
               'in_use_by', task_id, 'in_use_since', now_ms)
    redis.call('EXPIRE', env, retention)
    redis.call('ZADD', index, now_s, env_id())
    return {1}
  end
  if meta[1] ~= tenant then return {-1} end
  if meta[2] ~= kind then return {-2, meta[2]} end
  local holder = holder_other_than(task_id)
  if holder then return {0, holder} end
  redis.call('HSET', env, 'in_use_by', task_id, 'in_use_since', now_ms, 'updated_at', now_s)
  redis.call('EXPIRE', env, retention)
  redis.call('ZADD', index, now_s, env_id())
  return {1}
end

if op == 'release' then
  local task_id = ARGV[5]
  local h = redis.call('HMGET', env, 'in_use_by', 'saves', 'source_task_id')
  if h[1] ~= task_id then return 0 end
  if h[2] == '0' and h[3] == task_id then  -- created for this task, which never ran: nothing to keep
    redis.call('DEL', env)
    redis.call('ZREM', index, env_id())
    return 1
  end
  redis.call('HDEL', env, 'in_use_by', 'in_use_since')
  return 1
end

if op == 'save' then
  local task_id, now_s, size, artifact, retention = ARGV[5], ARGV[6], ARGV[7], ARGV[8], ARGV[9]
  if redis.call('EXISTS', env) == 0 then return {-1} end
  local holder = holder_other_than(task_id)
  if holder then return {0, holder} end
  local previous = redis.call('HGET', env, 'artifact') or ''
  redis.call('HSET', env, 'updated_at', now_s, 'saved_at', now_s, 'size_bytes', size, 'source_task_id', task_id,
             'artifact', artifact)
  redis.call('HINCRBY', env, 'saves', 1)
  redis.call('EXPIRE', env, retention)
  redis.call('ZADD', index, now_s, env_id())
  return {1, previous}
end

if op == 'delete' then
  local tenant = ARGV[5]
  local meta = redis.call('HMGET', env, 'tenant', 'artifact')
  if not meta[1] or meta[1] ~= tenant then return {-1} end
  local holder = holder_other_than('')
  if holder then return {0, holder} end
  redis.call('DEL', env)
  redis.call('ZREM', index, env_id())
  return {1, meta[2] or ''}
end

return redis.error_reply('environment.lua: unknown operation ' .. tostring(op))
