package redisstore_test

import (
	"context"
	"os"
	"sync"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/tollgate/tollgate/internal/redistest"
	"github.com/tollgate/tollgate/limiter"
	"github.com/tollgate/tollgate/limiter/redisstore"
	"github.com/tollgate/tollgate/limiter/storetest"
)

var (
	srv *redistest.Server
	// rc is a three-master Redis Cluster: the conformance suite runs on it too.
	rc *redistest.Cluster
)

func TestMain(m *testing.M) { os.Exit(redistest.MainCluster(m, &srv, &rc, 3)) }

// The internal fuzz tests record their seeds from this package's server.
func init() {
	redisstore.LiveClient = func(tb testing.TB) redis.UniversalClient { return srv.Client(tb) }
}

// newStore returns a store with a key prefix of the test's own on the
// package's redis-server.
func newStore(t *testing.T) *redisstore.Store {
	t.Helper()
	s, err := redisstore.New(srv.Client(t), redisstore.Config{Prefix: redistest.Prefix(t)})
	require.NoError(t, err)
	return s
}

func TestConformance(t *testing.T) {
	storetest.Run(t, func(t *testing.T, _ limiter.Clock) limiter.Store { return newStore(t) })
}

func TestLedgerConformance(t *testing.T) {
	storetest.RunLedger(t, func(t *testing.T, _ limiter.Clock) limiter.Backend { return newStore(t) })
}

func TestLeaseConformance(t *testing.T) {
	storetest.RunLease(t, func(t *testing.T, _ limiter.Clock) limiter.Backend { return newStore(t) })
}

func TestAdjustConformance(t *testing.T) {
	storetest.RunAdjust(t, func(t *testing.T, _ limiter.Clock) limiter.Store { return newStore(t) })
}

// TestSameBucketTwice: a request naming one bucket twice is refused, as the
// memory store refuses it, rather than decided on a level read twice.
func TestSameBucketTwice(t *testing.T) {
	s := newStore(t)
	k, l := limiter.Key{Pool: "p", Client: "c"}, limiter.Limit{Capacity: 5, Refill: 1}
	_, err := s.Reserve(context.Background(), limiter.Request{
		Takes: []limiter.Take{{Key: k, Limit: l, Cost: 3}, {Key: limiter.Key{Pool: "p"}, Limit: l, Cost: 1}, {Key: k, Limit: l, Cost: 3}},
		Now:   storetest.Epoch,
	})
	require.Error(t, err)
	d, err := s.Reserve(context.Background(), limiter.Request{Takes: []limiter.Take{{Key: k, Limit: l}}, Now: storetest.Epoch})
	require.NoError(t, err)
	assert.Equal(t, int64(5), d.Buckets[0].Remaining, "the refused request took nothing")
}

// TestExpireMax: Expire ends at most max reservations; zero or a negative
// max ends none, as in the memory store.
func TestExpireMax(t *testing.T) {
	tests := map[string]struct {
		max, want int
	}{
		"negative": {max: -1, want: 0},
		"zero":     {max: 0, want: 0},
		"one":      {max: 1, want: 1},
		"more":     {max: 10, want: 3},
	}
	for name, tc := range tests {
		t.Run(name, func(t *testing.T) {
			ctx := context.Background()
			s := newStore(t)
			for _, id := range []string{"a", "b", "c"} {
				d, err := s.Reserve(ctx, limiter.Request{Now: storetest.Epoch, Hold: &limiter.Hold{
					ID: id, TTL: time.Second, Period: "2026-01", Cost: 1, Budgets: []limiter.Budget{{Owner: "o", Limit: limiter.Unlimited}},
				}})
				require.NoError(t, err)
				require.True(t, d.Allowed)
			}
			n, err := s.Expire(ctx, storetest.Epoch.Add(time.Minute), tc.max)
			require.NoError(t, err)
			assert.Equal(t, tc.want, n)
		})
	}
}

func TestFinishConformance(t *testing.T) {
	newStore, cfg := reopenable()
	storetest.RunFinish(t, newStore, cfg)
}

func TestSavingsConformance(t *testing.T) {
	newStore, cfg := reopenable()
	storetest.RunSavings(t, newStore, cfg)
}

// reopenable makes stores with a prefix of their own, and reopens one as a
// new client and store on the same server and prefix: what a restarted
// sidecar would see.
func reopenable() (func(t *testing.T, _ limiter.Clock) storetest.FinishBackend, storetest.FinishConfig) {
	var prefixes sync.Map // store → prefix
	return func(t *testing.T, _ limiter.Clock) storetest.FinishBackend {
			p := redistest.Prefix(t)
			s, err := redisstore.New(srv.Client(t), redisstore.Config{Prefix: p})
			require.NoError(t, err)
			prefixes.Store(s, p)
			return s
		}, storetest.FinishConfig{Reopen: func(t *testing.T, _ limiter.Clock, b storetest.FinishBackend) storetest.FinishBackend {
			p, ok := prefixes.Load(b)
			require.True(t, ok)
			s, err := redisstore.New(srv.Client(t), redisstore.Config{Prefix: p.(string)})
			require.NoError(t, err)
			return s
		}}
}

func TestPeekConformance(t *testing.T) {
	storetest.RunPeek(t, func(t *testing.T, _ limiter.Clock) storetest.PeekBackend { return newStore(t) }, storetest.PeekConfig{})
}

func TestHistoryConformance(t *testing.T) {
	storetest.RunHistory(t, func(t *testing.T, _ limiter.Clock) storetest.HistoryBackend { return newStore(t) }, storetest.HistoryConfig{})
}
