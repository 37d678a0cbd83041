-- Take or keep a lock (the reaper's): set it when free, extend it when `owner` holds it.
-- KEYS: lock; ARGV: owner, ms. Returns 1 when `owner` holds the lock now, else 0.
local holder = redis.call('GET', KEYS[1])
if not holder then
  redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
  return 1
end
if holder == ARGV[1] then
  redis.call('PEXPIRE', KEYS[1], ARGV[2])
  return 1
end
return 0
