-- Shared by every Tollgate script (prepended at load time). Integers only:
-- Lua numbers are doubles, exact below 2^53, and every amount Tollgate
-- stores (micro-units, microseconds, nano-dollars) is kept below that.

local MICRO = 1000000
local DONE_TTL = 86400          -- seconds an ended reservation's outcome is kept
local BUDGET_TTL = 70 * 86400   -- seconds a budget period outlives its last write

local function now_us(arg)
  local n = tonumber(arg)
  if n and n > 0 then return n end
  local t = redis.call('TIME')
  return tonumber(t[1]) * MICRO + tonumber(t[2])
end

local function ceil_div(a, b)
  if a <= 0 then return 0 end
  return math.floor((a + b - 1) / b)
end

-- int formats a whole number for Redis. Lua's -0 (the negation of a zero
-- cost) would print as "-0", which HINCRBY refuses.
local function int(x)
  if x == 0 then return '0' end
  return string.format('%.0f', x)
end

-- Bucket levels count 1/(MICRO·den) parts of a unit, den being the
-- limit's refill period in seconds (limiter.Limit.Den: 1 for a rate per
-- second, 3 for 10000/min, which is 500 every 3 s), so that a bucket gains
-- exactly its refill of them every microsecond. A bucket stores its den in
-- field 'd' when it is not 1 (a bucket without one, as every bucket stored
-- before rates had periods, is at den 1).
local MIN_LEVEL = -7000000000000000

-- rescale converts a level at den from to den to (limiter's rescale, line
-- for line): rounded down, full at cap_micro micro-units or more, never
-- below MIN_LEVEL. Every product stays below 2^53.
local function rescale(lvl, from, to, cap_micro)
  local q = math.floor(lvl / from)
  local r = lvl - q * from
  if q >= cap_micro then return cap_micro * to end
  if q < -math.floor(-MIN_LEVEL / to) - 1 then return MIN_LEVEL end
  return math.max(q * to + math.floor(r * to / from), MIN_LEVEL)
end

-- stored_den remembers, per bucket key this script loaded, the den it was
-- stored at, so that save_bucket drops a 'd' that no longer applies.
local stored_den = {}

-- load_bucket reads a bucket and advances it to now (limiter.Bucket.Advance;
-- a bucket never seen is full; one stored at another den is rescaled
-- first). It returns its level (1/(MICRO·den) parts of a unit), time and
-- full level.
local function load_bucket(key, cap, rate, den, now)
  local full = cap * MICRO * den
  local v = redis.call('HMGET', key, 'l', 't', 'd')
  local lvl, at
  if v[1] then
    lvl, at = tonumber(v[1]), tonumber(v[2])
    local from = tonumber(v[3]) or 1
    stored_den[key] = from
    if from ~= den then lvl = rescale(lvl, from, den, cap * MICRO) end
  else
    lvl, at = full, now
  end
  if lvl > full then lvl = full end
  if now > at then
    local el = now - at
    at = now
    if rate > 0 then
      if el >= ceil_div(full - lvl, rate) then lvl = full else lvl = lvl + el * rate end
    end
  end
  return lvl, at, full
end

-- check_units says whether c units fit at level lvl (limiter.Bucket.Check;
-- scale is MICRO·den): ok, possible (false: never, above the capacity or
-- without refill), and the wait in microseconds until they would.
local function check_units(lvl, cap, rate, scale, c)
  if c <= 0 then return true, true, 0 end
  if c > cap then return false, false, 0 end
  if lvl >= c * scale then return true, true, 0 end
  if rate > 0 then return false, true, ceil_div(c * scale - lvl, rate) end
  return false, false, 0
end

-- refill_us is how long until a bucket at lvl is full again.
local function refill_us(lvl, cap, rate, scale)
  if rate > 0 then return ceil_div(cap * scale - lvl, rate) end
  return 0
end

-- save_bucket writes a bucket back, with its den (none for 1), to be
-- forgotten a second after it is full again (a full bucket is as good as
-- none); one that never refills is never forgotten.
local function save_bucket(key, lvl, at, rate, den, reset)
  if den > 1 then
    redis.call('HSET', key, 'l', int(lvl), 't', int(at), 'd', int(den))
  else
    redis.call('HSET', key, 'l', int(lvl), 't', int(at))
    if (stored_den[key] or 1) ~= 1 then redis.call('HDEL', key, 'd') end
  end
  if rate > 0 then
    redis.call('PEXPIRE', key, math.floor(reset / 1000) + 1000)
  else
    redis.call('PERSIST', key)
  end
end

