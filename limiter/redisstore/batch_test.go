package redisstore_test

import (
	"context"
	"fmt"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/tollgate/tollgate/internal/redistest"
	"github.com/tollgate/tollgate/limiter"
	"github.com/tollgate/tollgate/limiter/redisstore"
	"github.com/tollgate/tollgate/policy"
)

// TestLeaseBatchAsAlone: one LeaseBatch answers each bucket ask and each
// slot lease as Lease and LeaseSlots answer it alone, on twin stores fed
// the same sequence, across more keys than one script call takes.
func TestLeaseBatchAsAlone(t *testing.T) {
	ctx := context.Background()
	batched, err := redisstore.New(srv.Client(t), redisstore.Config{Prefix: redistest.Prefix(t) + "-b"})
	require.NoError(t, err)
	alone, err := redisstore.New(srv.Client(t), redisstore.Config{Prefix: redistest.Prefix(t) + "-a"})
	require.NoError(t, err)
	now := time.UnixMicro(1_800_000_000_000_000)
	lim := limiter.Limit{Capacity: 10, Refill: 5}
	for round := range 3 {
		var asks []limiter.LeaseAsk
		for i := range 200 {
			asks = append(asks, limiter.LeaseAsk{Key: limiter.Key{Pool: "p", Client: fmt.Sprint("c", i)}, Limit: lim, Want: int64(3 + i%7), Need: int64(1 + i%3)})
		}
		var slots []limiter.SlotLease
		for i := range 100 {
			slots = append(slots, limiter.SlotLease{Client: fmt.Sprint("c", i), Max: 4, Holder: "m1", Want: int64((i + round) % 6), TTL: 10 * time.Second})
		}
		at := now.Add(time.Duration(round) * 300 * time.Millisecond)
		grants, held, err := batched.LeaseBatch(ctx, asks, slots, at)
		require.NoError(t, err)
		require.Len(t, grants, len(asks))
		require.Len(t, held, len(slots))
		want, err := alone.Lease(ctx, asks, at)
		require.NoError(t, err)
		require.Equal(t, want, grants, "round %d", round)
		for j, l := range slots {
			h, f, err := alone.LeaseSlots(ctx, l, at)
			require.NoError(t, err)
			require.Equal(t, limiter.SlotGrant{Held: h, InFlight: f}, held[j], "round %d, client %s", round, l.Client)
		}
	}
}

// TestLeaseBatchRefuses: a bucket or a client named twice, or an ask out of
// range, is an error and changes nothing.
func TestLeaseBatchRefuses(t *testing.T) {
	ctx := context.Background()
	s := newStore(t)
	k, lim := limiter.Key{Pool: "p"}, limiter.Limit{Capacity: 10, Refill: 5}
	sl := limiter.SlotLease{Client: "c", Max: 2, Holder: "m", Want: 1, TTL: time.Second}
	for name, tc := range map[string]struct {
		asks  []limiter.LeaseAsk
		slots []limiter.SlotLease
	}{
		"a bucket twice": {asks: []limiter.LeaseAsk{{Key: k, Limit: lim, Want: 1, Need: 1}, {Key: k, Limit: lim, Want: 1, Need: 1}}},
		"a client twice": {slots: []limiter.SlotLease{sl, sl}},
		"a bad slot":     {slots: []limiter.SlotLease{{Client: "c", Max: 2, Holder: "a:b", Want: 1, TTL: time.Second}}},
		"a bad ask":      {asks: []limiter.LeaseAsk{{Key: k, Limit: lim, Want: -1}}},
	} {
		t.Run(name, func(t *testing.T) {
			_, _, err := s.LeaseBatch(ctx, tc.asks, tc.slots, time.Time{})
			require.Error(t, err)
		})
	}
	g, err := s.Lease(ctx, []limiter.LeaseAsk{{Key: k, Limit: lim}}, time.Time{})
	require.NoError(t, err)
	require.Equal(t, int64(10), g[0].Remaining, "nothing was taken")
}

