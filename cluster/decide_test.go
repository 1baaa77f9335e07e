package cluster_test

import (
	"context"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/tollgate/tollgate/cluster"
	"github.com/tollgate/tollgate/internal/fakeclock"
	"github.com/tollgate/tollgate/limiter"
	"github.com/tollgate/tollgate/limiter/memstore"
	"github.com/tollgate/tollgate/policy"
)

// Regressions found by running the conformance suite on the Store: what a
// fleet of one reports must be what its shared store alone would.

func (s *solo) reserve(t *testing.T, takes ...limiter.Take) limiter.Decision {
	t.Helper()
	d, err := s.Reserve(context.Background(), limiter.Request{Takes: takes})
	require.NoError(t, err)
	require.Len(t, d.Buckets, len(takes))
	return d
}

// TestBucketStates: the states, reasons and waits a Store reports for
// buckets it leases.
func TestBucketStates(t *testing.T) {
	l10 := limiter.Limit{Capacity: 10, Refill: 1}
	a, b := limiter.Key{Pool: "p", Client: "a"}, limiter.Key{Pool: "p", Client: "b"}
	tests := map[string]func(t *testing.T, s *solo){
		// A zero-cost take of a bucket never used reported it empty.
		"a fresh bucket read at zero cost is full": func(t *testing.T, s *solo) {
			d := s.reserve(t, limiter.Take{Key: a, Limit: l10})
			assert.True(t, d.Allowed)
			assert.Equal(t, int64(10), d.Buckets[0].Remaining)
			assert.Zero(t, d.Buckets[0].ResetAfter)
		},
		// A shadow bucket was never leased, so always reported short and
		// never charged.
		"a shadow bucket with room is charged, not short": func(t *testing.T, s *solo) {
			d := s.reserve(t, limiter.Take{Key: a, Limit: l10, Cost: 3, Shadow: true})
			assert.True(t, d.Allowed)
			assert.False(t, d.Buckets[0].Short)
			assert.Equal(t, int64(7), s.reserve(t, limiter.Take{Key: a, Limit: l10}).Buckets[0].Remaining)
			s.clk.Advance(time.Second) // the lease lapses; the shadow is short now, with its wait
			d = s.reserve(t, limiter.Take{Key: a, Limit: l10, Cost: 9, Shadow: true})
			assert.True(t, d.Allowed)
			assert.True(t, d.Buckets[0].Short)
			assert.Equal(t, time.Second, d.Buckets[0].RetryAfter)
		},
		// Of several short buckets, the first refused lease was blamed,
		// with its wait, rather than the longest wait.
		"the longest wait is blamed": func(t *testing.T, s *solo) {
			s.reserve(t, limiter.Take{Key: a, Limit: l10, Cost: 10}, limiter.Take{Key: b, Limit: l10, Cost: 10})
			d := s.reserve(t, limiter.Take{Key: a, Limit: l10, Cost: 2}, limiter.Take{Key: b, Limit: l10, Cost: 7})
			assert.Equal(t, 1, d.Blocking)
			assert.Equal(t, 7*time.Second, d.RetryAfter)
			// Known short here, a smaller call waits less, a larger more.
			d = s.reserve(t, limiter.Take{Key: a, Limit: l10, Cost: 4}, limiter.Take{Key: b, Limit: l10, Cost: 4})
			assert.Equal(t, 0, d.Blocking, "equal waits: the first")
			assert.Equal(t, 4*time.Second, d.RetryAfter)
		},
		// A cost above capacity was refused as rate-limited, with a wait,
		// when its bucket was known to be short.
		"a cost that never fits beats any wait": func(t *testing.T, s *solo) {
			s.reserve(t, limiter.Take{Key: a, Limit: l10, Cost: 10}, limiter.Take{Key: b, Limit: l10, Cost: 10})
			s.reserve(t, limiter.Take{Key: a, Limit: l10, Cost: 2})
			d := s.reserve(t, limiter.Take{Key: a, Limit: l10, Cost: 11}, limiter.Take{Key: b, Limit: l10, Cost: 7})
			assert.Equal(t, limiter.ReasonExceedsCapacity, d.Reason)
			assert.Equal(t, 0, d.Blocking)
			assert.Zero(t, d.RetryAfter)
		},
		// Units still leased here did not count toward a larger call, so
		// the wait was the one for the whole call.
		"leased units count toward the wait": func(t *testing.T, s *solo) {
			l := limiter.Limit{Capacity: 10, Refill: 4}
			s.reserve(t, limiter.Take{Key: a, Limit: l, Cost: 3}) // leases 4: one unit left here
			d := s.reserve(t, limiter.Take{Key: a, Limit: l, Cost: 8})
			assert.False(t, d.Allowed)
			assert.Equal(t, 250*time.Millisecond, d.RetryAfter, "7 units are here or in the bucket: one more to wait for")
			assert.Equal(t, int64(7), d.Buckets[0].Remaining)
		},
		// The state of a bucket known short was what it held at the
		// refusal, with whole units of refill, losing the fractions.
		"refill since the last answer is counted to the micro-unit": func(t *testing.T, s *solo) {
			l := limiter.Limit{Capacity: 4, Refill: 4}
			s.reserve(t, limiter.Take{Key: a, Limit: l, Cost: 4})
			for range 3 {
				s.clk.Advance(100 * time.Millisecond)
				s.reserve(t, limiter.Take{Key: a, Limit: l, Cost: 2})
			}
			d := s.reserve(t, limiter.Take{Key: a, Limit: l, Cost: 2})
			assert.Equal(t, int64(1), d.Buckets[0].Remaining, "1.2 units after 300 ms")
			assert.Equal(t, 200*time.Millisecond, d.RetryAfter)
		},
	}
	for name, test := range tests {
		t.Run(name, func(t *testing.T) { test(t, newSolo(t)) })
	}
}

