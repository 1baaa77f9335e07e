-- usage: read a budget chain, the owner's slots in use and its savings in
-- the period. Changes nothing.
-- KEYS[1..n] budget keys, KEYS[n+1] slot key, KEYS[n+2] the owner's savings
-- (when n > 0)   ARGV[1] now µs (0 = TIME)  ARGV[2] n
-- Returns {in flight, per budget: spent, reserved, then with KEYS[n+2]:
-- m, m × (strategy, nano-$)}
local now, n = now_us(ARGV[1]), tonumber(ARGV[2])
local out = {redis.call('ZCOUNT', KEYS[n + 1], '(' .. int(now), '+inf')}
for j = 1, n do
  local v = redis.call('HMGET', KEYS[j], 'spent', 'reserved')
  out[#out + 1] = tonumber(v[1]) or 0
  out[#out + 1] = tonumber(v[2]) or 0
end
if KEYS[n + 2] then
  local sv = redis.call('HGETALL', KEYS[n + 2])
  out[#out + 1] = #sv / 2
  for _, x in ipairs(sv) do out[#out + 1] = x end
end
return out
