-- lease_batch: refresh many bucket leases and slot leases in one call
-- (limiter.BatchLeaser): lease_bucket for each bucket, then lease_slots for
-- each client (common.lua), the functions lease.lua and slots.lua run, so
-- that each answer is the one the single-key script would give.
--
-- KEYS[1..n]      bucket keys        KEYS[n+1..n+m] the clients' slot sets
-- ARGV[1] now (µs; 0 = Redis TIME)   ARGV[2] n   ARGV[3] m
-- ARGV[4..]       per bucket: capacity, refill, den, want, need
--                 then per client: holder, want, max, ttl µs
--
-- Returns per bucket: granted, remaining, reset µs, retry µs, possible
-- (0/1); then per client: held, in flight (held included).

local now, n, m = now_us(ARGV[1]), tonumber(ARGV[2]), tonumber(ARGV[3])
local out = {}
for i = 1, n do
  local a = 3 + (i - 1) * 5
  lease_bucket(KEYS[i], tonumber(ARGV[a + 1]), tonumber(ARGV[a + 2]), tonumber(ARGV[a + 3]),
    tonumber(ARGV[a + 4]), tonumber(ARGV[a + 5]), now, out)
end
local base = 3 + n * 5
for j = 1, m do
  local a = base + (j - 1) * 4
  local held, in_flight = lease_slots(KEYS[n + j], ARGV[a + 1], tonumber(ARGV[a + 2]), tonumber(ARGV[a + 3]), tonumber(ARGV[a + 4]), now)
  out[#out + 1] = held
  out[#out + 1] = in_flight
end
return out
