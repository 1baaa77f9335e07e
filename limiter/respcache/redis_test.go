package respcache_test

import (
	"context"
	"net"
	"os"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/redis/go-redis/v9"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/tollgate/tollgate/internal/redistest"
	"github.com/tollgate/tollgate/limiter/respcache"
	"github.com/tollgate/tollgate/limiter/respcache/cachetest"
)

var srv *redistest.Server

func TestMain(m *testing.M) { os.Exit(redistest.Main(m, &srv)) }

// redisConfig is a test's own prefix on the package's server.
func redisConfig(t testing.TB, o cachetest.Options) respcache.RedisConfig {
	cfg := respcache.DefaultRedisConfig()
	cfg.Prefix = redistest.Prefix(t)
	cfg.MaxEntryBytes = cachetest.MaxEntryBytes
	if o.Clock != nil {
		cfg.Clock = o.Clock
	}
	cfg.Metrics = o.Metrics
	return cfg
}

func newRedis(t testing.TB, c redis.UniversalClient, cfg respcache.RedisConfig) *respcache.Redis {
	t.Helper()
	r, err := respcache.NewRedis(c, cfg)
	require.NoError(t, err)
	return r
}

func TestRedisConformance(t *testing.T) {
	cachetest.Run(t, func(t *testing.T, o cachetest.Options) []respcache.Cache {
		cfg := redisConfig(t, o)
		cs := make([]respcache.Cache, o.Members)
		for i := range cs {
			cs[i] = newRedis(t, srv.Client(t), cfg) // a member: its own client and id, one prefix
		}
		return cs
	})
}

func TestTieredConformance(t *testing.T) {
	cachetest.Run(t, func(t *testing.T, o cachetest.Options) []respcache.Cache {
		cfg := redisConfig(t, o)
		cs := make([]respcache.Cache, o.Members)
		for i := range cs {
			l1, err := respcache.NewMemory(respcache.MemoryConfig{MaxEntryBytes: cachetest.MaxEntryBytes, Clock: o.Clock, Metrics: o.Metrics})
			require.NoError(t, err)
			cs[i] = respcache.NewTiered(l1, newRedis(t, srv.Client(t), cfg))
		}
		return cs
	})
}

// TestRedisKeys: every key lives under the prefix's hash tag (one slot),
// an entry is stored compressed with the TTL given, a claim with its
// lease, and nothing is left behind once the entries are gone.
func TestRedisKeys(t *testing.T) {
	ctx := context.Background()
	c := srv.Client(t)
	cfg := redisConfig(t, cachetest.Options{})
	r := newRedis(t, c, cfg)
	require.NoError(t, r.Load(ctx))
	k := respcache.Key{Kind: respcache.Response, Scope: "team:a", Route: "chat", Hash: "ab12"}
	body := strings.Repeat(`{"choices":[{"message":{"content":"the same words again"}}]}`, 100)

	_, st := r.Begin(ctx, k, 0, 30*time.Second)
	require.Equal(t, respcache.Lead, st)
	claim := "{" + cfg.Prefix + "}:rc:f:0:6:team:a:4:chat:ab12"
	lease, err := c.PTTL(ctx, claim).Result()
	require.NoError(t, err)
	assert.Positive(t, lease, "the claim is held with its lease")
	assert.LessOrEqual(t, lease, 30*time.Second)

	require.NoError(t, r.Complete(ctx, k, respcache.Entry{Status: 200, Body: []byte(body)}, time.Hour))
	assert.Zero(t, c.Exists(ctx, claim).Val(), "Complete ends the claim")
	keys, err := c.Keys(ctx, "*"+cfg.Prefix+"*").Result()
	require.NoError(t, err)
	slot := redisSlot("{" + cfg.Prefix + "}")
	for _, key := range keys {
		assert.True(t, strings.HasPrefix(key, "{"+cfg.Prefix+"}:rc:"), key)
		assert.Equal(t, slot, redisSlot(key), "one slot: %s", key)
	}
	entryKey := "{" + cfg.Prefix + "}:rc:e:0:6:team:a:4:chat:ab12"
	assert.ElementsMatch(t, []string{entryKey,
		"{" + cfg.Prefix + "}:rc:i:0:6:team:a:4:chat", "{" + cfg.Prefix + "}:rc:s:0:6:team:a", "{" + cfg.Prefix + "}:rc:r:0:4:chat"}, keys)
	v, err := c.Get(ctx, entryKey).Result()
	require.NoError(t, err)
	assert.Less(t, len(v), len(body)/10, "stored deflated: %d bytes for %d", len(v), len(body))
	ttl, err := c.PTTL(ctx, entryKey).Result()
	require.NoError(t, err)
	assert.Greater(t, ttl, 59*time.Minute)
	assert.LessOrEqual(t, ttl, time.Hour)

	ok, err := r.Delete(ctx, k)
	require.NoError(t, err)
	require.True(t, ok)
	n, err := c.ZCard(ctx, "{"+cfg.Prefix+"}:rc:i:0:6:team:a:4:chat").Result()
	require.NoError(t, err)
	assert.Zero(t, n, "Delete takes the entry out of its index")
}

