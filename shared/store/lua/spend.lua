-- Record one model call as it returns (Budgets.spend): add its usage and cost to the task's running sums (so GET
-- shows what was spent at every moment, a pause included), to its batch's spending (when the batch has a budget)
-- and to its tenant's spending of the UTC day, and to the fleet's counters by model (<prefix>:metrics); only while
-- `holder` still holds the task's lease (fencing).
-- KEYS: task, lease
-- ARGV: 1 holder ('' = any caller), 2 key prefix, 3 input tokens, 4 output tokens, 5 calls, 6 cost USD ('' = unknown:
--       the model has no price), 7 UTC day ("YYYY-MM-DD"), 8 ttl of the day's sum (s), 9 ttl of a batch budget (s),
--       10 the default model (a record does not store it)
-- Returns {found (1 | -1 missing | -2 lease not held), the task's cost, the batch's spending, the day's spending}
-- ('' where unknown, or the batch has no budget)
if redis.call('EXISTS', KEYS[1]) == 0 then return {-1, '', '', ''} end
if not holds(KEYS[2], ARGV[1]) then return {-2, '', '', ''} end
local prefix = ARGV[2]
local raw = redis.call('HGET', KEYS[1], 'usage')
local usage = {}
if raw and raw ~= '' then usage = cjson.decode(raw) end
local tin, tout = tonumber(ARGV[3]), tonumber(ARGV[4])
usage.input_tokens = (usage.input_tokens or 0) + tin
usage.output_tokens = (usage.output_tokens or 0) + tout
usage.total_tokens = (usage.total_tokens or 0) + tin + tout
usage.calls = (usage.calls or 0) + tonumber(ARGV[5])
redis.call('HSET', KEYS[1], 'usage', cjson.encode(usage))
local who = redis.call('HMGET', KEYS[1], 'model', 'tenant')
local model, tenant = who[1] or ARGV[10], who[2] or ''
count(prefix, tonumber(ARGV[5]), 'model_calls', model, tenant)
count(prefix, tin, 'model_tokens', model, tenant, 'input')
count(prefix, tout, 'model_tokens', model, tenant, 'output')
if ARGV[6] ~= '' then
  redis.call('HINCRBYFLOAT', prefix .. ':metrics', table.concat({'model_cost_usd', model, tenant}, '\31'), ARGV[6])
end
local cost = redis.call('HGET', KEYS[1], 'cost') or ''
local batch_spent, day_spent = '', ''
if ARGV[6] ~= '' then
  cost = string.format('%.12g', (tonumber(cost) or 0) + tonumber(ARGV[6]))
  redis.call('HSET', KEYS[1], 'cost', cost)
  local meta = redis.call('HMGET', KEYS[1], 'batch_id', 'tenant')
  if meta[1] and redis.call('EXISTS', prefix .. ':batch:' .. meta[1]) == 1 then
    local batch = prefix .. ':batch:' .. meta[1]
    batch_spent = redis.call('HINCRBYFLOAT', batch, 'spent', ARGV[6])
    redis.call('EXPIRE', batch, ARGV[9])
  end
  local day = prefix .. ':t:' .. meta[2] .. ':spent:' .. ARGV[7]
  day_spent = redis.call('INCRBYFLOAT', day, ARGV[6])
  redis.call('EXPIRE', day, ARGV[8])
end
return {1, cost, batch_spent, day_spent}
