-- book: apply a batch of spend deltas exactly once (limiter.Booker).
--
-- KEYS[1] the batch's marker ({P}:j:<batch>), KEYS[2..n+1] budget keys
-- ARGV[1] n   ARGV[2..n+1] deltas (nano-$, may be negative)
--
-- Returns 1 when applied, 0 when the batch was applied before.

local n = tonumber(ARGV[1])
if redis.call('EXISTS', KEYS[1]) == 1 then return 0 end
for i = 1, n do
  local d = tonumber(ARGV[1 + i])
  if d ~= 0 then redis.call('HINCRBY', KEYS[1 + i], 'spent', int(d)) end
  redis.call('EXPIRE', KEYS[1 + i], BUDGET_TTL)
end
redis.call('SET', KEYS[1], '1', 'EX', DONE_TTL)
return 1
