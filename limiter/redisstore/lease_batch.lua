-- lease_batch: refresh many bucket leases and slot leases in one call
-- (limiter.BatchLeaser): lease.lua's loop over the buckets, then slots.lua's
-- body for each client, line for line, so that each answer is the one the
-- single-key script would give.
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
local base = 3 + n * 5
for j = 1, m do
  local a = base + (j - 1) * 4
  local holder, want, max, ttl = ARGV[a + 1], tonumber(ARGV[a + 2]), tonumber(ARGV[a + 3]), tonumber(ARGV[a + 4])
  local key = KEYS[n + j]
  redis.call('ZREMRANGEBYSCORE', key, '-inf', now)
  local total = redis.call('ZCARD', key)
  local mine = 0
  while redis.call('ZSCORE', key, 'L:' .. holder .. ':' .. (mine + 1)) do mine = mine + 1 end
  local others = total - mine
  local target = math.max(math.min(want, max - others), 0)
  for i = target + 1, mine do redis.call('ZREM', key, 'L:' .. holder .. ':' .. i) end
  local exp = now + ttl
  for i = 1, target do redis.call('ZADD', key, int(exp), 'L:' .. holder .. ':' .. i) end
  if target > 0 then
    local keep = math.floor(ttl / 1000) + 1000
    if redis.call('PTTL', key) < keep then redis.call('PEXPIRE', key, keep) end
  end
  out[#out + 1] = target
  out[#out + 1] = others + target
end
return out
