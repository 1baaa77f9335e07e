-- expire: commit up to ARGV[3] lapsed reservations at their estimate.
-- KEYS[1] expiry index   ARGV[1] prefix {P}:  ARGV[2] now µs (0 = TIME)  ARGV[3] max
return expire_due(ARGV[1], now_us(ARGV[2]), tonumber(ARGV[3]))