// TestExplicitNow: a request that names its time is decided at that time
// all the way down, leases included, whatever the shared store's clock
// says (the Redis store's would be Redis TIME).
func TestExplicitNow(t *testing.T) {
	clk := fakeclock.New(epoch)
	shared, err := memstore.New(memstore.Config{Clock: fakeclock.New(epoch.Add(time.Hour))})
	require.NoError(t, err)
	t.Cleanup(func() { assert.NoError(t, shared.Close()) })
	cfg := cluster.DefaultConfig()
	cfg.Clock, cfg.SyncEvery = clk, time.Hour
	s, err := cluster.NewStore(cfg, shared, nil, prometheus.NewRegistry())
	require.NoError(t, err)
	t.Cleanup(func() { assert.NoError(t, s.Close()) })
	l := limiter.Limit{Capacity: 10, Refill: 2}
	take := func(cost int64, at time.Duration) limiter.Decision {
		d, err := s.Reserve(context.Background(), limiter.Request{Takes: []limiter.Take{{Key: pool, Limit: l, Cost: cost}}, Now: epoch.Add(at)})
		require.NoError(t, err)
		return d
	}
	require.True(t, take(10, 0).Allowed)
	d := take(1, 0)
	require.False(t, d.Allowed)
	assert.Equal(t, 500*time.Millisecond, d.RetryAfter)
	assert.True(t, take(1, 500*time.Millisecond).Allowed, "the shared bucket refilled by the request's clock, not its own")
}

