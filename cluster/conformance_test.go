package cluster_test

import (
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/tollgate/tollgate/cluster"
	"github.com/tollgate/tollgate/internal/redistest"
	"github.com/tollgate/tollgate/limiter"
	"github.com/tollgate/tollgate/limiter/memstore"
	"github.com/tollgate/tollgate/limiter/redisstore"
	"github.com/tollgate/tollgate/limiter/storetest"
)

// conformanceSetups are the shared stores a cluster.Store runs the
// conformance suite over, as a fleet of one: a memory store on the
// suite's fake clock, and a Redis store (its own key prefix per store).
var conformanceSetups = map[string]func(t *testing.T, clock limiter.Clock) cluster.Shared{
	"over memory": func(t *testing.T, clock limiter.Clock) cluster.Shared {
		s, err := memstore.New(memstore.Config{Clock: clock})
		require.NoError(t, err)
		t.Cleanup(func() { assert.NoError(t, s.Close()) })
		return s
	},
	"over redis": func(t *testing.T, _ limiter.Clock) cluster.Shared {
		s, err := redisstore.New(redisSrv.Client(t), redisstore.Config{Prefix: redistest.Prefix(t)})
		require.NoError(t, err)
		t.Cleanup(func() { assert.NoError(t, s.Close()) })
		return s
	},
}

// conformanceStore wraps a new shared store in a Store of a fleet of one
// on the suite's clock. The sync loop is left idle (the suite's clock does
// not move by itself); the suite closes the Store.
func conformanceStore(t *testing.T, clock limiter.Clock, shared func(*testing.T, limiter.Clock) cluster.Shared) *cluster.Store {
	t.Helper()
	cfg := cluster.DefaultConfig()
	cfg.Clock = clock
	cfg.SyncEvery = time.Hour
	s, err := cluster.NewStore(cfg, shared(t, clock), nil, prometheus.NewRegistry())
	require.NoError(t, err)
	return s
}

// TestConformance runs the conformance suites that apply to a Store (it is
// a limiter.Backend and a limiter.Adjuster; it hands out no leases or
// batches of its own, so RunLease does not apply) over each shared store.
// Every case of Run, RunLedger, RunAdjust and RunPeek runs, with no exception: a
// fleet of one reports what its shared store alone would. (RunFinish runs
// in finish_test.go.)
func TestConformance(t *testing.T) {
	for name, shared := range conformanceSetups {
		t.Run(name, func(t *testing.T) {
			t.Run("store", func(t *testing.T) {
				storetest.Run(t, func(t *testing.T, clock limiter.Clock) limiter.Store { return conformanceStore(t, clock, shared) })
			})
			t.Run("ledger", func(t *testing.T) {
				storetest.RunLedger(t, func(t *testing.T, clock limiter.Clock) limiter.Backend { return conformanceStore(t, clock, shared) })
			})
			t.Run("adjust", func(t *testing.T) {
				storetest.RunAdjust(t, func(t *testing.T, clock limiter.Clock) limiter.Store { return conformanceStore(t, clock, shared) })
			})
			t.Run("peek", func(t *testing.T) {
				storetest.RunPeek(t, func(t *testing.T, clock limiter.Clock) storetest.PeekBackend {
					return conformanceStore(t, clock, shared)
				},
					storetest.PeekConfig{LeasedSlots: true})
			})
		})
	}
}
