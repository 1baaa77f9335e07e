-- Look an entry up and, when there is none, claim its flight.
-- KEYS[1] the entry, KEYS[2] its flight's claim.
-- ARGV[1] this member's id, ARGV[2] the lease in ms (0: claim nothing),
-- ARGV[3] now in Unix ms by the member's clock (an entry whose expiry,
-- bytes 2-9 of its value, is not after it counts as none).
-- Replies {1, entry} found; {2} claimed: lead; {3} lead without a claim
-- (no lease, or the last answer could not be kept: see release.lua);
-- {0} another call holds the claim.
local e = redis.call('GET', KEYS[1])
if e and (string.len(e) < 9 or struct.unpack('>i8', e, 2) > tonumber(ARGV[3])) then
  return {1, e}
end
local f = redis.call('GET', KEYS[2])
if not f then
  if tonumber(ARGV[2]) <= 0 then
    return {3}
  end
  redis.call('SET', KEYS[2], ARGV[1], 'NX', 'PX', ARGV[2])
  return {2}
end
if f == '!' then
  return {3}
end
return {0}
