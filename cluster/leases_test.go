package cluster

import (
	"context"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/tollgate/tollgate/internal/fakeclock"
	"github.com/tollgate/tollgate/limiter"
	"github.com/tollgate/tollgate/limiter/memstore"
	"github.com/tollgate/tollgate/policy"
)

// TestLeaseRefilled: what the shared bucket has refilled since a lease
// heard it is counted in whole units at the limit's own rate, exactly,
// also for rates that are no whole number of units a second.
func TestLeaseRefilled(t *testing.T) {
	t0 := time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)
	perMinute := limiter.Limit{Capacity: 10_000, Refill: 500, Per: 3 * time.Second} // 10000/min
	perHour := limiter.Limit{Capacity: 100, Refill: 1, Per: 36 * time.Second}       // 100/h
	tests := map[string]struct {
		limit limiter.Limit
		after time.Duration
		want  int64
	}{
		"10000/min, a unit after 6 ms":        {limit: perMinute, after: 6 * time.Millisecond, want: 1},
		"10000/min, none a µs before":         {limit: perMinute, after: 6*time.Millisecond - time.Microsecond, want: 0},
		"10000/min, 10,000 in a minute":       {limit: perMinute, after: time.Minute, want: 10_000},
		"10000/min, no more than capacity":    {limit: perMinute, after: 24 * time.Hour, want: 10_000},
		"100/h, a unit after 36 s":            {limit: perHour, after: 36 * time.Second, want: 1},
		"100/h, none a µs before":             {limit: perHour, after: 36*time.Second - time.Microsecond, want: 0},
		"100/h, 99 a µs before the full hour": {limit: perHour, after: time.Hour - time.Microsecond, want: 99},
		"166/s, 166 in a second":              {limit: limiter.Limit{Capacity: 10_000, Refill: 166}, after: time.Second, want: 166},
		"no refill":                           {limit: limiter.Limit{Capacity: 10}, after: time.Hour, want: 0},
		"clock behind":                        {limit: perMinute, after: -time.Second, want: 0},
	}
	for name, tc := range tests {
		t.Run(name, func(t *testing.T) {
			l := &lease{leftAt: t0}
			assert.Equal(t, tc.want, l.refilled(tc.limit, t0.Add(tc.after)))
		})
	}
}

// TestShareLimit: a member's share of a limit in outage mode is 1/N of
// its capacity (at least a unit) and exactly 1/N of its refill, in lowest
// terms.
func TestShareLimit(t *testing.T) {
	tests := map[string]struct {
		limit   limiter.Limit
		members int
		want    limiter.Limit
	}{
		"alone":              {limit: limiter.Limit{Capacity: 10_000, Refill: 166}, members: 1, want: limiter.Limit{Capacity: 10_000, Refill: 166}},
		"166/s among 2":      {limit: limiter.Limit{Capacity: 10_000, Refill: 166}, members: 2, want: limiter.Limit{Capacity: 5_000, Refill: 83}},
		"166/s among 3":      {limit: limiter.Limit{Capacity: 10_000, Refill: 166}, members: 3, want: limiter.Limit{Capacity: 3_333, Refill: 166, Per: 3 * time.Second}},
		"10000/min among 2":  {limit: limiter.Limit{Capacity: 10_000, Refill: 500, Per: 3 * time.Second}, members: 2, want: limiter.Limit{Capacity: 5_000, Refill: 250, Per: 3 * time.Second}},
		"10000/min among 5":  {limit: limiter.Limit{Capacity: 10_000, Refill: 500, Per: 3 * time.Second}, members: 5, want: limiter.Limit{Capacity: 2_000, Refill: 100, Per: 3 * time.Second}},
		"1/s among 3":        {limit: limiter.Limit{Capacity: 2, Refill: 1}, members: 3, want: limiter.Limit{Capacity: 1, Refill: 1, Per: 3 * time.Second}},
		"1/d among 2":        {limit: limiter.Limit{Capacity: 5, Refill: 1, Per: 24 * time.Hour}, members: 2, want: limiter.Limit{Capacity: 2, Refill: 1, Per: 48 * time.Hour}},
		"no refill stays so": {limit: limiter.Limit{Capacity: 10}, members: 3, want: limiter.Limit{Capacity: 3}},
	}
	for name, tc := range tests {
		t.Run(name, func(t *testing.T) {
			assert.Equal(t, tc.want, shareLimit(tc.limit, tc.members))
		})
	}
}

