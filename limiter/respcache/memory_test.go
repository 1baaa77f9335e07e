package respcache_test

import (
	"context"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/tollgate/tollgate/internal/fakeclock"
	"github.com/tollgate/tollgate/limiter/respcache"
	"github.com/tollgate/tollgate/limiter/respcache/cachetest"
)

func newMemory(t testing.TB, cfg respcache.MemoryConfig) *respcache.Memory {
	t.Helper()
	m, err := respcache.NewMemory(cfg)
	require.NoError(t, err)
	t.Cleanup(func() { assert.NoError(t, m.Close()) })
	return m
}

func TestMemoryConformance(t *testing.T) {
	cachetest.Run(t, func(t *testing.T, o cachetest.Options) []respcache.Cache {
		m := newMemory(t, respcache.MemoryConfig{MaxBytes: 64 << 20, MaxEntryBytes: cachetest.MaxEntryBytes, Clock: o.Clock, Metrics: o.Metrics})
		cs := make([]respcache.Cache, o.Members)
		for i := range cs {
			cs[i] = m // one process: every member is the one cache
		}
		return cs
	})
}

func TestMemoryConfig(t *testing.T) {
	for name, tc := range map[string]struct {
		cfg     respcache.MemoryConfig
		wantErr string
	}{
		"default":                        {cfg: respcache.DefaultMemoryConfig()},
		"zero means the defaults":        {cfg: respcache.MemoryConfig{}},
		"a small cache caps its entries": {cfg: respcache.MemoryConfig{MaxBytes: 1000}},
		"negative bytes":                 {cfg: respcache.MemoryConfig{MaxBytes: -1}, wantErr: "must not be negative"},
		"negative entry bytes":           {cfg: respcache.MemoryConfig{MaxEntryBytes: -1}, wantErr: "must not be negative"},
		"entries over the cache":         {cfg: respcache.MemoryConfig{MaxBytes: 1000, MaxEntryBytes: 1001}, wantErr: "exceed"},
		"entries over the default":       {cfg: respcache.MemoryConfig{MaxEntryBytes: respcache.DefaultMaxBytes + 1}, wantErr: "exceed"},
	} {
		t.Run(name, func(t *testing.T) {
			m, err := respcache.NewMemory(tc.cfg)
			if tc.wantErr != "" {
				require.ErrorContains(t, err, tc.wantErr)
				assert.Nil(t, m)
				return
			}
			require.NoError(t, err)
			assert.NoError(t, m.Close())
		})
	}
}

// key returns a response key of the default scope and route.
func key(hash string) respcache.Key {
	return respcache.Key{Kind: respcache.Response, Scope: "client-a", Route: "chat", Hash: hash}
}

func body(n int) respcache.Entry {
	return respcache.Entry{Status: 200, Body: []byte(strings.Repeat("x", n))}
}

// TestMemoryLRU fills a cache bounded to about four entries: the least
// recently used (not the oldest written) go first, and the bytes it holds
// never pass its bound.
func TestMemoryLRU(t *testing.T) {
	reg := prometheus.NewRegistry()
	mets, err := respcache.NewMetrics(reg)
	require.NoError(t, err)
	one := respcache.Size(key("k0"), body(1000))
	m := newMemory(t, respcache.MemoryConfig{MaxBytes: 4*one + one/2, MaxEntryBytes: 2 * one, Metrics: mets})
	ctx := context.Background()
	for i := range 4 {
		require.NoError(t, m.Complete(ctx, key(fmt.Sprint("k", i)), body(1000), time.Hour))
	}
	n, b := m.Stats()
	require.Equal(t, 4, n)
	require.Equal(t, 4*one, b)
	_, ok := m.Get(ctx, key("k0")) // k0 is now the most recently used; k1 the least
	require.True(t, ok)

	require.NoError(t, m.Complete(ctx, key("k4"), body(1000), time.Hour))
	for name, want := range map[string]bool{"k0": true, "k1": false, "k2": true, "k3": true, "k4": true} {
		_, ok := m.Get(ctx, key(name))
		assert.Equal(t, want, ok, name)
	}
	// k1 gone; order now (most recent first) k4 k3 k2 k0 after the Gets
	// above in map order — so read one more time in a known order.
	for _, name := range []string{"k0", "k2", "k3", "k4"} {
		_, ok := m.Get(ctx, key(name))
		require.True(t, ok)
	}
	// A double-size entry evicts the two least recently used: k0 and k2.
	require.NoError(t, m.Complete(ctx, key("big"), body(int(2*one-respcache.Size(key("big"), respcache.Entry{}))), time.Hour))
	for name, want := range map[string]bool{"k0": false, "k2": false, "k3": true, "k4": true, "big": true} {
		_, ok := m.Get(ctx, key(name))
		assert.Equal(t, want, ok, name)
	}
	n, b = m.Stats()
	assert.Equal(t, 3, n)
	assert.LessOrEqual(t, b, 4*one+one/2)
	assert.Equal(t, 3.0, value(t, reg, "tollgate_cache_evictions_total", "level", "l1", "reason", "size"))
	assert.Equal(t, float64(b), value(t, reg, "tollgate_cache_bytes", "level", "l1"))
	assert.Equal(t, 3.0, value(t, reg, "tollgate_cache_entries", "level", "l1"))

	require.NoError(t, m.Close())
	assert.Zero(t, value(t, reg, "tollgate_cache_bytes", "level", "l1"), "a closed cache holds nothing")
}

