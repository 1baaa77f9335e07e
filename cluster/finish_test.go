package cluster_test

import (
	"context"
	"sync"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/tollgate/tollgate/cluster"
	"github.com/tollgate/tollgate/internal/fakeclock"
	"github.com/tollgate/tollgate/limiter"
	"github.com/tollgate/tollgate/limiter/memstore"
	"github.com/tollgate/tollgate/limiter/storetest"
	"github.com/tollgate/tollgate/policy"
)

// counted is a shared store that counts the calls that correct buckets or
// end reservations.
type counted struct {
	*memstore.Store
	mu    sync.Mutex
	calls map[string]int
}

func (c *counted) count(name string) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.calls[name]++
}

func (c *counted) take() map[string]int {
	c.mu.Lock()
	defer c.mu.Unlock()
	out := c.calls
	c.calls = map[string]int{}
	return out
}

func (c *counted) Finish(ctx context.Context, e limiter.Ending) (limiter.Settlement, error) {
	c.count("finish")
	return c.Store.Finish(ctx, e)
}

func (c *counted) Refund(ctx context.Context, r []limiter.Refund, now time.Time) ([]limiter.BucketState, error) {
	c.count("refund")
	return c.Store.Refund(ctx, r, now)
}

func (c *counted) Throttle(ctx context.Context, t []limiter.Throttle, now time.Time) ([]limiter.BucketState, error) {
	c.count("throttle")
	return c.Store.Throttle(ctx, t, now)
}

// heard is a fleet of one that records the back-offs it is told to gossip.
type heard struct {
	mu       sync.Mutex
	backoffs []string
}

func (*heard) Name() string               { return "heard" }
func (*heard) Live() int                  { return 1 }
func (*heard) Share(string) float64       { return 1 }
func (*heard) Spend([]limiter.SpendDelta) {}
func (h *heard) Backoff(pool string, pause time.Duration, _ int64) {
	h.mu.Lock()
	defer h.mu.Unlock()
	h.backoffs = append(h.backoffs, pool+" "+pause.String())
}

func (h *heard) take() []string {
	h.mu.Lock()
	defer h.mu.Unlock()
	out := h.backoffs
	h.backoffs = nil
	return out
}

// TestFinish: a reservation decided here ends here, its refunds going back
// to the lease it was charged to and its throttles to the shared store and
// the fleet; one the shared store holds ends there in one call, refunds
// and throttles with it.
func TestFinish(t *testing.T) {
	ctx := context.Background()
	lim := limiter.Limit{Capacity: 1000, Refill: 100} // a lease is 100 units: a second of refill
	acme := limiter.Budget{Owner: "acme", Limit: 100 * policy.NanosPerDollar}
	hold := func(id string) limiter.Request {
		return limiter.Request{Takes: takeOf(10, lim), Hold: &limiter.Hold{ID: id, TTL: time.Minute, Period: period, Cost: 5000,
			Budgets: []limiter.Budget{acme}, Slot: &limiter.Slot{Client: "acme", Max: 10}}}
	}
	paused := limiter.Throttle{Key: pool, Limit: lim, Cap: limiter.NoCap, Pause: 30 * time.Second}
	tests := map[string]struct {
		id     string // warm-1 is held by the shared store, warm-2 here
		ending limiter.Ending
		calls  map[string]int // to the shared store
		gossip []string
		// level is the shared bucket once the member has handed back its
		// lease: 1000, less warm-1's 10 and the lease's 100, plus what the
		// lease gives back.
		level int64
	}{
		"local, refunds to the lease": {
			id:     "warm-2",
			ending: limiter.Ending{Outcome: limiter.OutcomeSettled, Actual: 100, Used: []limiter.PoolUse{{Pool: "gpt", Units: 4}}},
			calls:  map[string]int{},
			level:  1000 - 10 - 100 + (100 - 10 + 6),
		},
		"local, released": {
			id:     "warm-2",
			ending: limiter.Ending{Outcome: limiter.OutcomeReleased, Used: []limiter.PoolUse{{Pool: "gpt", Units: 0}}},
			calls:  map[string]int{},
			level:  1000 - 10 - 100 + 100,
		},
		"local, a throttle goes to the shared store": {
			id:     "warm-2",
			ending: limiter.Ending{Outcome: limiter.OutcomeSettled, Actual: 100, Used: []limiter.PoolUse{{Pool: "gpt", Units: 4}}, Throttles: []limiter.Throttle{paused}},
			calls:  map[string]int{"throttle": 1},
			gossip: []string{"gpt 30s"},
			level:  0, // paused: the lease is emptied, the bucket too
		},
		"shared, one call": {
			id:     "warm-1",
			ending: limiter.Ending{Outcome: limiter.OutcomeSettled, Actual: 100, Used: []limiter.PoolUse{{Pool: "gpt", Units: 4}}},
			calls:  map[string]int{"finish": 1},
			level:  1000 - 10 + 6 - 100 + (100 - 10),
		},
		"shared, a throttle rides along": {
			id:     "warm-1",
			ending: limiter.Ending{Outcome: limiter.OutcomeSettled, Actual: 100, Used: []limiter.PoolUse{{Pool: "gpt", Units: 4}}, Throttles: []limiter.Throttle{paused}},
			calls:  map[string]int{"finish": 1},
			gossip: []string{"gpt 30s"},
			level:  0,
		},
		"unknown, the throttle still applies": {
			id:     "never-held",
			ending: limiter.Ending{Outcome: limiter.OutcomeSettled, Actual: 100, Throttles: []limiter.Throttle{paused}},
			calls:  map[string]int{"finish": 1},
			gossip: []string{"gpt 30s"},
			level:  0,
		},
	}
	for name, tc := range tests {
		t.Run(name, func(t *testing.T) {
			clk := fakeclock.New(epoch)
			mem, err := memstore.New(memstore.Config{Clock: clk})
			require.NoError(t, err)
			t.Cleanup(func() { assert.NoError(t, mem.Close()) })
			shared := &counted{Store: mem, calls: map[string]int{}}
			peers := &heard{}
			cfg := cluster.DefaultConfig()
			cfg.Clock, cfg.SyncEvery = clk, time.Hour
			s, err := cluster.NewStore(cfg, shared, peers, prometheus.NewRegistry())
			require.NoError(t, err)
			for _, id := range []string{"warm-1", "warm-2"} { // the shared store decides the first, a lease the second
				d, err := s.Reserve(ctx, hold(id))
				require.NoError(t, err)
				require.True(t, d.Allowed)
			}
			shared.take()

			e := tc.ending
			e.ID = tc.id
			st, err := s.Finish(ctx, e)
			if tc.id == "never-held" {
				require.ErrorIs(t, err, limiter.ErrUnknownReservation)
			} else {
				require.NoError(t, err)
				assert.Equal(t, limiter.Settlement{ID: tc.id, Outcome: e.Outcome, Estimated: 5000, Spent: e.Actual}, st)
			}
			assert.Equal(t, tc.calls, shared.take(), "calls to the shared store")
			assert.Equal(t, tc.gossip, peers.take(), "back-offs gossiped")

			again, err := s.Finish(ctx, limiter.Ending{ID: e.ID, Outcome: limiter.OutcomeReleased, Used: []limiter.PoolUse{{Pool: "gpt", Units: 0}}})
			if tc.id != "never-held" {
				require.NoError(t, err)
				assert.True(t, again.Repeat, "a repeat refunds nothing")
			}
			require.NoError(t, s.Close()) // hands the lease back
			g, err := mem.Lease(ctx, []limiter.LeaseAsk{{Key: pool, Limit: lim}}, time.Time{})
			require.NoError(t, err)
			assert.Equal(t, tc.level, g[0].Remaining, "the shared bucket")
		})
	}
}

