-- reserve: one admission, all or nothing (limiter.ApplyHold, line for line).
--
-- KEYS[1]        the prefix's expiry index ({P}:exp)
-- KEYS[2]        the reservation record ({P}:r:<id>; the index again without a hold)
-- KEYS[3]        the reservation's ended marker ({P}:d:<id>; likewise)
-- KEYS[4..]      nb bucket keys, then nbud budget keys, then the slot key (if any)
-- ARGV[1]  now (µs; 0 = Redis TIME)   ARGV[2] nb   ARGV[3] nbud
-- ARGV[4]  hold (0 none, 1 hold, 2 commit at once)  ARGV[5] id  ARGV[6] ttl µs  ARGV[7] cost (nano-$)
-- ARGV[8]  period      ARGV[9] slot max (-1: no slot)  ARGV[10] prefix {P}:
-- ARGV[11] veto (1: a shared pool on another slot said no: decide, report, write nothing)
-- ARGV[12] pool charges the record keeps for finish (charge_record entries of
--          buckets on other slots, keys as limiter.Key.String; '' for none)
-- ARGV[13..] per bucket: capacity, refill, den (refill is per den seconds),
--            cost, shadow (0/1); then per budget: limit (-1: unlimited)
--
-- Returns {allowed, reason, blocking, retry µs, budget blocking, in flight,
--          lapsed holds committed, per bucket: remaining, reset µs, short, retry µs,
--          per budget: spent, reserved, short}
-- or an error reply "DUPLICATE" when the id was used before.
--
-- PEEK (set by the line the Store puts before this file) makes it the
-- peek script: the same decision, nothing written (no lapsed hold
-- committed, no bucket saved, no hold or slot taken). The peek script is
-- flagged no-writes, so Redis itself refuses any write it would attempt.

local now = now_us(ARGV[1])
local nb, nbud = tonumber(ARGV[2]), tonumber(ARGV[3])
local hold = ARGV[4] ~= '0'
local commit = ARGV[4] == '2'
local id, ttl, cost, period = ARGV[5], tonumber(ARGV[6]), tonumber(ARGV[7]), ARGV[8]
local slot_max, P = tonumber(ARGV[9]), ARGV[10]
local veto, pcharges = ARGV[11] == '1', ARGV[12]
local A = 12 -- arguments before the buckets'

local expired = 0
if hold and not PEEK then expired = expire_due(P, now, 8) end
if hold and not commit and not PEEK then
  if redis.call('EXISTS', KEYS[2]) == 1 or redis.call('EXISTS', KEYS[3]) == 1 then
    return redis.error_reply('DUPLICATE reservation id')
  end
end

local allowed, reason, blocking, retry = 1, '', -1, 0
local b = {}
for i = 1, nb do
  local a = A + (i - 1) * 5
  local cap, rate, den = tonumber(ARGV[a + 1]), tonumber(ARGV[a + 2]), tonumber(ARGV[a + 3])
  local c, shadow = tonumber(ARGV[a + 4]), ARGV[a + 5] == '1'
  local lvl, at = load_bucket(KEYS[3 + i], cap, rate, den, now)
  local ok, possible, wait = check_units(lvl, cap, rate, MICRO * den, c)
  b[i] = {lvl = lvl, at = at, cap = cap, rate = rate, den = den, scale = MICRO * den, c = c, short = 0, wait = 0}
  if not ok then
    b[i].short, b[i].wait = 1, wait
    if not shadow then
      local r = 'rate_limited'
      if not possible then r = 'exceeds_capacity' end
      if allowed == 1 then
        allowed, reason, blocking, retry = 0, r, i - 1, wait
      elseif reason == 'rate_limited' and (r == 'exceeds_capacity' or wait > retry) then
        reason, blocking, retry = r, i - 1, wait
      end
    end
  end
end

