package memstore_test

import (
	"context"
	"sync/atomic"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"go.uber.org/goleak"

	"github.com/tollgate/tollgate/internal/fakeclock"
	"github.com/tollgate/tollgate/limiter"
	"github.com/tollgate/tollgate/limiter/memstore"
	"github.com/tollgate/tollgate/limiter/storetest"
)

func TestMain(m *testing.M) {
	goleak.VerifyTestMain(m)
}

var epoch = storetest.Epoch

// newStore returns a store on cfg, closed when tb ends.
func newStore(tb testing.TB, cfg memstore.Config) *memstore.Store {
	tb.Helper()
	s, err := memstore.New(cfg)
	require.NoError(tb, err)
	tb.Cleanup(func() { assert.NoError(tb, s.Close()) })
	return s
}

func TestStore(t *testing.T) {
	tests := map[string]struct {
		sweep time.Duration
	}{
		"no sweeper": {},
		// A sweeper forgetting full buckets behind the suite's back must
		// change no decision (and races no Reserve).
		"busy sweeper": {sweep: time.Millisecond},
	}
	for name, tc := range tests {
		t.Run(name, func(t *testing.T) {
			storetest.Run(t, func(t *testing.T, clock limiter.Clock) limiter.Store {
				return newStore(t, memstore.Config{Clock: clock, SweepInterval: tc.sweep})
			})
		})
	}
}

func BenchmarkStore(b *testing.B) {
	storetest.Bench(b, func(b *testing.B) limiter.Store {
		return newStore(b, memstore.DefaultConfig())
	})
}

// BenchmarkDecideMemory measures the memory store's decision for one call
// through a pool-wide and a client bucket: granted (a huge refill keeps both
// buckets full) and denied (the client bucket is drained; it regains one
// unit a second, so denied/op stays at about 1).
func BenchmarkDecideMemory(b *testing.B) {
	big := limiter.Limit{Capacity: 1_000_000_000, Refill: 1_000_000_000}
	tests := map[string]struct {
		client limiter.Limit
		drain  bool
	}{
		"granted": {client: big},
		"denied":  {client: limiter.Limit{Capacity: 1, Refill: 1}, drain: true},
	}
	for name, tc := range tests {
		req := limiter.Request{Takes: []limiter.Take{
			{Key: limiter.Key{Pool: "chat"}, Limit: big, Cost: 1},
			{Key: limiter.Key{Pool: "chat", Client: "alice"}, Limit: tc.client, Cost: 1},
		}}
		setup := func(b *testing.B) *memstore.Store {
			s := newStore(b, memstore.DefaultConfig())
			if tc.drain {
				d, err := s.Reserve(context.Background(), req)
				require.NoError(b, err)
				require.True(b, d.Allowed)
			}
			return s
		}
		b.Run(name, func(b *testing.B) {
			s := setup(b)
			ctx := context.Background()
			var deniedCalls int
			b.ReportAllocs()
			for b.Loop() {
				d, err := s.Reserve(ctx, req)
				if err != nil {
					b.Fatal(err)
				}
				if !d.Allowed {
					deniedCalls++
				}
			}
			b.ReportMetric(float64(deniedCalls)/float64(b.N), "denied/op")
		})
		b.Run(name+"_parallel", func(b *testing.B) {
			s := setup(b)
			ctx := context.Background()
			var deniedCalls atomic.Int64
			b.ReportAllocs()
			b.ResetTimer()
			b.RunParallel(func(pb *testing.PB) {
				for pb.Next() {
					d, err := s.Reserve(ctx, req)
					if err != nil {
						b.Error(err)
						return
					}
					if !d.Allowed {
						deniedCalls.Add(1)
					}
				}
			})
			b.ReportMetric(float64(deniedCalls.Load())/float64(b.N), "denied/op")
		})
	}
}

