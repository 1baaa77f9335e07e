package authz_test

import (
	"log/slog"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/tollgate/tollgate/admission"
	"github.com/tollgate/tollgate/authz"
	"github.com/tollgate/tollgate/internal/logtest"
	"github.com/tollgate/tollgate/internal/redistest"
	"github.com/tollgate/tollgate/limiter/redisstore"
)

const backgroundErrorsMetric = "tollgate_authz_background_errors_total"

// newRedisStore returns a store on the package's redis-server through a
// client with serve's options (short timeouts, one retry), under a prefix
// of tb's own.
func newRedisStore(tb testing.TB) *redisstore.Store {
	tb.Helper()
	cfg := redisstore.DefaultClientConfig()
	cfg.Addrs = []string{redisSrv.Addr}
	c, err := redisstore.NewClient(cfg)
	require.NoError(tb, err)
	tb.Cleanup(func() { assert.NoError(tb, c.Close()) })
	s, err := redisstore.New(c, redisstore.Config{Prefix: redistest.Prefix(tb)})
	require.NoError(tb, err)
	return s
}

// TestExpiryLoopStoreDown: while Redis is away the expiry loop fails on
// every tick; it counts each failure but logs one line when it starts
// failing, and one when it works again, with how many attempts failed.
func TestExpiryLoopStoreDown(t *testing.T) {
	t.Cleanup(func() { require.NoError(t, redisSrv.Resume(), "bring the shared redis-server back") })
	logs := &logtest.Records{}
	ts := startServer(t, serverOpts{
		store:  newRedisStore(t),
		logger: slog.New(logs),
		config: func(c *authz.Config) { c.Settlement, c.ExpireEvery = admission.SettleDeferred, 10*time.Millisecond },
	})
	expireErrors := func() float64 {
		return metricValue(t, ts.reg, backgroundErrorsMetric, map[string]string{"task": "expire"})
	}

	require.NoError(t, redisSrv.Stop(true))
	require.Eventually(t, func() bool { return expireErrors() >= 5 }, 30*time.Second, 10*time.Millisecond, "several ticks fail")
	assert.Equal(t, 1, logs.Count("expiring reservations failed; logged again when it works"), "one line for the whole outage")
	assert.Zero(t, logs.Count("expiring reservations works again"))

	require.NoError(t, redisSrv.Resume())
	require.Eventually(t, func() bool { return logs.Count("expiring reservations works again") == 1 }, 30*time.Second, 10*time.Millisecond)
	assert.Equal(t, 1, logs.Count("expiring reservations failed; logged again when it works"))
	attempts, ok := logs.Attr("expiring reservations works again", "failed_attempts")
	require.True(t, ok)
	assert.Equal(t, int64(expireErrors()), attempts.Int64(), "the recovery says how many attempts failed: each one counted")
	_, ok = logs.Attr("expiring reservations works again", "failed_for")
	assert.True(t, ok)
	requireLint(t, ts.reg)
}
