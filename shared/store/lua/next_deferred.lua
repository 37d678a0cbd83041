-- Release the deferred task ids of a tenant that now fit under its running limit (TaskStore.next_deferred): up to
-- (free slots) ids that are still queued, oldest first, each put in the dispatch outbox (a run message is due);
-- ids no longer queued are dropped. Released ids go back in their kind's queue. A tenant with nothing deferred left
-- leaves the set of deferring tenants.
-- ARGV: 1 key prefix, 2 tenant, 3 default max running, 4 now (ms)
local prefix = ARGV[1]
local limit = running_limit(prefix, ARGV[2], ARGV[3])
local deferred = prefix .. ':t:' .. ARGV[2] .. ':deferred'
local free = redis.call('LLEN', deferred)
if limit > 0 then free = math.min(free, limit - running_count(prefix, ARGV[2])) end
local out = {}
while free > 0 do
  local id = redis.call('LPOP', deferred)
  if not id then break end
  local meta = redis.call('HMGET', prefix .. ':task:' .. id, 'status', 'kind', 'priority', 'created_at')
  if meta[1] == 'queued' then
    table.insert(out, id)
    redis.call('ZADD', prefix .. ':dispatch', ARGV[4], id)
    queue_add(prefix, id, meta[2], meta[3], meta[4])
    free = free - 1
  end
end
if redis.call('LLEN', deferred) == 0 then redis.call('SREM', prefix .. ':deferring', ARGV[2]) end
return out
