-- lease: hand out slices of buckets (limiter.ApplyLease, line for line;
-- lease_bucket in common.lua).
--
-- KEYS[1..n]  bucket keys
-- ARGV[1] now (µs; 0 = Redis TIME)   ARGV[2] n
-- ARGV[3..]   per bucket: capacity, refill, den (refill is per den seconds),
--             want, need
--
-- Returns per bucket: granted, remaining, reset µs, retry µs, possible (0/1).

local now, n = now_us(ARGV[1]), tonumber(ARGV[2])
local out = {}
for i = 1, n do
  local a = 2 + (i - 1) * 5
  lease_bucket(KEYS[i], tonumber(ARGV[a + 1]), tonumber(ARGV[a + 2]), tonumber(ARGV[a + 3]),
    tonumber(ARGV[a + 4]), tonumber(ARGV[a + 5]), now, out)
end
return out
