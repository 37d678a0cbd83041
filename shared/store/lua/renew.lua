-- Extend a lease if the worker still holds it. KEYS: lease; ARGV: worker id, lease ms. Returns 1, or 0 if lost.
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('PEXPIRE', KEYS[1], ARGV[2]) end
return 0
