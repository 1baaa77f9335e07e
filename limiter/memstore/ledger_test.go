package memstore_test

import (
	"testing"

	"github.com/stretchr/testify/require"

	"github.com/tollgate/tollgate/limiter"
	"github.com/tollgate/tollgate/limiter/memstore"
	"github.com/tollgate/tollgate/limiter/storetest"
)

func TestLedgerConformance(t *testing.T) {
	storetest.RunLedger(t, func(t *testing.T, clock limiter.Clock) limiter.Backend {
		s, err := memstore.New(memstore.Config{Clock: clock})
		require.NoError(t, err)
		return s
	})
}

func TestAdjustConformance(t *testing.T) {
	storetest.RunAdjust(t, func(t *testing.T, clock limiter.Clock) limiter.Store {
		s, err := memstore.New(memstore.Config{Clock: clock})
		require.NoError(t, err)
		return s
	})
}

func TestLeaseConformance(t *testing.T) {
	storetest.RunLease(t, func(t *testing.T, clock limiter.Clock) limiter.Backend {
		s, err := memstore.New(memstore.Config{Clock: clock})
		require.NoError(t, err)
		return s
	})
}

func TestFinishConformance(t *testing.T) {
	storetest.RunFinish(t, func(t *testing.T, clock limiter.Clock) storetest.FinishBackend {
		s, err := memstore.New(memstore.Config{Clock: clock})
		require.NoError(t, err)
		return s
	}, storetest.FinishConfig{})
}

func TestSavingsConformance(t *testing.T) {
	storetest.RunSavings(t, func(t *testing.T, clock limiter.Clock) storetest.FinishBackend {
		s, err := memstore.New(memstore.Config{Clock: clock})
		require.NoError(t, err)
		return s
	}, storetest.FinishConfig{})
}

func TestPeekConformance(t *testing.T) {
	storetest.RunPeek(t, func(t *testing.T, clock limiter.Clock) storetest.PeekBackend {
		s, err := memstore.New(memstore.Config{Clock: clock})
		require.NoError(t, err)
		return s
	}, storetest.PeekConfig{})
}

func TestHistoryConformance(t *testing.T) {
	storetest.RunHistory(t, func(t *testing.T, clock limiter.Clock) storetest.HistoryBackend {
		s, err := memstore.New(memstore.Config{Clock: clock})
		require.NoError(t, err)
		return s
	}, storetest.HistoryConfig{})
}
