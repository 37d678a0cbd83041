-- The reaper gives due webhook deliveries out (Deliveries.hand): each gets the token that lets the sender it is
-- handed to take it, and is due again at ARGV[1] if that sender never does. Deliveries gone meanwhile are dropped.
-- KEYS: deliveries; ARGV: 1 due (ms), 2 key prefix, then delivery id / token pairs
-- Returns the ids handed out.
local out = {}
for i = 3, #ARGV, 2 do
  local delivery = ARGV[2] .. ':delivery:' .. ARGV[i]
  if redis.call('EXISTS', delivery) == 1 then
    redis.call('HSET', delivery, 'token', ARGV[i + 1])
    redis.call('ZADD', KEYS[1], 'XX', ARGV[1], ARGV[i])
    table.insert(out, ARGV[i])
  else
    redis.call('ZREM', KEYS[1], ARGV[i])
  end
end
return out
