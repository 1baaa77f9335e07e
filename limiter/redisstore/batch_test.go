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
