package redisstore_test

import (
	"strings"
	"sync"
	"testing"

	"github.com/redis/go-redis/v9"
	"github.com/stretchr/testify/require"

	"github.com/tollgate/tollgate/internal/redistest"
	"github.com/tollgate/tollgate/limiter"
	"github.com/tollgate/tollgate/limiter/redisstore"
	"github.com/tollgate/tollgate/limiter/storetest"
)

// suiteTenant is the tenant of the conformance suite's owners: the name
// up to its first "/" or "-" ("acme/marketing" and "acme-group" are acme's),
// as a policy's parent chains would give.
func suiteTenant(owner string) string {
	if i := strings.IndexAny(owner, "/-"); i >= 0 {
		return owner[:i]
	}
	return owner
}

// clusterStore returns a store with prefix on c, spread when asked.
func clusterStore(t *testing.T, c redis.UniversalClient, prefix string, spread bool) *redisstore.Store {
	t.Helper()
	cfg := redisstore.Config{Prefix: prefix}
	if spread {
		cfg.Spread, cfg.Tenant = true, suiteTenant
	}
	s, err := redisstore.New(c, cfg)
	require.NoError(t, err)
	return s
}

// TestClusterConformance runs the whole conformance suite against a real
// Redis Cluster of three masters, through go-redis's cluster client: every
// script's keys must hash to one slot, or the cluster refuses the call. It
// runs on both layouts: one hash tag, and keys spread by tenant and pool.
func TestClusterConformance(t *testing.T) {
	for _, spread := range []bool{false, true} {
		t.Run(map[bool]string{false: "one tag", true: "spread"}[spread], func(t *testing.T) { clusterConformance(t, spread) })
	}
}

func clusterConformance(t *testing.T, spread bool) {
	newStore := func(t *testing.T) *redisstore.Store {
		return clusterStore(t, rc.Client(t), redistest.Prefix(t), spread)
	}
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
		s := clusterStore(t, rc.Client(t), p, spread)
		prefixes.Store(s, p)
		return s
	}
	cfg := storetest.FinishConfig{Reopen: func(t *testing.T, _ limiter.Clock, b storetest.FinishBackend) storetest.FinishBackend {
		p, ok := prefixes.Load(b)
		require.True(t, ok)
		return clusterStore(t, rc.Client(t), p.(string), spread)
	}}
	t.Run("finish", func(t *testing.T) { storetest.RunFinish(t, open, cfg) })
	t.Run("savings", func(t *testing.T) { storetest.RunSavings(t, open, cfg) })
	t.Run("peek", func(t *testing.T) {
		storetest.RunPeek(t, func(t *testing.T, _ limiter.Clock) storetest.PeekBackend { return newStore(t) }, storetest.PeekConfig{})
	})
	t.Run("history", func(t *testing.T) {
		storetest.RunHistory(t, func(t *testing.T, _ limiter.Clock) storetest.HistoryBackend { return newStore(t) }, storetest.HistoryConfig{})
	})
}
