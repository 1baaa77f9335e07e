-- Drop one entry and its line in the index.
-- KEYS[1] the entry, KEYS[2] the index of its scope and route.
-- ARGV[1] the hash. Replies 1 if the entry was there.
redis.call('ZREM', KEYS[2], ARGV[1])
return redis.call('UNLINK', KEYS[1])
