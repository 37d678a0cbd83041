-- A sender takes a webhook delivery (Deliveries.take): when it is due, or when the sender brings the token the
-- reaper handed it out with. Its due time becomes the end of the sender's claim, so nobody else sends it meanwhile;
-- a sender that dies leaves it due again when the claim ends.
-- KEYS: deliveries, delivery; ARGV: 1 delivery id, 2 now (ms), 3 claim ms, 4 token ('' = none)
-- Returns the delivery's fields as a flat list, or {} when it is gone or another sender holds it.
local score = redis.call('ZSCORE', KEYS[1], ARGV[1])
if not score then return {} end
if redis.call('EXISTS', KEYS[2]) == 0 then
  redis.call('ZREM', KEYS[1], ARGV[1])
  return {}
end
local handed = ARGV[4] ~= '' and redis.call('HGET', KEYS[2], 'token') == ARGV[4]
if tonumber(score) > tonumber(ARGV[2]) and not handed then return {} end
redis.call('ZADD', KEYS[1], tonumber(ARGV[2]) + tonumber(ARGV[3]), ARGV[1])
redis.call('HSET', KEYS[2], 'token', '')
return redis.call('HGETALL', KEYS[2])
