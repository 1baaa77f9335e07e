package redisstore_test

import (
	"context"
	"log/slog"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/tollgate/tollgate/internal/fakeclock"
	"github.com/tollgate/tollgate/internal/logtest"
	"github.com/tollgate/tollgate/limiter/redisstore"
)

// TestHealth follows Redis through the three changes readiness cares
// about: down at start, coming up, going down (and up again). Each change
// is one log line, however many probes fail in between.
func TestHealth(t *testing.T) {
	keepServer(t)
	require.NoError(t, srv.Stop(true), "Redis is down when the sidecar starts")

	clk := fakeclock.New(time.Date(2026, 12, 6, 12, 0, 0, 0, time.UTC))
	logs := &logtest.Records{}
	cfg := redisstore.DefaultHealthConfig()
	cfg.Clock, cfg.Logger = clk, slog.New(logs)
	h, err := redisstore.NewHealth(newClient(t, srv.Addr, 100*time.Millisecond), cfg)
	require.NoError(t, err)
	ctx := context.Background()
	assert.Equal(t, "not probed yet", h.State().String())

	// Down at start: never reached.
	for range 3 {
		require.Error(t, h.Probe(ctx))
		clk.Advance(time.Second)
	}
	st := h.State()
	assert.True(t, st.Probed)
	assert.False(t, st.Reachable)
	assert.False(t, st.Reached)
	assert.Equal(t, 3, st.Failed)
	assert.Regexp(t, `^not reached since start \(2026-12-06T12:00:00Z, 3 failed probes\): .*connection refused$`, st.String())
	assert.Equal(t, []string{"redis not reachable yet"}, logs.Messages(), "one line for three failed probes")

	// Comes up.
	require.NoError(t, srv.Resume())
	require.NoError(t, h.Probe(ctx))
	st = h.State()
	assert.True(t, st.Reachable)
	assert.True(t, st.Reached)
	assert.Zero(t, st.Failed)
	assert.NoError(t, st.Err)
	assert.Equal(t, clk.Now(), st.Since)
	assert.Equal(t, "ok", st.String())
	assert.Equal(t, []string{"redis not reachable yet", "redis reachable"}, logs.Messages())
	after, ok := logs.Attr("redis reachable", "after")
	require.True(t, ok)
	assert.Equal(t, 3*time.Second, after.Duration())
	require.NoError(t, h.Probe(ctx))
	assert.Len(t, logs.Messages(), 2, "no line while nothing changes")

	// Goes down for five probes, then comes back.
	clk.Advance(time.Minute)
	require.NoError(t, srv.Stop(true))
	down := clk.Now()
	for range 5 {
		require.Error(t, h.Probe(ctx))
		clk.Advance(time.Second)
	}
	st = h.State()
	assert.False(t, st.Reachable)
	assert.True(t, st.Reached, "it was reached once: an outage, not a start without Redis")
	assert.Equal(t, down, st.Since)
	assert.Regexp(t, `^unreachable since 2026-12-06T12:01:03Z \(5 failed probes\): `, st.String())
	assert.Equal(t, []string{"redis not reachable yet", "redis reachable", "redis unreachable"}, logs.Messages())

	require.NoError(t, srv.Resume())
	require.NoError(t, h.Probe(ctx))
	assert.True(t, h.State().Reachable)
	assert.Equal(t, []string{"redis not reachable yet", "redis reachable", "redis unreachable", "redis reachable again"}, logs.Messages())
	downFor, ok := logs.Attr("redis reachable again", "down_for")
	require.True(t, ok)
	assert.Equal(t, 5*time.Second, downFor.Duration())
	failed, ok := logs.Attr("redis reachable again", "failed_probes")
	require.True(t, ok)
	assert.Equal(t, int64(5), failed.Int64())
}

// TestHealthRun: Run probes by itself until its context ends, and a probe
// cut short by that end is not taken for Redis's answer.
func TestHealthRun(t *testing.T) {
	cfg := redisstore.DefaultHealthConfig()
	cfg.Every = 10 * time.Millisecond
	h, err := redisstore.NewHealth(srv.Client(t), cfg)
	require.NoError(t, err)
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { defer close(done); h.Run(ctx) }()
	require.Eventually(t, func() bool { return h.State().Reachable }, 10*time.Second, 10*time.Millisecond)
	cancel()
	<-done

	require.Error(t, h.Probe(ctx), "a cancelled probe fails...")
	assert.True(t, h.State().Reachable, "...and says nothing of Redis")
}

func TestHealthConfig(t *testing.T) {
	_, err := redisstore.NewHealth(srv.Client(t), redisstore.HealthConfig{})
	require.ErrorContains(t, err, "interval and timeout must be positive")
	_, err = redisstore.NewHealth(nil, redisstore.DefaultHealthConfig())
	require.ErrorContains(t, err, "nil client")
}
