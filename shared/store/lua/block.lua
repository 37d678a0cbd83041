-- Hold every caller of a provider's limit scope back until ARGV[1] (ms since the epoch), unless an earlier
-- retry-after already holds them longer (ProviderLimits.block). KEYS: the scope's blocked key; ARGV: 1 until (ms),
-- 2 now (ms).
-- Returns the ms until which the scope is blocked now.
local until_ms = tonumber(ARGV[1])
local current = tonumber(redis.call('GET', KEYS[1]) or '0')
if current >= until_ms then return current end
redis.call('SET', KEYS[1], ARGV[1], 'PX', math.max(1, until_ms - tonumber(ARGV[2])))
return until_ms
