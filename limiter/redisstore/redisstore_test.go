package redisstore_test

import (
	"os"
	"testing"

	"github.com/stretchr/testify/require"

	"github.com/tollgate/tollgate/internal/redistest"
	"github.com/tollgate/tollgate/limiter"
	"github.com/tollgate/tollgate/limiter/redisstore"
	"github.com/tollgate/tollgate/limiter/storetest"
)

var srv *redistest.Server

func TestMain(m *testing.M) { os.Exit(redistest.Main(m, &srv)) }

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