// TestFinishBatchAsAlone: one FinishBatch ends each reservation as Finish
// ends it alone (settled, released, ended twice, unknown), on twin stores.
func TestFinishBatchAsAlone(t *testing.T) {
	ctx := context.Background()
	batched, err := redisstore.New(srv.Client(t), redisstore.Config{Prefix: redistest.Prefix(t) + "-b"})
	require.NoError(t, err)
	alone, err := redisstore.New(srv.Client(t), redisstore.Config{Prefix: redistest.Prefix(t) + "-a"})
	require.NoError(t, err)
	var endings []limiter.Ending
	for i := range 150 {
		id := fmt.Sprint("slice-", i)
		for _, s := range []*redisstore.Store{batched, alone} {
			d, err := s.Reserve(ctx, limiter.Request{Hold: &limiter.Hold{ID: id, TTL: time.Minute, Period: "2026-12", Cost: 1000,
				Budgets: []limiter.Budget{{Owner: fmt.Sprint("client-", i%7), Limit: 1_000_000}}}})
			require.NoError(t, err)
			require.True(t, d.Allowed)
		}
		o := limiter.OutcomeSettled
		if i%3 == 0 {
			o = limiter.OutcomeReleased
		}
		endings = append(endings, limiter.Ending{ID: id, Outcome: o, Actual: policy.Money(i * 5)})
	}
	endings = append(endings, limiter.Ending{ID: "never", Outcome: limiter.OutcomeSettled}, endings[4]) // unknown, and ended twice
	sts, errs, err := batched.FinishBatch(ctx, endings)
	require.NoError(t, err)
	for i, e := range endings {
		st, err := alone.Finish(ctx, e)
		if err != nil {
			require.ErrorIs(t, errs[i], limiter.ErrUnknownReservation, "ending %d", i)
			require.ErrorIs(t, err, limiter.ErrUnknownReservation)
			continue
		}
		require.NoError(t, errs[i], "ending %d", i)
		require.Equal(t, st, sts[i], "ending %d", i)
	}
	for o := range 7 {
		b := []limiter.Budget{{Owner: fmt.Sprint("client-", o), Limit: 1_000_000}}
		ub, err := batched.Usage(ctx, "2026-12", b, time.Time{})
		require.NoError(t, err)
		ua, err := alone.Usage(ctx, "2026-12", b, time.Time{})
		require.NoError(t, err)
		require.Equal(t, ua.Budgets, ub.Budgets, "client-%d's budget", o)
	}
	_, _, err = batched.FinishBatch(ctx, []limiter.Ending{{ID: "x", Outcome: limiter.OutcomeSettled, Savings: []limiter.Saving{{Strategy: "cache", Amount: 1}}}})
	require.Error(t, err, "an ending that books beside goes alone")
}

// BenchmarkLeaseBatch: one member's sync renewing 100 clients' buckets and
// slot leases in one script call, against the same in 101 calls (one Lease
// of the 100 buckets, one LeaseSlots a client), on loopback Redis.
func BenchmarkLeaseBatch(b *testing.B) {
	ctx := context.Background()
	s, err := redisstore.New(srv.Client(b), redisstore.Config{Prefix: redistest.Prefix(b)})
	require.NoError(b, err)
	lim := limiter.Limit{Capacity: 1_000_000, Refill: 1_000_000}
	var asks []limiter.LeaseAsk
	var slots []limiter.SlotLease
	for i := range 100 {
		asks = append(asks, limiter.LeaseAsk{Key: limiter.Key{Pool: "p", Client: fmt.Sprint("c", i)}, Limit: lim, Want: 10, Need: 1})
		slots = append(slots, limiter.SlotLease{Client: fmt.Sprint("c", i), Max: 64, Holder: "m1", Want: 7, TTL: 10 * time.Second})
	}
	b.Run("batch", func(b *testing.B) {
		b.ReportAllocs()
		for b.Loop() {
			if _, _, err := s.LeaseBatch(ctx, asks, slots, time.Time{}); err != nil {
				b.Fatal(err)
			}
		}
	})
	b.Run("one call each", func(b *testing.B) {
		b.ReportAllocs()
		for b.Loop() {
			if _, err := s.Lease(ctx, asks, time.Time{}); err != nil {
				b.Fatal(err)
			}
			for _, l := range slots {
				if _, _, err := s.LeaseSlots(ctx, l, time.Time{}); err != nil {
					b.Fatal(err)
				}
			}
		}
	})
}
