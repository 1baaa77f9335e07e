package redisstore_test

import (
	"context"
	"log/slog"
	"sync"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/tollgate/tollgate/internal/fakeclock"
	"github.com/tollgate/tollgate/limiter/redisstore"
)

// logRecords is a slog.Handler that keeps every record, safe for the
// logger's goroutines and the test's.
type logRecords struct {
	mu   sync.Mutex
	recs []slog.Record
}

func (l *logRecords) Enabled(context.Context, slog.Level) bool { return true }
func (l *logRecords) Handle(_ context.Context, r slog.Record) error {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.recs = append(l.recs, r.Clone())
	return nil
}
func (l *logRecords) WithAttrs([]slog.Attr) slog.Handler { return l }
func (l *logRecords) WithGroup(string) slog.Handler      { return l }

// messages returns the messages logged so far, in order.
func (l *logRecords) messages() []string {
	l.mu.Lock()
	defer l.mu.Unlock()
	var out []string
	for _, r := range l.recs {
		out = append(out, r.Message)
	}
	return out
}

// attr returns the attribute key of the last record whose message is msg.
func (l *logRecords) attr(msg, key string) (slog.Value, bool) {
	l.mu.Lock()
	defer l.mu.Unlock()
	for i := len(l.recs) - 1; i >= 0; i-- {
		if l.recs[i].Message != msg {
			continue
		}
		var v slog.Value
		found := false
		l.recs[i].Attrs(func(a slog.Attr) bool {
			if a.Key == key {
				v, found = a.Value, true
				return false
			}
			return true
		})
		return v, found
	}
	return slog.Value{}, false
}

// TestHealth follows Redis through the three changes readiness cares
// about: down at start, coming up, going down (and up again). Each change
// is one log line, however many probes fail in between.
func TestHealth(t *testing.T) {
	keepServer(t)
	require.NoError(t, srv.Stop(true), "Redis is down when the sidecar starts")

	clk := fakeclock.New(time.Date(2026, 12, 6, 12, 0, 0, 0, time.UTC))
	logs := &logRecords{}
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
	assert.Equal(t, []string{"redis not reachable yet"}, logs.messages(), "one line for three failed probes")

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
	assert.Equal(t, []string{"redis not reachable yet", "redis reachable"}, logs.messages())
	after, ok := logs.attr("redis reachable", "after")
	require.True(t, ok)
	assert.Equal(t, 3*time.Second, after.Duration())
	require.NoError(t, h.Probe(ctx))
	assert.Len(t, logs.messages(), 2, "no line while nothing changes")

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
	assert.Equal(t, []string{"redis not reachable yet", "redis reachable", "redis unreachable"}, logs.messages())

	require.NoError(t, srv.Resume())
	require.NoError(t, h.Probe(ctx))
	assert.True(t, h.State().Reachable)
	assert.Equal(t, []string{"redis not reachable yet", "redis reachable", "redis unreachable", "redis reachable again"}, logs.messages())
	downFor, ok := logs.attr("redis reachable again", "down_for")
	require.True(t, ok)
	assert.Equal(t, 5*time.Second, downFor.Duration())
	failed, ok := logs.attr("redis reachable again", "failed_probes")
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