local bud, budget_blocking, in_flight = {}, -1, 0
local slot_key = KEYS[3 + nb + nbud + 1]
if hold then
  if slot_max >= 0 and not commit then
    if PEEK then
      in_flight = redis.call('ZCOUNT', slot_key, '(' .. int(now), '+inf')
    else
      redis.call('ZREMRANGEBYSCORE', slot_key, '-inf', now)
      in_flight = redis.call('ZCARD', slot_key)
    end
    if in_flight >= slot_max and reason ~= 'exceeds_capacity' then
      allowed, reason, retry = 0, 'concurrency', 0
    end
  end
  for j = 1, nbud do
    local limit = tonumber(ARGV[A + nb * 5 + j])
    local v = redis.call('HMGET', KEYS[3 + nb + j], 'spent', 'reserved')
    local spent, reserved = tonumber(v[1]) or 0, tonumber(v[2]) or 0
    local short = 0
    if limit >= 0 and spent + reserved + cost > limit then
      short = 1
      if budget_blocking < 0 then budget_blocking = j - 1 end
    end
    bud[j] = {spent = spent, reserved = reserved, short = short}
  end
  if budget_blocking >= 0 then allowed, reason, retry = 0, 'budget_exceeded', 0 end
end
if veto then allowed = 0 end
if reason == 'exceeds_capacity' then retry = 0 end
if reason ~= 'rate_limited' and reason ~= 'exceeds_capacity' then blocking = -1 end

local out = {allowed, reason, blocking, retry, budget_blocking, 0, expired}
for i = 1, nb do
  local s = b[i]
  if allowed == 1 and s.short == 0 then s.lvl = s.lvl - s.c * s.scale end
  local reset = refill_us(s.lvl, s.cap, s.rate, s.scale)
  if allowed == 1 and not PEEK then save_bucket(KEYS[3 + i], s.lvl, s.at, s.rate, s.den, reset) end
  out[#out + 1] = math.floor(math.max(s.lvl, 0) / s.scale)
  out[#out + 1] = reset
  out[#out + 1] = s.short
  out[#out + 1] = s.wait
end

if PEEK then
  -- nothing is written; in flight is what the reserve would leave
  -- and budgets as the reserve would leave them.
  if hold and allowed == 1 then
    if slot_max >= 0 and not commit then in_flight = in_flight + 1 end
    for j = 1, nbud do
      if commit then bud[j].spent = bud[j].spent + cost else bud[j].reserved = bud[j].reserved + cost end
    end
  end
elseif commit and allowed == 1 then
  for j = 1, nbud do
    local bk = KEYS[3 + nb + j]
    redis.call('HINCRBY', bk, 'spent', int(cost))
    redis.call('EXPIRE', bk, BUDGET_TTL)
    bud[j].spent = bud[j].spent + cost
  end
elseif hold and allowed == 1 then
  local exp = now + ttl
  local keys = {}
  for j = 1, nbud do
    local bk = KEYS[3 + nb + j]
    redis.call('HINCRBY', bk, 'reserved', int(cost))
    redis.call('EXPIRE', bk, BUDGET_TTL)
    bud[j].reserved = bud[j].reserved + cost
    keys[#keys + 1] = bk
  end
  local sk = ''
  if slot_max >= 0 then
    redis.call('ZADD', slot_key, int(exp), id)
    -- The set lives as long as its longest hold: a shorter one never cuts it.
    local keep = math.floor(ttl / 1000) + 1000
    if redis.call('PTTL', slot_key) < keep then redis.call('PEXPIRE', slot_key, keep) end
    in_flight = in_flight + 1
    sk = slot_key
  end
  -- What the admission charged (limiter.Charged), refunded in part when the
  -- reservation is finished.
  local charged = {}
  for i = 1, nb do
    if b[i].short == 0 then charged[#charged + 1] = charge_record(b[i].cap, b[i].rate, b[i].den, b[i].c, string.sub(KEYS[3 + i], #P + 3)) end
  end
  redis.call('HSET', KEYS[2], 'cost', int(cost), 'period', period, 'budgets', table.concat(keys, '\n'), 'slot', sk, 'exp', int(exp),
    'charges', table.concat(charged))
  if pcharges ~= '' then redis.call('HSET', KEYS[2], 'pcharges', pcharges) end
  -- Outlive the TTL: the expiry sweep must still find the record to commit it.
  redis.call('PEXPIRE', KEYS[2], math.floor(ttl / 1000) + DONE_TTL * 1000)
  redis.call('ZADD', KEYS[1], int(exp), id)
end
out[6] = in_flight
for j = 1, nbud do
  out[#out + 1] = bud[j].spent
  out[#out + 1] = bud[j].reserved
  out[#out + 1] = bud[j].short
end
return out
