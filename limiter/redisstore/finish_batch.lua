-- finish_batch: end many reservations in one call (limiter.BatchFinisher),
-- each as finish.lua ends it when nothing was used, throttled or saved:
-- common.lua's finish, in order.
--
-- KEYS[1] expiry index, then per id: record, ended marker. The budget keys
-- come from each record (the prefix's hash tag: the same slot).
-- ARGV[1] prefix {P}:  ARGV[2] n  ARGV[3..] n × (id, outcome, actual nano-$)
--
-- Returns per id: repeat (0/1; -1: unknown id), "outcome estimated spent"
-- ('' for an unknown id).

local P, n = ARGV[1], tonumber(ARGV[2])
local out = {}
for i = 1, n do
  local a = 2 + (i - 1) * 3
  local r = finish(P, ARGV[a + 1], ARGV[a + 2], tonumber(ARGV[a + 3]))
  if r then
    out[#out + 1] = r[1]
    out[#out + 1] = r[2]
  else
    out[#out + 1] = -1
    out[#out + 1] = ''
  end
end
return out
