-- Record an entry and end its flight.
-- KEYS[1] the entry, KEYS[2] its flight's claim, KEYS[3] the index of its
-- scope and route (hashes), KEYS[4] its scope's routes, KEYS[5] its route's
-- scopes: sorted sets scored by expiry (Redis TIME, ms), pruned here, so
-- they hold only what may still be live.
-- ARGV[1] the encoded entry, ARGV[2] the ttl in ms, ARGV[3] this member's
-- id, ARGV[4] the hash, ARGV[5] the scope, ARGV[6] the route.
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local ttl = tonumber(ARGV[2])
local exp = now + ttl
redis.call('SET', KEYS[1], ARGV[1], 'PX', ttl)
local function index(key, member)
  redis.call('ZREMRANGEBYSCORE', key, '-inf', now)
  local cur = redis.call('ZSCORE', key, member)
  if not cur or tonumber(cur) < exp then
    redis.call('ZADD', key, exp, member)
  end
  if redis.call('PTTL', key) < ttl then
    redis.call('PEXPIRE', key, ttl)
  end
end
index(KEYS[3], ARGV[4])
index(KEYS[4], ARGV[6])
index(KEYS[5], ARGV[5])
if redis.call('GET', KEYS[2]) == ARGV[3] then
  redis.call('DEL', KEYS[2])
end
return 1
