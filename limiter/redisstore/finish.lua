-- finish: end one reservation in one step (limiter.Finisher): settle or
-- release it (finish, the one end of a reservation), give the buckets it
-- charged back what the call did not use (limiter.Ending.Refunds, the first
-- time only), then apply the upstream's throttles, whether or not the id is
-- known or still open.
--
-- KEYS[1] expiry index, KEYS[2] record, KEYS[3] ended marker,
-- KEYS[4] the client's history of the month, KEYS[5] the call's cost
-- record (both the expiry index again without a call record),
-- KEYS[6..5+nt] the throttled buckets. The charged buckets' keys come from
-- the record (the prefix's hash tag: the same slot).
-- ARGV[1] prefix {P}:  ARGV[2] id  ARGV[3] outcome (settled|released)
-- ARGV[4] actual nano-$  ARGV[5] now µs (0 = TIME)  ARGV[6] nu  ARGV[7] nt
-- ARGV[8..] nu × (pool, units used), then nt × (capacity, refill, den
--           (refill is per den seconds), cap (-1: none), pause µs), then ns,
--           the savings to book, and ns × (strategy, nano-$)
--           (limiter.Ending.Booked: only a settle sends any, never a zero),
--           then the call record (limiter.CallRecord): has (0/1), route,
--           model, input tokens, output tokens, estimate, saved, history
--           TTL s, cost TTL ms, request id ("": no cost record), client
--
-- Returns {repeat, "outcome estimated spent", pool charges} (the charges a
-- spread reservation made on other slots, the first time; '' otherwise) or
-- nil for an unknown id.

local P = ARGV[1]
local now = now_us(ARGV[5])
local nu, nt = tonumber(ARGV[6]), tonumber(ARGV[7])
local used = {}
for i = 1, nu do used[ARGV[6 + 2 * i]] = tonumber(ARGV[7 + 2 * i]) end

local t0 = 7 + 2 * nu
-- The savings go to the client's ledger of the period ({P}:s:<client>:<period>,
-- the key of the first budget of the record's chain with s: for b:, so the
-- same slot), read before finish drops the record. Amounts stay strings:
-- HINCRBY keeps them exact.
local s0 = t0 + 5 * nt
local ns = tonumber(ARGV[s0 + 1]) or 0
local sk
if ns > 0 and ARGV[3] == 'settled' then
  local first = string.match(redis.call('HGET', KEYS[2], 'budgets') or '', '^[^\n]+')
  if first and string.sub(first, 1, #P + 2) == P .. 'b:' then sk = P .. 's:' .. string.sub(first, #P + 3) end
end

local r0 = s0 + 1 + 2 * ns
local has_rec = ARGV[r0 + 1] == '1'

local r = finish(P, ARGV[2], ARGV[3], tonumber(ARGV[4]))
if r and r[1] == 0 then
  for _, c in ipairs(charges_of(r[3])) do
    local u = used[pool_of(c.key)]
    if u then apply_adjust(P .. 'k:' .. c.key, c.cap, c.rate, c.den, c.units - u, -1, 0, now) end
  end
  if sk then
    for i = 1, ns do redis.call('HINCRBY', sk, ARGV[s0 + 2 * i], ARGV[s0 + 1 + 2 * i]) end
    redis.call('EXPIRE', sk, BUDGET_TTL)
  end
  if has_rec then
    -- History (settles only) and the cost record, in this same step.
    -- Fields are length-prefixed route and model, then the measure.
    local o, spent = string.match(r[2], '^(%S+) %S+ (%S+)$')
    local route, model, saved = ARGV[r0 + 2], ARGV[r0 + 3], ARGV[r0 + 7]
    if o == 'settled' then
      local pre = #route .. ':' .. route .. #model .. ':' .. model .. ':'
      redis.call('HINCRBY', KEYS[4], pre .. 'n', 1)
      redis.call('HINCRBY', KEYS[4], pre .. 'c', spent)
      redis.call('HINCRBY', KEYS[4], pre .. 'i', ARGV[r0 + 4])
      redis.call('HINCRBY', KEYS[4], pre .. 'o', ARGV[r0 + 5])
      if saved ~= '0' then redis.call('HINCRBY', KEYS[4], pre .. 's', saved) end
      redis.call('EXPIRE', KEYS[4], tonumber(ARGV[r0 + 8]))
    end
    -- The first call to book a request id keeps its record: a worker that
    -- sends another's x-request-id cannot overwrite it.
    if ARGV[r0 + 10] ~= '' and redis.call('EXISTS', KEYS[5]) == 0 then
      redis.call('HSET', KEYS[5], 'client', ARGV[r0 + 11], 'route', route, 'model', model, 'outcome', o,
        'estimate', ARGV[r0 + 6], 'actual', spent, 'saved', saved, 'in', ARGV[r0 + 4], 'out', ARGV[r0 + 5], 'at', int(now))
      redis.call('PEXPIRE', KEYS[5], tonumber(ARGV[r0 + 9]))
    end
  end
end
for j = 1, nt do
  local a = t0 + (j - 1) * 5
  apply_adjust(KEYS[5 + j], tonumber(ARGV[a + 1]), tonumber(ARGV[a + 2]), tonumber(ARGV[a + 3]), 0,
    tonumber(ARGV[a + 4]), tonumber(ARGV[a + 5]), now)
end
if not r then return nil end
return {r[1], r[2], r[4]}