// TestBackoffHoldsReservedParts: a provider's pause heard over gossip
// empties this member's leases of the pool's reserved parts as well as of
// the shared part (the same upstream); a count of units left trims only
// the shared part, which it speaks of; other pools and clients' own
// buckets are left alone.
func TestBackoffHoldsReservedParts(t *testing.T) {
	epoch := time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)
	clk := fakeclock.New(epoch)
	shared, err := memstore.New(memstore.Config{Clock: clk})
	require.NoError(t, err)
	cfg := DefaultConfig()
	cfg.Clock, cfg.SyncEvery = clk, time.Hour
	s, err := NewStore(cfg, shared, nil, prometheus.NewRegistry())
	require.NoError(t, err)
	t.Cleanup(func() { assert.NoError(t, s.Close()); assert.NoError(t, shared.Close()) })

	lim := limiter.Limit{Capacity: 1000, Refill: 100}
	keys := map[string]limiter.Key{
		"shared":     {Pool: "gpt"},
		"part":       {Pool: "gpt", Client: policy.ReservedKeyPrefix + "tier:enterprise#keep"},
		"client":     {Pool: "gpt", Client: "acme"},
		"other pool": {Pool: "claude"},
		"other part": {Pool: "claude", Client: policy.ReservedKeyPrefix + "tier:enterprise"},
	}
	for _, k := range keys {
		d, err := s.Reserve(context.Background(), limiter.Request{Takes: []limiter.Take{{Key: k, Limit: lim, Cost: 1}}})
		require.NoError(t, err)
		require.True(t, d.Allowed)
	}
	units := func(name string) int64 {
		s.mu.Lock()
		defer s.mu.Unlock()
		l, ok := s.leases[keys[name]]
		require.True(t, ok, "%s holds a lease", name)
		return l.units
	}
	for name := range keys {
		require.Positive(t, units(name), name)
	}
	s.Backoff("", "gpt", time.Minute, -1)
	assert.Zero(t, units("shared"))
	assert.Zero(t, units("part"))
	assert.Positive(t, units("client"), "a client's own bucket is its tier's cap, not the upstream")
	assert.Positive(t, units("other pool"))
	assert.Positive(t, units("other part"))

	before := units("other part")
	s.Backoff("", "claude", 0, 0)
	assert.Zero(t, units("other pool"), "no units left upstream: the shared part's lease is trimmed")
	assert.Equal(t, before, units("other part"), "a count of units left speaks of the shared part only")
}

// TestRefillNoticeKeepsOtherWaits: a peer's refill notice ends the wait
// of a bucket this member found empty, and leaves alone a hot bucket's
// round and a member's wait held to its priority share (a notice of one
// unit, or one heard twice, would otherwise send every member to Redis at
// once and give a low-priority member first-come access again).
func TestRefillNoticeKeepsOtherWaits(t *testing.T) {
	epoch := time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)
	clk := fakeclock.New(epoch)
	shared, err := memstore.New(memstore.Config{Clock: clk})
	require.NoError(t, err)
	cfg := DefaultConfig()
	cfg.Clock, cfg.SyncEvery = clk, time.Hour
	s, err := NewStore(cfg, shared, nil, prometheus.NewRegistry())
	require.NoError(t, err)
	t.Cleanup(func() { assert.NoError(t, s.Close()); assert.NoError(t, shared.Close()) })

	later := epoch.Add(time.Minute)
	waits := map[string]*lease{
		"empty":  {shortUntil: later, shortNeed: 1, possible: true},
		"hot":    {shortUntil: later, shortNeed: 1, possible: true, hotUntil: later},
		"shared": {shortUntil: later, shortNeed: 1, possible: true, shareUntil: later},
	}
	s.mu.Lock()
	for name, l := range waits {
		s.leases[limiter.Key{Pool: "gpt-" + name}] = l
	}
	s.mu.Unlock()
	for name := range waits {
		s.Refill("m2", "gpt-"+name, 5)
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	assert.Equal(t, epoch, waits["empty"].shortUntil, "found empty: asks again at once")
	assert.Equal(t, later, waits["hot"].shortUntil, "a hot bucket keeps its round")
	assert.Equal(t, later, waits["shared"].shortUntil, "held to its share: keeps its wait")
}
