-- Extend a lease if the worker still holds it, and its expiry in the leases index.
-- KEYS: lease, leases; ARGV: worker id, lease ms, task id, now (ms). Returns 1, or 0 if the lease is lost.
if redis.call('GET', KEYS[1]) == ARGV[1] then
  redis.call('PEXPIRE', KEYS[1], ARGV[2])
  redis.call('ZADD', KEYS[2], tonumber(ARGV[4]) + tonumber(ARGV[2]), ARGV[3])
  return 1
end
return 0
