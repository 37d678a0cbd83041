-- Helpers prepended to every script of shared/store/lua (see scripts.py). Key names follow shared/store/keys.py.

-- records do not store their id: it is the end of their key ("<prefix>:task:<id>")
local function id_of(task_key, prefix)
  return string.sub(task_key, string.len(prefix) + 7)
end

-- put a queued task in its kind's queue (<prefix>:queue:<kind>), scored as the broker serves it: priority band, then
-- created_at (shared/store/queueinfo.py queue_score). A record does not store kind "browser" nor priority "normal".
local QUEUE_BANDS = {high = 1e10, normal = 2e10, low = 3e10}
local function queue_add(prefix, task_id, kind, priority, created_at)
  local score = (QUEUE_BANDS[priority or 'normal'] or QUEUE_BANDS.normal) + tonumber(created_at)
  redis.call('ZADD', prefix .. ':queue:' .. (kind or 'browser'), string.format('%.3f', score), task_id)
end

-- the fleet-wide counters (<prefix>:metrics, shared/store/metrics.py): one hash whose fields are a counter's name
-- and its label values joined by the unit separator (byte 31)
local function count(prefix, by, ...)
  redis.call('HINCRBY', prefix .. ':metrics', table.concat({...}, '\31'), by)
end

local ENDED = {completed = true, failed = true, cancelled = true, timed_out = true}

-- move a task between its tenant's status indexes (the sorted sets <prefix>:t:<tenant>:status:<status>), and in or
-- out of its kind's queue; count the task as started (queued -> running: a claim) or ended (a terminal status)
local function move_status(task_key, prefix, from, to)
  local meta = redis.call('HMGET', task_key, 'tenant', 'created_at', 'kind', 'priority')
  local base = prefix .. ':t:' .. meta[1] .. ':status:'
  local task_id = id_of(task_key, prefix)
  redis.call('ZREM', base .. from, task_id)
  redis.call('ZADD', base .. to, meta[2], task_id)
  if from == 'queued' then redis.call('ZREM', prefix .. ':queue:' .. (meta[3] or 'browser'), task_id) end
  if to == 'queued' then queue_add(prefix, task_id, meta[3], meta[4], meta[2]) end
  local kind, priority = meta[3] or 'browser', meta[4] or 'normal'
  if from == 'queued' and to == 'running' then count(prefix, 1, 'started', kind, priority, meta[1]) end
  if ENDED[to] then count(prefix, 1, 'ended', kind, priority, meta[1], to) end
end

-- the tenant's running and paused tasks
local function running_count(prefix, tenant)
  local base = prefix .. ':t:' .. tenant .. ':status:'
  return redis.call('ZCARD', base .. 'running') + redis.call('ZCARD', base .. 'paused')
end

-- the tenant's max_running, else the deployment's default (0: no limit)
local function running_limit(prefix, tenant, default)
  local limit = redis.call('HGET', prefix .. ':tenant:' .. tenant, 'max_running')
  if limit == false or limit == '' then return tonumber(default) end
  return tonumber(limit)
end

-- is `status` one of the comma-separated `allowed`?
local function status_in(status, allowed)
  for s in string.gmatch(allowed, '[^,]+') do if s == status then return true end end
  return false
end

-- append an event to the task's stream (id 0-<seq>) and publish it on the channel of the same name
local function append_event(task_key, events_key, maxlen, event)
  local seq = redis.call('HINCRBY', task_key, 'event_seq', 1)
  redis.call('XADD', events_key, 'MAXLEN', '~', maxlen, '0-' .. seq, 'data', event)
  redis.call('PUBLISH', events_key, seq .. ' ' .. event)
  return seq
end

-- forget a task's lease: the lease key and its entry in the leases index (<prefix>:leases)
local function drop_lease(lease_key, prefix, task_id)
  redis.call('DEL', lease_key)
  redis.call('ZREM', prefix .. ':leases', task_id)
end

-- does `worker` hold the task's lease? ('' = no fencing asked)
local function holds(lease_key, worker)
  return worker == '' or redis.call('GET', lease_key) == worker
end
