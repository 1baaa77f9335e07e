-- adjust: correct buckets after the fact (limiter.ApplyAdjust, line for line).
--
-- KEYS[1..n]  bucket keys
-- ARGV[1] now (µs; 0 = Redis TIME)   ARGV[2] n
-- ARGV[3..]   per bucket: capacity, refill/s, refund, cap (-1: none), pause µs
--
-- Returns per bucket: remaining, reset µs.

local now, n = now_us(ARGV[1]), tonumber(ARGV[2])
local MIN_LEVEL = -7000000000000000
local out = {}
for i = 1, n do
  local a = 2 + (i - 1) * 5
  local cap, rate = tonumber(ARGV[a + 1]), tonumber(ARGV[a + 2])
  local refund, capto, pause = tonumber(ARGV[a + 3]), tonumber(ARGV[a + 4]), tonumber(ARGV[a + 5])
  local lvl, at, full = load_bucket(KEYS[i], cap, rate, now)
  lvl = math.min(math.max(lvl + refund * MICRO, MIN_LEVEL), full)
  if capto >= 0 then lvl = math.min(lvl, math.min(capto, cap) * MICRO) end
  if pause > 0 then
    local debt = 0
    if rate > 0 then
      debt = -MIN_LEVEL
      -- floor(a / b) is exact for integers below 2^53: a quotient's distance to
      -- the next integer (at least 1/b) exceeds half its ulp
      if pause < math.floor(-MIN_LEVEL / rate) then debt = pause * rate end
    end
    lvl = math.min(lvl, -debt)
  end
  local reset = refill_us(lvl, cap, rate)
  if lvl >= full then
    redis.call('DEL', KEYS[i]) -- a full bucket is as good as none
  else
    save_bucket(KEYS[i], lvl, at, rate, reset)
  end
  out[#out + 1] = math.floor(math.max(lvl, 0) / MICRO)
  out[#out + 1] = reset
end
return out
