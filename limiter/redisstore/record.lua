-- record: book the history and cost records of calls ended elsewhere (a
-- fleet member's local reservations), exactly once per batch
-- (limiter.Recorder), as finish.lua books them for a call ended here.
--
-- KEYS[1] the batch's marker ({P}:jr:<batch>), then per end: its client's
-- history of the month, its cost record (the marker again when it has no
-- request id)
-- ARGV[1] n  ARGV[2] history TTL s  ARGV[3] cost TTL ms
-- ARGV[4..] per end: outcome, spent, route, model, input tokens, output
-- tokens, estimate, saved, request id ("": none), client, at µs
--
-- Returns 1 when applied, 0 when the batch was applied before.

local n = tonumber(ARGV[1])
if redis.call('EXISTS', KEYS[1]) == 1 then return 0 end
for i = 1, n do
  local a = 3 + (i - 1) * 11
  local o, spent, route, model = ARGV[a + 1], ARGV[a + 2], ARGV[a + 3], ARGV[a + 4]
  local saved = ARGV[a + 8]
  local hk, ck = KEYS[2 * i], KEYS[2 * i + 1]
  if o == 'settled' then
    local pre = #route .. ':' .. route .. #model .. ':' .. model .. ':'
    redis.call('HINCRBY', hk, pre .. 'n', 1)
    redis.call('HINCRBY', hk, pre .. 'c', spent)
    redis.call('HINCRBY', hk, pre .. 'i', ARGV[a + 5])
    redis.call('HINCRBY', hk, pre .. 'o', ARGV[a + 6])
    if saved ~= '0' then redis.call('HINCRBY', hk, pre .. 's', saved) end
    redis.call('EXPIRE', hk, tonumber(ARGV[2]))
  end
  if ARGV[a + 9] ~= '' and redis.call('EXISTS', ck) == 0 then -- the first booking of an id keeps it
    redis.call('HSET', ck, 'client', ARGV[a + 10], 'route', route, 'model', model, 'outcome', o,
      'estimate', ARGV[a + 7], 'actual', spent, 'saved', saved, 'in', ARGV[a + 5], 'out', ARGV[a + 6], 'at', ARGV[a + 11])
    redis.call('PEXPIRE', ck, tonumber(ARGV[3]))
  end
end
redis.call('SET', KEYS[1], '1', 'EX', DONE_TTL)
return 1