func TestSweep(t *testing.T) {
	clk := fakeclock.New(epoch)
	s := newStore(t, memstore.Config{Clock: clk})
	l := limiter.Limit{Capacity: 10, Refill: 1}
	reserve := func(client string, cost int64) limiter.Decision {
		t.Helper()
		d, err := s.Reserve(context.Background(), limiter.Request{
			Takes: []limiter.Take{{Key: limiter.Key{Pool: "p", Client: client}, Limit: l, Cost: cost}},
		})
		require.NoError(t, err)
		return d
	}

	require.True(t, reserve("light", 1).Allowed)
	require.True(t, reserve("heavy", 5).Allowed)
	require.False(t, reserve("never", 11).Allowed)
	assert.Equal(t, 2, s.Len(), "a denied call on a new key stores nothing")

	tests := []struct {
		name  string
		after time.Duration
		want  int
	}{
		{"at the same instant both are partial", 0, 2},
		{"before the last write nothing is full", -time.Hour, 2},
		{"one second on, the light bucket is full and forgotten", time.Second, 1},
		{"one microsecond short of refilling the heavy one", 5*time.Second - time.Microsecond, 1},
		{"five seconds on, both are forgotten", 5 * time.Second, 0},
	}
	for _, tc := range tests { // in order: each step sweeps the previous one's store
		t.Run(tc.name, func(t *testing.T) {
			s.Sweep(epoch.Add(tc.after))
			assert.Equal(t, tc.want, s.Len())
		})
	}

	// A forgotten bucket is the same as a full one.
	clk.Set(epoch.Add(5 * time.Second))
	d := reserve("heavy", 10)
	assert.True(t, d.Allowed)
	assert.Equal(t, int64(0), d.Buckets[0].Remaining)
}

func TestSweeperRuns(t *testing.T) {
	clk := fakeclock.New(epoch)
	s := newStore(t, memstore.Config{Clock: clk, SweepInterval: time.Millisecond})
	l := limiter.Limit{Capacity: 10, Refill: 1}
	d, err := s.Reserve(context.Background(), limiter.Request{Takes: []limiter.Take{{Key: limiter.Key{Pool: "p"}, Limit: l, Cost: 3}}})
	require.NoError(t, err)
	require.True(t, d.Allowed)
	require.Equal(t, 1, s.Len())

	// The sweeper reads the store's clock: the bucket stays until it is full.
	clk.Advance(3 * time.Second)
	assert.Eventually(t, func() bool { return s.Len() == 0 }, 5*time.Second, time.Millisecond)
}

func TestCloseStopsSweeper(t *testing.T) {
	defer goleak.VerifyNone(t)
	s, err := memstore.New(memstore.Config{Clock: fakeclock.New(epoch), SweepInterval: time.Millisecond})
	require.NoError(t, err)
	require.NoError(t, s.Close())
}

func TestClose(t *testing.T) {
	tests := map[string]struct {
		sweep time.Duration
	}{
		"without sweeper": {},
		"with sweeper":    {sweep: time.Hour},
	}
	for name, tc := range tests {
		t.Run(name, func(t *testing.T) {
			s, err := memstore.New(memstore.Config{Clock: fakeclock.New(epoch), SweepInterval: tc.sweep})
			require.NoError(t, err)
			require.NoError(t, s.Close())
			require.NoError(t, s.Close(), "Close is idempotent")

			_, err = s.Reserve(context.Background(), limiter.Request{Takes: []limiter.Take{
				{Key: limiter.Key{Pool: "p"}, Limit: limiter.Limit{Capacity: 1, Refill: 1}, Cost: 1},
			}})
			assert.ErrorIs(t, err, memstore.ErrClosed)
		})
	}
}

func TestCloseConcurrent(t *testing.T) {
	s, err := memstore.New(memstore.Config{Clock: fakeclock.New(epoch), SweepInterval: time.Millisecond})
	require.NoError(t, err)
	errs := make(chan error, 8)
	for range cap(errs) {
		go func() { errs <- s.Close() }()
	}
	for range cap(errs) {
		assert.NoError(t, <-errs)
	}
}

func TestReserveDuplicateKey(t *testing.T) {
	s := newStore(t, memstore.Config{Clock: fakeclock.New(epoch)})
	l := limiter.Limit{Capacity: 10, Refill: 1}
	other := limiter.Take{Key: limiter.Key{Pool: "p", Client: "b"}, Limit: l, Cost: 1}
	dup := limiter.Take{Key: limiter.Key{Pool: "p", Client: "a"}, Limit: l, Cost: 1}

	_, err := s.Reserve(context.Background(), limiter.Request{Takes: []limiter.Take{other, dup, dup}})
	require.Error(t, err)
	assert.Contains(t, err.Error(), limiter.Key{Pool: "p", Client: "a"}.String())
	assert.Equal(t, 0, s.Len(), "nothing was taken")

	// The same client in two pools is two keys, not a duplicate.
	d, err := s.Reserve(context.Background(), limiter.Request{Takes: []limiter.Take{
		dup, {Key: limiter.Key{Pool: "q", Client: "a"}, Limit: l, Cost: 1},
	}})
	require.NoError(t, err)
	assert.True(t, d.Allowed)
}

