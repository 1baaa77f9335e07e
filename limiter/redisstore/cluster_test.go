package redisstore_test

import (
	"sync"
	"testing"

	"github.com/redis/go-redis/v9"
	"github.com/stretchr/testify/require"

	"github.com/tollgate/tollgate/internal/redistest"
	"github.com/tollgate/tollgate/limiter"
	"github.com/tollgate/tollgate/limiter/redisstore"
	"github.com/tollgate/tollgate/limiter/storetest"
)

// clusterStore returns a store with a prefix of the test's own on the
// package's three-master Redis Cluster.
func clusterStore(t *testing.T, c redis.UniversalClient, prefix string) *redisstore.Store {
	t.Helper()
	s, err := redisstore.New(c, redisstore.Config{Prefix: prefix})
	require.NoError(t, err)
	return s
}

// TestClusterConformance runs the whole conformance suite against a real
// Redis Cluster of three masters, through go-redis's cluster client: every
// script's keys must hash to one slot, or the cluster refuses the call.
func TestClusterConformance(t *testing.T) {
	newStore := func(t *testing.T) *redisstore.Store { return clusterStore(t, rc.Client(t), redistest.Prefix(t)) }
	t.Run("store", func(t *testing.T) {
		storetest.Run(t, func(t *testing.T, _ limiter.Clock) limiter.Store { return newStore(t) })
	})
	t.Run("ledger", func(t *testing.T) {
		storetest.RunLedger(t, func(t *testing.T, _ limiter.Clock) limiter.Backend { return newStore(t) })
	})
	t.Run("lease", func(t *testing.T) {
		storetest.RunLease(t, func(t *testing.T, _ limiter.Clock) limiter.Backend { return newStore(t) })
	})
	t.Run("adjust", func(t *testing.T) {
		storetest.RunAdjust(t, func(t *testing.T, _ limiter.Clock) limiter.Store { return newStore(t) })
	})
	var prefixes sync.Map // store → prefix
	open := func(t *testing.T, _ limiter.Clock) storetest.FinishBackend {
		p := redistest.Prefix(t)
		s := clusterStore(t, rc.Client(t), p)
		prefixes.Store(s, p)
		return s
	}
	cfg := storetest.FinishConfig{Reopen: func(t *testing.T, _ limiter.Clock, b storetest.FinishBackend) storetest.FinishBackend {
		p, ok := prefixes.Load(b)
		require.True(t, ok)
		return clusterStore(t, rc.Client(t), p.(string))
	}}
	t.Run("finish", func(t *testing.T) { storetest.RunFinish(t, open, cfg) })
	t.Run("savings", func(t *testing.T) { storetest.RunSavings(t, open, cfg) })
}
