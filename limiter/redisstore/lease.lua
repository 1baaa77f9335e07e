-- lease: hand out slices of buckets (limiter.ApplyLease, line for line).
--
-- KEYS[1..n]  bucket keys
-- ARGV[1] now (µs; 0 = Redis TIME)   ARGV[2] n
-- ARGV[3..]   per bucket: capacity, refill/s, want, need
--
-- Returns per bucket: granted, remaining, reset µs, retry µs, possible (0/1).

local now, n = now_us(ARGV[1]), tonumber(ARGV[2])
local out = {}
for i = 1, n do
  local a = 2 + (i - 1) * 4
  local cap, rate = tonumber(ARGV[a + 1]), tonumber(ARGV[a + 2])
  local want, need = tonumber(ARGV[a + 3]), tonumber(ARGV[a + 4])
  local full = cap * MICRO
  local v = redis.call('HMGET', KEYS[i], 'l', 't')
  local lvl, at
  if v[1] then lvl, at = tonumber(v[1]), tonumber(v[2]) else lvl, at = full, now end
  if lvl > full then lvl = full end
  if now > at then
    local el = now - at
    at = now
    if rate > 0 then
      if el >= ceil_div(full - lvl, rate) then lvl = full else lvl = lvl + el * rate end
    end
  end
  local avail = math.floor(math.max(lvl, 0) / MICRO)
  local ok, possible, wait = true, true, 0
  if need > 0 then
    if need > cap then
      ok, possible = false, false
    elseif lvl < need * MICRO then
      if rate > 0 then ok, wait = false, ceil_div(need * MICRO - lvl, rate) else ok, possible = false, false end
    end
  end
  local granted = 0
  if ok then
    granted = math.min(want, avail)
    lvl = lvl - granted * MICRO
  end
  local reset = 0
  if rate > 0 then reset = ceil_div(full - lvl, rate) end
  if granted > 0 then
    redis.call('HSET', KEYS[i], 'l', int(lvl), 't', int(at))
    if rate > 0 then
      redis.call('PEXPIRE', KEYS[i], math.floor(reset / 1000) + 1000)
    else
      redis.call('PERSIST', KEYS[i])
    end
  end
  local p = 0
  if possible then p = 1 end
  out[#out + 1] = granted
  out[#out + 1] = math.floor(math.max(lvl, 0) / MICRO)
  out[#out + 1] = reset
  out[#out + 1] = wait
  out[#out + 1] = p
end
return out
