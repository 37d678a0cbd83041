-- Pop the deferred task ids of a tenant that now fit under its running limit (TaskStore.next_deferred): up to
-- (free slots) ids that are still queued, oldest first; ids no longer queued are dropped.
-- ARGV: key prefix, tenant, default max running
local limit = running_limit(ARGV[1], ARGV[2], ARGV[3])
local deferred = ARGV[1] .. ':t:' .. ARGV[2] .. ':deferred'
local free = redis.call('LLEN', deferred)
if limit > 0 then free = math.min(free, limit - running_count(ARGV[1], ARGV[2])) end
local out = {}
while free > 0 do
  local id = redis.call('LPOP', deferred)
  if not id then break end
  if redis.call('HGET', ARGV[1] .. ':task:' .. id, 'status') == 'queued' then
    table.insert(out, id)
    free = free - 1
  end
end
return out
