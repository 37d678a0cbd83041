-- Delete a lease if the worker still holds it (compare-and-delete). KEYS: lease; ARGV: worker id
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
