-- slots: set a holder's leased concurrency slots of a client
-- (limiter.SlotLeaser; lease_slots in common.lua). Leased slots are members
-- "L:<holder>:<i>", i = 1..k, of the client's slot set, scored by their
-- expiry like reservations, so reserve.lua counts them.
--
-- KEYS[1] the client's slot set
-- ARGV[1] now (µs; 0 = TIME)  ARGV[2] holder  ARGV[3] want  ARGV[4] max  ARGV[5] ttl µs
--
-- Returns {held, in flight (held included)}.

local held, in_flight = lease_slots(KEYS[1], ARGV[2], tonumber(ARGV[3]), tonumber(ARGV[4]), tonumber(ARGV[5]), now_us(ARGV[1]))
return {held, in_flight}
