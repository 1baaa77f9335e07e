-- finish: settle, release or (on demand) expire one reservation.
-- KEYS[1] expiry index, KEYS[2] record, KEYS[3] ended marker
-- ARGV[1] prefix {P}:  ARGV[2] id  ARGV[3] outcome (settled|released)  ARGV[4] actual nano-$
-- Returns {repeat, "outcome estimated spent"} or nil for an unknown id.
return finish(ARGV[1], ARGV[2], ARGV[3], tonumber(ARGV[4]))
