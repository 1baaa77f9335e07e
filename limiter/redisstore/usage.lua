-- usage: read a budget chain and the owner's slots in use. Changes nothing.
-- KEYS[1..n] budget keys, KEYS[n+1] slot key   ARGV[1] now µs (0 = TIME)  ARGV[2] n
-- Returns {in flight, per budget: spent, reserved}
local now, n = now_us(ARGV[1]), tonumber(ARGV[2])
local out = {redis.call('ZCOUNT', KEYS[n + 1], '(' .. int(now), '+inf')}
for j = 1, n do
  local v = redis.call('HMGET', KEYS[j], 'spent', 'reserved')
  out[#out + 1] = tonumber(v[1]) or 0
  out[#out + 1] = tonumber(v[2]) or 0
end
return out