-- add_units adds units (taken when negative) to a level of scale parts a
-- unit, clamped to [MIN_LEVEL, full] (limiter's addUnits, line for line):
-- the product is not formed when it would saturate.
local function add_units(lvl, units, scale, full)
  if units >= 0 and units >= ceil_div(full - lvl, scale) then return full end
  if units < 0 and -units >= ceil_div(lvl - MIN_LEVEL, scale) then return MIN_LEVEL end
  return math.min(lvl + units * scale, full)
end

-- apply_adjust applies an adjustment to a stored bucket and writes it back
-- (limiter.ApplyAdjust, line for line): the refund (clamped to [MIN_LEVEL,
-- capacity]), then the cap (capto, -1: none), then the pause (µs). It
-- returns the bucket's whole units remaining and its reset µs.
local function apply_adjust(key, cap, rate, den, refund, capto, pause, now)
  local scale = MICRO * den
  local lvl, at, full = load_bucket(key, cap, rate, den, now)
  lvl = add_units(lvl, refund, scale, full)
  if capto >= 0 then lvl = math.min(lvl, math.min(capto, cap) * scale) end
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
  local reset = refill_us(lvl, cap, rate, scale)
  if lvl >= full then
    redis.call('DEL', key) -- a full bucket is as good as none
  else
    save_bucket(key, lvl, at, rate, den, reset)
  end
  return math.floor(math.max(lvl, 0) / scale), reset
end

-- A reservation records what its admission charged (limiter.Charge), back
-- to back in its 'charges' field: "capacity refill units n:key" per bucket
-- ("capacity refill/den units n:key" for a den other than 1), key being the
-- n bytes of the bucket's key after the prefix's "k:" (limiter.Key.String).
-- Lengths, not separators, delimit it: a key may hold any byte.
local function charge_record(cap, rate, den, units, key)
  local r = int(rate)
  if den > 1 then r = r .. '/' .. int(den) end
  return int(cap) .. ' ' .. r .. ' ' .. int(units) .. ' ' .. #key .. ':' .. key
end

-- charges_of reads a 'charges' field back into {key, cap, rate, den, units}
-- entries (den 1 when the record has none, as records written before rates
-- had periods); it stops at anything malformed.
local function charges_of(s)
  local out, pos = {}, 1
  while pos <= #s do
    local cap, rate, den, units, n, p = string.match(s, '^(%d+) (%d+)/?(%d*) (%d+) (%d+):()', pos)
    if not p then break end
    n = tonumber(n)
    out[#out + 1] = {key = string.sub(s, p, p + n - 1), cap = tonumber(cap), rate = tonumber(rate),
      den = tonumber(den) or 1, units = tonumber(units)}
    pos = p + n
  end
  return out
end

-- pool_of is the pool a bucket key names ("n:pool:m:client").
local function pool_of(key)
  local n, p = string.match(key, '^(%d+):()')
  if not p then return nil end
  return string.sub(key, p, p + tonumber(n) - 1)
end

-- finish ends reservation id (see limiter.Ledger): spend is the actual
-- cost when settled, nothing when released, the estimate when expired.
-- It returns {repeat (0/1), "outcome estimated spent", charges, pool
-- charges} (charges only the first time; pool charges are those a spread
-- reservation made on other slots, for the caller to refund there) or nil
-- when the id is unknown. Keys it touches come
-- from the reservation record and share its hash tag, so they live in the
-- same slot.
local function finish(P, id, outcome, actual)
  local dk = P .. 'd:' .. id
  local prev = redis.call('GET', dk)
  if prev then return {1, prev, '', ''} end
  local rk = P .. 'r:' .. id
  local r = redis.call('HMGET', rk, 'cost', 'budgets', 'slot', 'charges', 'pcharges')
  if not r[1] then return nil end
  local est = tonumber(r[1])
  local spend = est
  if outcome == 'settled' then spend = actual elseif outcome == 'released' then spend = 0 end
  for bk in string.gmatch(r[2] or '', '[^\n]+') do
    redis.call('HINCRBY', bk, 'reserved', int(-est))
    redis.call('HINCRBY', bk, 'spent', int(spend))
    redis.call('EXPIRE', bk, BUDGET_TTL)
  end
  if r[3] and r[3] ~= '' then redis.call('ZREM', r[3], id) end
  redis.call('DEL', rk)
  redis.call('ZREM', P .. 'exp', id)
  local rec = outcome .. ' ' .. int(est) .. ' ' .. int(spend)
  redis.call('SET', dk, rec, 'EX', DONE_TTL)
  return {0, rec, r[4] or '', r[5] or ''}
end

-- expire_due commits up to max lapsed reservations at their estimate and
-- returns how many it ended. An id whose record is gone (evicted, or expired
-- before any sweep) or that has already ended is dropped from the index:
-- left there, it would fill every sweep's window.
local function expire_due(P, now, max)
  local ids = redis.call('ZRANGEBYSCORE', P .. 'exp', '-inf', now, 'LIMIT', 0, max)
  local n = 0
  for _, id in ipairs(ids) do
    local r = finish(P, id, 'expired', 0)
    if r and r[1] == 0 then n = n + 1 else redis.call('ZREM', P .. 'exp', id) end
  end
  return n
end

-- lease_bucket hands out up to want units of bucket key when need of them
-- are there (limiter.ApplyLease) and appends its answer to out: granted,
-- remaining, reset µs, retry µs, possible (0/1). lease.lua and
-- lease_batch.lua share it, so a batch answers as the single call would.
local function lease_bucket(key, cap, rate, den, want, need, now, out)
  local scale = MICRO * den
  local lvl, at = load_bucket(key, cap, rate, den, now)
  local avail = math.floor(math.max(lvl, 0) / scale)
  local ok, possible, wait = check_units(lvl, cap, rate, scale, need)
  local granted = 0
  if ok then
    granted = math.min(want, avail)
    lvl = lvl - granted * scale
  end
  local reset = refill_us(lvl, cap, rate, scale)
  if granted > 0 then save_bucket(key, lvl, at, rate, den, reset) end
  local p = 0
  if possible then p = 1 end
  out[#out + 1] = granted
  out[#out + 1] = math.floor(math.max(lvl, 0) / scale)
  out[#out + 1] = reset
  out[#out + 1] = wait
  out[#out + 1] = p
end

-- lease_slots sets holder's leased concurrency slots in a client's slot
-- set (limiter.SlotLeaser): members "L:<holder>:<i>", i = 1..k, scored by
-- their expiry like reservations, so reserve.lua counts them. It returns
-- the slots held and those in flight (held included). slots.lua and
-- lease_batch.lua share it.
local function lease_slots(key, holder, want, max, ttl, now)
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
  return target, others + target
end