// redisSlot is Redis Cluster's hash slot of key (CRC16 of its hash tag).
func redisSlot(key string) int {
	if i := strings.IndexByte(key, '{'); i >= 0 {
		if j := strings.IndexByte(key[i+1:], '}'); j > 0 {
			key = key[i+1 : i+1+j]
		}
	}
	crc := uint16(0)
	for _, b := range []byte(key) {
		crc ^= uint16(b) << 8
		for range 8 {
			if crc&0x8000 != 0 {
				crc = crc<<1 ^ 0x1021
			} else {
				crc <<= 1
			}
		}
	}
	return int(crc) % 16384
}

// TestRedisIndexPruned: an index keeps only what may still be live: lines
// of expired entries go at the next write, and the index expires with its
// longest-lived entry.
func TestRedisIndexPruned(t *testing.T) {
	ctx := context.Background()
	c := srv.Client(t)
	cfg := redisConfig(t, cachetest.Options{})
	r := newRedis(t, c, cfg)
	k := func(h string) respcache.Key { return respcache.Key{Scope: "s", Route: "r", Hash: h} }
	require.NoError(t, r.Complete(ctx, k("short"), respcache.Entry{Status: 200}, 5*time.Millisecond))
	idx := "{" + cfg.Prefix + "}:rc:i:0:1:s:1:r"
	require.Eventually(t, func() bool { return c.Exists(ctx, "{"+cfg.Prefix+"}:rc:e:0:1:s:1:r:short").Val() == 0 },
		10*time.Second, time.Millisecond)
	require.NoError(t, r.Complete(ctx, k("long"), respcache.Entry{Status: 200}, time.Hour))
	members, err := c.ZRange(ctx, idx, 0, -1).Result()
	require.NoError(t, err)
	assert.Equal(t, []string{"long"}, members, "the expired entry's line is pruned")
	ttl, err := c.PTTL(ctx, idx).Result()
	require.NoError(t, err)
	assert.Greater(t, ttl, 59*time.Minute, "the index lives as long as its longest entry")
}

// deadClient is a client of an address nothing listens on.
func deadClient(t *testing.T) *redis.Client {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	require.NoError(t, err)
	addr := l.Addr().String()
	require.NoError(t, l.Close())
	c := redis.NewClient(&redis.Options{Addr: addr, MaxRetries: -1, DialTimeout: 200 * time.Millisecond})
	t.Cleanup(func() { _ = c.Close() })
	return c
}

// slowClient is a client of a server that accepts connections and never
// answers, with a short read timeout.
func slowClient(t *testing.T) *redis.Client {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	require.NoError(t, err)
	var wg sync.WaitGroup
	var mu sync.Mutex
	var conns []net.Conn
	wg.Go(func() {
		for {
			conn, err := l.Accept()
			if err != nil {
				return
			}
			mu.Lock()
			conns = append(conns, conn)
			mu.Unlock()
		}
	})
	c := redis.NewClient(&redis.Options{Addr: l.Addr().String(), MaxRetries: -1, DialTimeout: 200 * time.Millisecond,
		ReadTimeout: 200 * time.Millisecond, WriteTimeout: 200 * time.Millisecond, ContextTimeoutEnabled: true})
	t.Cleanup(func() {
		_ = c.Close()
		_ = l.Close()
		wg.Wait()
		mu.Lock()
		for _, conn := range conns {
			_ = conn.Close()
		}
		mu.Unlock()
	})
	return c
}