// TestHoldsDecidedHere: holds decided from leases and slices answer as the
// shared store would.
func TestHoldsDecidedHere(t *testing.T) {
	ctx := context.Background()
	acme := limiter.Budget{Owner: "acme", Limit: 1000}
	hold := func(id string, ttl time.Duration) limiter.Request {
		return limiter.Request{Hold: &limiter.Hold{ID: id, TTL: ttl, Period: period, Cost: 1, Budgets: []limiter.Budget{acme},
			Slot: &limiter.Slot{Client: "acme", Max: 1}}}
	}
	// A refusal for concurrency carried no budget states.
	t.Run("a concurrency refusal reports the budgets", func(t *testing.T) {
		s := newSolo(t)
		for _, id := range []string{"a", "b"} {
			d, err := s.Reserve(ctx, hold(id, time.Minute))
			require.NoError(t, err)
			if id == "b" {
				assert.Equal(t, limiter.ReasonConcurrency, d.Reason)
				assert.Len(t, d.Budgets, 1)
			}
		}
	})
	// An id the shared store holds (the first hold of a budget goes there)
	// was taken again when the next hold was decided from a slice.
	t.Run("an id the shared store holds is a duplicate here", func(t *testing.T) {
		s := newSolo(t)
		r := hold("once", time.Minute)
		r.Hold.Slot = nil
		d, err := s.Reserve(ctx, r)
		require.NoError(t, err)
		require.True(t, d.Allowed)
		_, err = s.Reserve(ctx, r)
		assert.ErrorIs(t, err, limiter.ErrDuplicateReservation, "live")
		_, err = s.Release(ctx, "once")
		require.NoError(t, err)
		_, err = s.Reserve(ctx, r)
		assert.ErrorIs(t, err, limiter.ErrDuplicateReservation, "ended")
	})
	// A reservation whose caller died kept its slot here until Expire ran.
	t.Run("a lapsed reservation frees its slot for the next call", func(t *testing.T) {
		s := newSolo(t)
		d, err := s.Reserve(ctx, hold("warm", 30*time.Second)) // the budget's view: the next holds are decided here
		require.NoError(t, err)
		require.True(t, d.Allowed)
		_, err = s.Release(ctx, "warm")
		require.NoError(t, err)
		d, err = s.Reserve(ctx, hold("dies", 30*time.Second))
		require.NoError(t, err)
		require.True(t, d.Allowed)
		s.clk.Advance(30 * time.Second)
		d, err = s.Reserve(ctx, hold("next", 30*time.Second))
		require.NoError(t, err)
		assert.True(t, d.Allowed)
		assert.Equal(t, 1, d.Expired, "the lapsed one, counted")
		st, err := s.Settle(ctx, "dies", 1)
		require.NoError(t, err)
		assert.Equal(t, limiter.OutcomeExpired, st.Outcome, "it ended at its estimate")
	})
}

// TestSliceRetriedByTheClient: a slice reservation whose first attempt
// landed and whose answer was lost to a Redis client's retry comes back as
// a duplicate id. That is no error of the call's: the shared store decides
// it, and the orphan slice is released at the next sync.
func TestSliceRetriedByTheClient(t *testing.T) {
	ctx := context.Background()
	clk := fakeclock.New(epoch)
	shared, err := memstore.New(memstore.Config{Clock: clk})
	require.NoError(t, err)
	t.Cleanup(func() { _ = shared.Close() })
	s, g, reg := newGated(t, clk, shared)
	acme := limiter.Budget{Owner: "acme", Limit: 100 * policy.NanosPerDollar}
	commit := func() {
		d, err := s.Reserve(ctx, limiter.Request{Hold: &limiter.Hold{Period: period, Cost: 1000, Budgets: []limiter.Budget{acme}, Commit: true}})
		require.NoError(t, err)
		require.True(t, d.Allowed)
	}
	commit() // reads the budget
	g.mu.Lock()
	g.retrySlice = true
	g.mu.Unlock()
	commit()
	assert.Equal(t, 2.0, decisions(t, reg, "shared", "admitted"), "decided by the shared store")
	mode, _ := s.Mode()
	assert.Equal(t, "normal", mode)
	s.Sync(ctx)
	u, err := shared.Usage(ctx, period, []limiter.Budget{acme}, time.Time{})
	require.NoError(t, err)
	assert.Equal(t, policy.Money(2000), u.Budgets[0].Spent)
	assert.Zero(t, u.Budgets[0].Reserved, "the orphan slice holds nothing")
}
