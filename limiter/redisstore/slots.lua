-- slots: set a holder's leased concurrency slots of a client
-- (limiter.SlotLeaser). Leased slots are members "L:<holder>:<i>", i = 1..k,
-- of the client's slot set, scored by their expiry like reservations, so
-- reserve.lua counts them.
--
-- KEYS[1] the client's slot set
-- ARGV[1] now (µs; 0 = TIME)  ARGV[2] holder  ARGV[3] want  ARGV[4] max  ARGV[5] ttl µs
--
-- Returns {held, in flight (held included)}.

local now = now_us(ARGV[1])
local holder, want, max, ttl = ARGV[2], tonumber(ARGV[3]), tonumber(ARGV[4]), tonumber(ARGV[5])
local key = KEYS[1]
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
return {target, others + target}