// TestMemoryExpirySweep: expired entries leave as the cache is used, the
// soonest expired first, counted as ttl evictions, even when never looked
// up again.
func TestMemoryExpirySweep(t *testing.T) {
	reg := prometheus.NewRegistry()
	mets, err := respcache.NewMetrics(reg)
	require.NoError(t, err)
	clk := fakeclock.New(cachetest.Epoch)
	m := newMemory(t, respcache.MemoryConfig{Clock: clk, Metrics: mets})
	ctx := context.Background()
	for i := range 10 {
		require.NoError(t, m.Complete(ctx, key(fmt.Sprint("k", i)), body(100), time.Duration(i+1)*time.Minute))
	}
	clk.Advance(5 * time.Minute)
	_, ok := m.Get(ctx, key("other"))
	require.False(t, ok)
	n, _ := m.Stats()
	assert.Equal(t, 5, n, "the five expired by now are gone")
	assert.Equal(t, 5.0, value(t, reg, "tollgate_cache_evictions_total", "level", "l1", "reason", "ttl"))
	assert.Equal(t, 5.0, value(t, reg, "tollgate_cache_entries", "level", "l1"))
}

func TestMemoryClose(t *testing.T) {
	m, err := respcache.NewMemory(respcache.DefaultMemoryConfig())
	require.NoError(t, err)
	ctx := context.Background()
	require.NoError(t, m.Complete(ctx, key("h"), body(10), time.Minute))
	_, st := m.Begin(ctx, key("flight"), 0, time.Minute)
	require.Equal(t, respcache.Lead, st)
	waiter := make(chan respcache.State, 1)
	go func() {
		_, st := m.Begin(ctx, key("flight"), time.Minute, time.Minute)
		waiter <- st
	}()
	require.NoError(t, m.Close())
	select {
	case st := <-waiter:
		assert.Contains(t, []respcache.State{respcache.Busy, respcache.Lead}, st,
			"a waiter gives up at Close (or, arriving after it, goes upstream uncached)")
	case <-time.After(30 * time.Second):
		require.FailNow(t, "a waiter was not released by Close")
	}
	require.NoError(t, m.Close(), "Close twice is fine")

	_, ok := m.Get(ctx, key("h"))
	assert.False(t, ok)
	_, st = m.Begin(ctx, key("h"), time.Minute, time.Minute)
	assert.Equal(t, respcache.Lead, st, "a closed cache sends calls upstream")
	assert.ErrorIs(t, m.Complete(ctx, key("h"), body(10), time.Minute), respcache.ErrClosed)
	_, err = m.Delete(ctx, key("h"))
	assert.ErrorIs(t, err, respcache.ErrClosed)
	_, err = m.Invalidate(ctx, respcache.Response, "s", "")
	assert.ErrorIs(t, err, respcache.ErrClosed)
	m.Abandon(ctx, key("h"))
}

// TestMemoryNoLease: a Begin with no lease claims nothing: it leads, and
// so does the next.
func TestMemoryNoLease(t *testing.T) {
	m := newMemory(t, respcache.DefaultMemoryConfig())
	ctx := context.Background()
	for range 2 {
		_, st := m.Begin(ctx, key("h"), time.Minute, 0)
		assert.Equal(t, respcache.Lead, st)
	}
}

// TestMemoryCopies: Complete keeps a copy, so a caller's buffer reused
// afterwards does not change the entry.
func TestMemoryCopies(t *testing.T) {
	m := newMemory(t, respcache.DefaultMemoryConfig())
	ctx := context.Background()
	e := respcache.Entry{Status: 200, Headers: map[string]string{"a": "1"}, Body: []byte("hello")}
	require.NoError(t, m.Complete(ctx, key("h"), e, time.Minute))
	e.Body[0] = 'j'
	e.Headers["a"] = "2"
	got, ok := m.Get(ctx, key("h"))
	require.True(t, ok)
	assert.Equal(t, "hello", string(got.Body))
	assert.Equal(t, "1", got.Headers["a"])
}
