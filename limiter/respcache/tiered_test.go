package respcache_test

import (
	"context"
	"sync/atomic"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/redis/go-redis/v9"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/tollgate/tollgate/internal/fakeclock"
	"github.com/tollgate/tollgate/limiter/respcache"
	"github.com/tollgate/tollgate/limiter/respcache/cachetest"
)

// member is one fleet member's Tiered cache on the package's server.
type member struct {
	*respcache.Tiered
	l1     *respcache.Memory
	begins *atomic.Int64 // runs of begin.lua from this member
}

// scriptCounter counts a member's runs of one script.
type scriptCounter struct {
	sha string
	n   *atomic.Int64
}

func (scriptCounter) DialHook(next redis.DialHook) redis.DialHook { return next }
func (s scriptCounter) ProcessHook(next redis.ProcessHook) redis.ProcessHook {
	return func(ctx context.Context, cmd redis.Cmder) error {
		if args := cmd.Args(); len(args) > 1 && (cmd.Name() == "evalsha" || cmd.Name() == "eval") && args[1] == s.sha {
			s.n.Add(1)
		}
		return next(ctx, cmd)
	}
}
func (scriptCounter) ProcessPipelineHook(next redis.ProcessPipelineHook) redis.ProcessPipelineHook {
	return next
}

func newMember(t *testing.T, cfg respcache.RedisConfig) member {
	t.Helper()
	c := srv.Client(t)
	n := &atomic.Int64{}
	c.AddHook(scriptCounter{sha: respcache.Scripts["begin"].Hash(), n: n})
	r := newRedis(t, c, cfg)
	require.NoError(t, r.Load(context.Background()))
	l1, err := respcache.NewMemory(respcache.MemoryConfig{Clock: cfg.Clock, Metrics: cfg.Metrics})
	require.NoError(t, err)
	tc := respcache.NewTiered(l1, r)
	t.Cleanup(func() { assert.NoError(t, tc.Close()) })
	return member{Tiered: tc, l1: l1, begins: n}
}

// TestTieredCoalescesLocally: ten identical calls on one member wait in
// L1 for the one that leads there; only it asks Redis (one run of
// begin.lua: one claim).
func TestTieredCoalescesLocally(t *testing.T) {
	reg := prometheus.NewRegistry()
	mets, err := respcache.NewMetrics(reg)
	require.NoError(t, err)
	m := newMember(t, redisConfig(t, cachetest.Options{Metrics: mets}))
	ctx := context.Background()
	k := key("flight")
	const n = 10
	states := make(chan respcache.State, n)
	for range n {
		go func() {
			e, st := m.Begin(ctx, k, 20*time.Second, 20*time.Second)
			if st == respcache.Lead {
				require.Eventually(t, func() bool {
					return value(t, reg, "tollgate_cache_lookups_total", "kind", "response", "level", "l1", "result", "miss") == n
				}, 20*time.Second, time.Millisecond, "all ten have looked")
				assert.NoError(t, m.Complete(ctx, k, body(4096), time.Minute))
			} else {
				assert.Len(t, e.Body, 4096)
			}
			states <- st
		}()
	}
	counts := map[respcache.State]int{}
	for range n {
		counts[<-states]++
	}
	assert.Equal(t, map[respcache.State]int{respcache.Lead: 1, respcache.Found: n - 1}, counts)
	assert.EqualValues(t, 1, m.begins.Load(), "one claim in Redis for ten calls")
	assert.Equal(t, float64(n-1), value(t, reg, "tollgate_cache_flight_waits_total", "result", "found"))
	assert.Equal(t, 1.0, value(t, reg, "tollgate_cache_lookups_total", "kind", "response", "level", "l2", "result", "miss"))
}

// TestTieredLocalCopies: an L2 hit is copied into L1 for the entry's
// remaining TTL, at most LocalTTL; a copy outlives an invalidation made on
// another member by at most LocalTTL.
func TestTieredLocalCopies(t *testing.T) {
	reg := prometheus.NewRegistry()
	mets, err := respcache.NewMetrics(reg)
	require.NoError(t, err)
	clk := fakeclock.New(cachetest.Epoch)
	cfg := redisConfig(t, cachetest.Options{Clock: clk, Metrics: mets})
	cfg.LocalTTL = 5 * time.Minute
	a, b := newMember(t, cfg), newMember(t, cfg)
	ctx := context.Background()
	l1Hits := func() float64 {
		return value(t, reg, "tollgate_cache_lookups_total", "kind", "response", "level", "l1", "result", "hit")
	}

	t.Run("remaining ttl", func(t *testing.T) {
		k := key("short")
		require.NoError(t, a.Complete(ctx, k, body(100), 3*time.Minute))
		clk.Advance(time.Minute)
		_, ok := b.Get(ctx, k)
		require.True(t, ok, "from L2")
		before := l1Hits()
		_, ok = b.Get(ctx, k)
		require.True(t, ok)
		assert.Equal(t, before+1, l1Hits(), "then from L1")
		clk.Advance(2 * time.Minute)
		_, ok = b.l1.Get(ctx, k)
		assert.False(t, ok, "the copy ends with the entry")
		_, ok = b.Get(ctx, k)
		assert.False(t, ok)
	})
	t.Run("at most LocalTTL, stale after another member's invalidate", func(t *testing.T) {
		k := respcache.Key{Scope: "client-b", Route: "chat", Hash: "long"}
		require.NoError(t, a.Complete(ctx, k, body(100), time.Hour))
		_, ok := b.Get(ctx, k)
		require.True(t, ok)
		n, err := a.Invalidate(ctx, respcache.Response, k.Scope, "")
		require.NoError(t, err)
		require.Equal(t, 1, n)
		_, ok = a.Get(ctx, k)
		assert.False(t, ok, "gone on the member that invalidated")
		_, ok = b.Get(ctx, k)
		assert.True(t, ok, "another member's copy stays...")
		clk.Advance(5 * time.Minute)
		_, ok = b.Get(ctx, k)
		assert.False(t, ok, "...for LocalTTL at most")
	})
}

// TestTieredBegin: a member's leader that finds the entry in L2 gives it
// to the member's waiters through L1.
func TestTieredBeginFindsL2(t *testing.T) {
	cfg := redisConfig(t, cachetest.Options{})
	a, b := newMember(t, cfg), newMember(t, cfg)
	ctx := context.Background()
	k := key("h")
	require.NoError(t, a.Complete(ctx, k, body(10), time.Minute))
	e, st := b.Begin(ctx, k, 0, time.Minute)
	require.Equal(t, respcache.Found, st)
	assert.Len(t, e.Body, 10)
	e, ok := b.l1.Get(ctx, k)
	require.True(t, ok, "copied into the member's L1")
	assert.Len(t, e.Body, 10)
}
