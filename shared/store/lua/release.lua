-- Delete a lease if the worker still holds it (compare-and-delete), and its entry in the leases index.
-- KEYS: lease, leases; ARGV: worker id, task id. Returns 1, or 0 when the worker did not hold it.
if redis.call('GET', KEYS[1]) == ARGV[1] then
  redis.call('DEL', KEYS[1])
  redis.call('ZREM', KEYS[2], ARGV[2])
  return 1
end
return 0
