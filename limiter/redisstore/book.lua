-- book: apply a batch of spend deltas exactly once (limiter.Booker).
--
-- KEYS[1] the batch's marker ({P}:j:<batch>), KEYS[2..n+1] budget keys,
-- then, when any delta has savings, KEYS[n+2..2n+1] the owners' savings
-- ({P}:s:<owner>:<period>)
-- ARGV[1] n   ARGV[2..n+1] deltas (nano-$, may be negative), then with
-- savings, per delta: m, m × (strategy, nano-$)
--
-- Returns 1 when applied, 0 when the batch was applied before.

local n = tonumber(ARGV[1])
if redis.call('EXISTS', KEYS[1]) == 1 then return 0 end
for i = 1, n do
  local d = tonumber(ARGV[1 + i])
  if d ~= 0 then redis.call('HINCRBY', KEYS[1 + i], 'spent', int(d)) end
  redis.call('EXPIRE', KEYS[1 + i], BUDGET_TTL)
end
local a = n + 2
for i = 1, n do
  local m = tonumber(ARGV[a]) or 0
  for j = 1, m do redis.call('HINCRBY', KEYS[1 + n + i], ARGV[a + 2 * j - 1], ARGV[a + 2 * j]) end
  if m > 0 then redis.call('EXPIRE', KEYS[1 + n + i], BUDGET_TTL) end
  a = a + 1 + 2 * m
end
redis.call('SET', KEYS[1], '1', 'EX', DONE_TTL)
return 1
