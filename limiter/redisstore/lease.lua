-- lease: hand out slices of buckets (limiter.ApplyLease, line for line).
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
  local cap, rate, den = tonumber(ARGV[a + 1]), tonumber(ARGV[a + 2]), tonumber(ARGV[a + 3])
  local want, need = tonumber(ARGV[a + 4]), tonumber(ARGV[a + 5])
  local scale = MICRO * den
  local lvl, at = load_bucket(KEYS[i], cap, rate, den, now)
  local avail = math.floor(math.max(lvl, 0) / scale)
  local ok, possible, wait = check_units(lvl, cap, rate, scale, need)
  local granted = 0
  if ok then
    granted = math.min(want, avail)
    lvl = lvl - granted * scale
  end
  local reset = refill_us(lvl, cap, rate, scale)
  if granted > 0 then save_bucket(KEYS[i], lvl, at, rate, den, reset) end
  local p = 0
  if possible then p = 1 end
  out[#out + 1] = granted
  out[#out + 1] = math.floor(math.max(lvl, 0) / scale)
  out[#out + 1] = reset
  out[#out + 1] = wait
  out[#out + 1] = p
end
return out