func TestReserveWithoutNowUsesClock(t *testing.T) {
	clk := fakeclock.New(epoch)
	s := newStore(t, memstore.Config{Clock: clk})
	take := limiter.Take{Key: limiter.Key{Pool: "p"}, Limit: limiter.Limit{Capacity: 4, Refill: 2}, Cost: 4}
	reserve := func() limiter.Decision {
		t.Helper()
		d, err := s.Reserve(context.Background(), limiter.Request{Takes: []limiter.Take{take}})
		require.NoError(t, err)
		return d
	}

	require.True(t, reserve().Allowed)
	d := reserve()
	require.False(t, d.Allowed)
	assert.Equal(t, 2*time.Second, d.RetryAfter)
	clk.Advance(2 * time.Second)
	assert.True(t, reserve().Allowed, "the store's clock moved the refill")
}

func TestReserveNowOverridesClock(t *testing.T) {
	clk := fakeclock.New(epoch)
	s := newStore(t, memstore.Config{Clock: clk})
	take := limiter.Take{Key: limiter.Key{Pool: "p"}, Limit: limiter.Limit{Capacity: 4, Refill: 2}, Cost: 4}
	reserve := func(now time.Time) limiter.Decision {
		t.Helper()
		d, err := s.Reserve(context.Background(), limiter.Request{Takes: []limiter.Take{take}, Now: now})
		require.NoError(t, err)
		return d
	}

	require.True(t, reserve(epoch).Allowed)
	assert.True(t, reserve(epoch.Add(2*time.Second)).Allowed, "the request's time, not the clock's, refilled the bucket")
	d := reserve(time.Time{})
	assert.False(t, d.Allowed, "the clock still reads the epoch, before the last write")
	assert.Equal(t, 2*time.Second, d.RetryAfter)
}

func TestNilClockIsSystemClock(t *testing.T) {
	s := newStore(t, memstore.Config{})
	take := limiter.Take{Key: limiter.Key{Pool: "p"}, Limit: limiter.Limit{Capacity: 1, Refill: 1}, Cost: 1}
	d, err := s.Reserve(context.Background(), limiter.Request{Takes: []limiter.Take{take}})
	require.NoError(t, err)
	assert.True(t, d.Allowed)
	s.Sweep(time.Now().Add(time.Minute))
	assert.Equal(t, 0, s.Len(), "the bucket was dated on the wall clock")
}

func TestConfigValidate(t *testing.T) {
	tests := map[string]struct {
		cfg     func() memstore.Config
		wantErr string
	}{
		"default": {cfg: memstore.DefaultConfig},
		"no sweeping": {cfg: func() memstore.Config {
			c := memstore.DefaultConfig()
			c.SweepInterval = 0
			return c
		}},
		"nil clock": {cfg: func() memstore.Config {
			c := memstore.DefaultConfig()
			c.Clock = nil
			return c
		}},
		"negative sweep interval": {cfg: func() memstore.Config {
			c := memstore.DefaultConfig()
			c.SweepInterval = -time.Second
			return c
		}, wantErr: "sweep interval -1s is negative"},
	}
	for name, tc := range tests {
		t.Run(name, func(t *testing.T) {
			cfg := tc.cfg()
			err := cfg.Validate()
			s, newErr := memstore.New(cfg)
			if tc.wantErr == "" {
				require.NoError(t, err)
				require.NoError(t, newErr)
				assert.NoError(t, s.Close())
				return
			}
			require.ErrorContains(t, err, tc.wantErr)
			require.ErrorContains(t, newErr, tc.wantErr, "New validates")
			assert.Nil(t, s)
		})
	}
}

func TestDefaultConfig(t *testing.T) {
	cfg := memstore.DefaultConfig()
	assert.Equal(t, limiter.SystemClock{}, cfg.Clock)
	assert.Positive(t, cfg.SweepInterval)
}
