package cluster_test

import (
	"context"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/stretchr/testify/require"

	"github.com/tollgate/tollgate/cluster"
	"github.com/tollgate/tollgate/internal/fakeclock"
	"github.com/tollgate/tollgate/internal/redistest"
	"github.com/tollgate/tollgate/limiter"
)

// TestRefillNotice: a member that found a pool's bucket empty refuses its
// calls here until the bucket could refill (an hour here, on a clock that
// stands still), without asking Redis; a peer's notice that it gave units
// of the pool back makes the next call ask Redis again.
func TestRefillNotice(t *testing.T) {
	ctx := context.Background()
	shared, trips := sharedStore(t, redistest.Prefix(t))
	cfg := cluster.DefaultConfig()
	cfg.Clock = fakeclock.New(time.Now())
	s, err := cluster.NewStore(cfg, shared, nil, prometheus.NewRegistry())
	require.NoError(t, err)
	t.Cleanup(func() { require.NoError(t, s.Close()) })
	k, lim := limiter.Key{Pool: "scarce"}, limiter.Limit{Capacity: 2, Refill: 1, Per: time.Hour}
	call := func(cost int64) limiter.Request {
		return limiter.Request{Takes: []limiter.Take{{Key: k, Limit: lim, Cost: cost}}}
	}
	d, err := s.Reserve(ctx, call(2))
	require.NoError(t, err)
	require.True(t, d.Allowed)
	d, err = s.Reserve(ctx, call(1))
	require.NoError(t, err)
	require.False(t, d.Allowed, "the bucket is empty")

	before := trips.Count()
	d, err = s.Reserve(ctx, call(1))
	require.NoError(t, err)
	require.False(t, d.Allowed)
	require.Equal(t, before, trips.Count(), "refused here, without asking Redis")

	s.Refill("m2", "scarce", 1)
	d, err = s.Reserve(ctx, call(1))
	require.NoError(t, err)
	require.False(t, d.Allowed, "nothing was really given back")
	require.Greater(t, trips.Count(), before, "after the notice, the call asked Redis")

	s.Refill("m2", "other", 1)
	before = trips.Count()
	_, err = s.Reserve(ctx, call(1))
	require.NoError(t, err)
	require.Equal(t, before, trips.Count(), "a notice of another pool changes nothing")
}

// TestRefillGossip: a node's refill notice reaches the others' Signals.
func TestRefillGossip(t *testing.T) {
	nodes := startNodes(t, 2)
	nodes[0].Refilled("gpt-4", 7)
	require.Eventually(t, func() bool {
		nodes[1].rec.mu.Lock()
		defer nodes[1].rec.mu.Unlock()
		return len(nodes[1].rec.refills) > 0 && nodes[1].rec.refills[0] == "node-0 gpt-4 7"
	}, 10*time.Second, 10*time.Millisecond, "node-1 hears node-0's notice")
}
