-- adjust: correct buckets after the fact (limiter.Adjuster's Refund and
-- Throttle, as limiter.ApplyAdjust; see apply_adjust).
--
-- KEYS[1..n]  bucket keys
-- ARGV[1] now (µs; 0 = Redis TIME)   ARGV[2] n
-- ARGV[3..]   per bucket: capacity, refill, den (refill is per den seconds),
--             refund, cap (-1: none), pause µs
--
-- Returns per bucket: remaining, reset µs.

local now, n = now_us(ARGV[1]), tonumber(ARGV[2])
local out = {}
for i = 1, n do
  local a = 2 + (i - 1) * 6
  local remaining, reset = apply_adjust(KEYS[i], tonumber(ARGV[a + 1]), tonumber(ARGV[a + 2]), tonumber(ARGV[a + 3]),
    tonumber(ARGV[a + 4]), tonumber(ARGV[a + 5]), tonumber(ARGV[a + 6]), now)
  out[#out + 1] = remaining
  out[#out + 1] = reset
end
return out
