-- End a flight without an entry, if this member holds its claim.
-- KEYS[1] the flight's claim. ARGV[1] this member's id, ARGV[2] 0 to drop
-- the claim (abandon: one waiter claims it next), or ms to mark the key
-- '!' for that long instead (the answer could not be kept: every waiter,
-- and every call meanwhile, goes upstream without a claim).
if redis.call('GET', KEYS[1]) ~= ARGV[1] then
  return 0
end
if tonumber(ARGV[2]) > 0 then
  redis.call('SET', KEYS[1], '!', 'PX', ARGV[2])
else
  redis.call('DEL', KEYS[1])
end
return 1