// TestFinishConformance runs the Finish suite on a fleet of one over a
// memory store, configured so that every hold is decided by the shared
// store (near-limit at 100%: no budget slice is ever taken), as near a
// limit in production. Reopen is a second member on the same shared store
// (a sidecar that restarted); levels are read from the shared store, since
// a member reports leased buckets only approximately. Local reservations'
// refunds are TestFinish's.
func TestFinishConformance(t *testing.T) {
	var shared sync.Map // *cluster.Store → *memstore.Store
	open := func(t *testing.T, clock limiter.Clock, mem *memstore.Store) *cluster.Store {
		cfg := cluster.DefaultConfig()
		cfg.Clock, cfg.SyncEvery, cfg.NearLimitPercent = clock, time.Hour, 100
		s, err := cluster.NewStore(cfg, mem, nil, prometheus.NewRegistry())
		require.NoError(t, err)
		shared.Store(s, mem)
		return s
	}
	storetest.RunFinish(t, func(t *testing.T, clock limiter.Clock) storetest.FinishBackend {
		mem, err := memstore.New(memstore.Config{Clock: clock})
		require.NoError(t, err)
		t.Cleanup(func() { assert.NoError(t, mem.Close()) })
		return open(t, clock, mem)
	}, storetest.FinishConfig{
		Reopen: func(t *testing.T, clock limiter.Clock, b storetest.FinishBackend) storetest.FinishBackend {
			mem, ok := shared.Load(b)
			require.True(t, ok)
			s := open(t, clock, mem.(*memstore.Store))
			t.Cleanup(func() { assert.NoError(t, s.Close()) })
			return s
		},
		Level: func(t *testing.T, b storetest.FinishBackend, k limiter.Key, l limiter.Limit, now time.Time) int64 {
			mem, ok := shared.Load(b)
			require.True(t, ok)
			d, err := mem.(*memstore.Store).Reserve(context.Background(), limiter.Request{Takes: []limiter.Take{{Key: k, Limit: l}}, Now: now})
			require.NoError(t, err)
			return d.Buckets[0].Remaining
		},
	})
}

// TestHistoryConformance: a fleet member books the history and cost
// records of calls the shared store holds with their end, and of calls it
// decided itself at its next sync, over memory and Redis alike.
func TestHistoryConformance(t *testing.T) {
	for name, shared := range conformanceSetups {
		t.Run(name, func(t *testing.T) {
			storetest.RunHistory(t, func(t *testing.T, clock limiter.Clock) storetest.HistoryBackend {
				return conformanceStore(t, clock, shared)
			}, storetest.HistoryConfig{Sync: func(t *testing.T, b storetest.HistoryBackend) { b.(*cluster.Store).Sync(context.Background()) }})
		})
	}
}