// TestRedisDegrades: with Redis down or not answering, Get misses, Begin
// leads (the call goes upstream), Complete and the rest return errors, and
// every failure is counted; nothing waits past the client's timeouts.
func TestRedisDegrades(t *testing.T) {
	for name, client := range map[string]func(*testing.T) *redis.Client{"down": deadClient, "not answering": slowClient} {
		t.Run(name, func(t *testing.T) {
			ctx := context.Background()
			reg := prometheus.NewRegistry()
			mets, err := respcache.NewMetrics(reg)
			require.NoError(t, err)
			cfg := redisConfig(t, cachetest.Options{Metrics: mets})
			r := newRedis(t, client(t), cfg)
			k := key("h")

			_, ok := r.Get(ctx, k)
			assert.False(t, ok)
			_, st := r.Begin(ctx, k, 10*time.Second, time.Minute)
			assert.Equal(t, respcache.Lead, st, "no Redis, no flight: go upstream")
			assert.Error(t, r.Complete(ctx, k, body(10), time.Minute))
			r.Abandon(ctx, k)
			_, err = r.Delete(ctx, k)
			assert.Error(t, err)
			_, err = r.Invalidate(ctx, respcache.Response, "client-a", "")
			assert.Error(t, err)
			assert.Equal(t, 6.0, value(t, reg, "tollgate_cache_l2_errors_total"))

			l1, err := respcache.NewMemory(respcache.MemoryConfig{Metrics: mets})
			require.NoError(t, err)
			tc := respcache.NewTiered(l1, r)
			t.Cleanup(func() { assert.NoError(t, tc.Close()) })
			_, st = tc.Begin(ctx, k, 10*time.Second, time.Minute)
			require.Equal(t, respcache.Lead, st)
			err = tc.Complete(ctx, k, body(10), time.Minute)
			assert.Error(t, err, "the L2 failure is reported")
			assert.NotErrorIs(t, err, respcache.ErrTooLarge)
			got, ok := tc.Get(ctx, k)
			require.True(t, ok, "kept in L1 all the same")
			assert.Len(t, got.Body, 10)
			_, st = tc.Begin(ctx, k, 0, time.Minute)
			assert.Equal(t, respcache.Found, st)
		})
	}
	t.Run("a cancelled caller is no Redis error", func(t *testing.T) {
		reg := prometheus.NewRegistry()
		mets, err := respcache.NewMetrics(reg)
		require.NoError(t, err)
		r := newRedis(t, srv.Client(t), redisConfig(t, cachetest.Options{Metrics: mets}))
		ctx, cancel := context.WithCancel(context.Background())
		cancel()
		_, ok := r.Get(ctx, key("h"))
		assert.False(t, ok)
		_, st := r.Begin(ctx, key("h"), time.Second, time.Minute)
		assert.Equal(t, respcache.Busy, st, "nobody to lead for")
		assert.ErrorIs(t, r.Complete(ctx, key("h"), body(1), time.Minute), context.Canceled)
		assert.Zero(t, value(t, reg, "tollgate_cache_l2_errors_total"))
	})
}

func TestRedisConfig(t *testing.T) {
	c := srv.Client(t)
	for name, tc := range map[string]struct {
		cfg     func(*respcache.RedisConfig)
		wantErr string
	}{
		"default":             {cfg: func(*respcache.RedisConfig) {}},
		"zero means defaults": {cfg: func(c *respcache.RedisConfig) { *c = respcache.RedisConfig{Prefix: "p"} }},
		"no prefix":           {cfg: func(c *respcache.RedisConfig) { c.Prefix = "" }, wantErr: "prefix"},
		"brace in prefix":     {cfg: func(c *respcache.RedisConfig) { c.Prefix = "a}b" }, wantErr: "prefix"},
		"negative":            {cfg: func(c *respcache.RedisConfig) { c.LocalTTL = -1 }, wantErr: "negative"},
		"polls upside down":   {cfg: func(c *respcache.RedisConfig) { c.PollMin, c.PollMax = time.Second, time.Millisecond }, wantErr: "least is more"},
	} {
		t.Run(name, func(t *testing.T) {
			cfg := respcache.DefaultRedisConfig()
			tc.cfg(&cfg)
			r, err := respcache.NewRedis(c, cfg)
			if tc.wantErr != "" {
				require.ErrorContains(t, err, tc.wantErr)
				return
			}
			require.NoError(t, err)
			require.NotNil(t, r)
		})
	}
	_, err := respcache.NewRedis(nil, respcache.DefaultRedisConfig())
	assert.ErrorContains(t, err, "nil client")
}
