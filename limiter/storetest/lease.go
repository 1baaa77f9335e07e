package storetest

import (
	"context"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/tollgate/tollgate/internal/fakeclock"
	"github.com/tollgate/tollgate/limiter"
	"github.com/tollgate/tollgate/policy"
)

// A backend shared by a fleet: budgets and slots, bucket adjustments, and
// the leases and batches of the cluster layer.
type fleetBackend interface {
	limiter.Backend
	limiter.Adjuster
	limiter.Leaser
	limiter.SlotLeaser
	limiter.Booker
}

// RunLease runs the conformance suite of leases (bucket slices, slot
// leases, booked batches) against backends made by newBackend (same
// contract as Run's). Every call carries the fake clock's time, except
// Book, which takes none.
func RunLease(t *testing.T, newBackend func(t *testing.T, clock limiter.Clock) limiter.Backend) {
	for name, test := range map[string]func(*testing.T, *leaseHarness){
		"a lease takes what it can, at least its need": testLeaseGrant,
		"a lease short of its need takes nothing":      testLeaseShort,
		"leased units are gone from the bucket":        testLeaseShared,
		"leases of several buckets at once":            testLeaseMany,
		"invalid leases are refused":                   testLeaseInvalid,
		"leased slots count against the client":        testSlotLease,
		"leased slots lapse unless renewed":            testSlotLapse,
		"a batch is booked exactly once":               testBook,
		"a batch books its savings once":               testBookSavings,
		"a lease at a fractional rate":                 testFractionalLease,
	} {
		t.Run(name, func(t *testing.T) {
			clk := fakeclock.New(Epoch)
			b := newBackend(t, clk)
			require.NotNil(t, b)
			t.Cleanup(func() { assert.NoError(t, b.Close()) })
			fb, ok := b.(fleetBackend)
			require.True(t, ok, "the backend leases, leases slots and books batches")
			test(t, &leaseHarness{clock: clk, b: fb})
		})
	}
}

type leaseHarness struct {
	clock *fakeclock.Clock
	b     fleetBackend
	n     int
}

func (h *leaseHarness) lease(t *testing.T, asks ...limiter.LeaseAsk) []limiter.LeaseGrant {
	t.Helper()
	g, err := h.b.Lease(context.Background(), asks, h.clock.Now())
	require.NoError(t, err)
	require.Len(t, g, len(asks))
	return g
}

func (h *leaseHarness) level(t *testing.T, k limiter.Key, l limiter.Limit) int64 {
	t.Helper()
	d, err := h.b.Reserve(context.Background(), limiter.Request{Takes: []limiter.Take{{Key: k, Limit: l}}, Now: h.clock.Now()})
	require.NoError(t, err)
	return d.Buckets[0].Remaining
}

func ask(k limiter.Key, l limiter.Limit, want, need int64) limiter.LeaseAsk {
	return limiter.LeaseAsk{Key: k, Limit: l, Want: want, Need: need}
}

func testLeaseGrant(t *testing.T, h *leaseHarness) {
	k, l := pool("lease"), lim(100, 10)
	g := h.lease(t, ask(k, l, 30, 5))
	assert.Equal(t, limiter.LeaseGrant{Granted: 30, Remaining: 70, ResetAfter: 3 * time.Second, Possible: true}, g[0])
	g = h.lease(t, ask(k, l, 100, 5))
	assert.Equal(t, int64(70), g[0].Granted, "all there is, above the need")
	assert.Zero(t, g[0].Remaining)
	assert.Equal(t, 10*time.Second, g[0].ResetAfter)
	h.clock.Advance(time.Second)
	g = h.lease(t, ask(k, l, 0, 0))
	assert.Zero(t, g[0].Granted, "a zero ask reads the bucket")
	assert.Equal(t, int64(10), g[0].Remaining)
}

func testLeaseShort(t *testing.T, h *leaseHarness) {
	k, l := pool("short"), lim(10, 2)
	require.Equal(t, int64(8), h.lease(t, ask(k, l, 8, 1))[0].Granted)
	g := h.lease(t, ask(k, l, 5, 3)) // 2 left, 3 needed: 500 ms away
	assert.Equal(t, limiter.LeaseGrant{Granted: 0, Remaining: 2, ResetAfter: 4 * time.Second, RetryAfter: 500 * time.Millisecond, Possible: true}, g[0])
	assert.Equal(t, int64(2), h.level(t, k, l), "a refused lease takes nothing")
	g = h.lease(t, ask(k, l, 20, 20))
	assert.False(t, g[0].Possible, "a need above the capacity never fits")
	assert.Zero(t, g[0].RetryAfter)
	never := pool("never")
	require.Equal(t, int64(5), h.lease(t, ask(never, lim(5, 0), 5, 5))[0].Granted)
	g = h.lease(t, ask(never, lim(5, 0), 1, 1))
	assert.False(t, g[0].Possible, "a bucket that never refills and is empty never fits")
}

func testLeaseShared(t *testing.T, h *leaseHarness) {
	k, l := pool("shared"), lim(10, 1)
	require.Equal(t, int64(6), h.lease(t, ask(k, l, 6, 6))[0].Granted)
	d, err := h.b.Reserve(context.Background(), limiter.Request{Takes: []limiter.Take{{Key: k, Limit: l, Cost: 5}}, Now: h.clock.Now()})
	require.NoError(t, err)
	assert.False(t, d.Allowed, "6 of 10 leased: 5 more do not fit")
	assert.Equal(t, time.Second, d.RetryAfter)
	// The lease's unused units come back with a refund.
	st, err := h.b.Refund(context.Background(), []limiter.Refund{{Key: k, Limit: l, Units: 4}}, h.clock.Now())
	require.NoError(t, err)
	assert.Equal(t, int64(8), st[0].Remaining)
}

func testLeaseMany(t *testing.T, h *leaseHarness) {
	a, b := pool("many-a"), client("many-a", "acme")
	la, lb := lim(100, 1), lim(10, 1)
	g := h.lease(t, ask(a, la, 50, 5), ask(b, lb, 50, 5))
	assert.Equal(t, []int64{50, 10}, []int64{g[0].Granted, g[1].Granted})
	g = h.lease(t, ask(a, la, 10, 5), ask(b, lb, 10, 5))
	assert.Equal(t, int64(10), g[0].Granted)
	assert.Zero(t, g[1].Granted, "each bucket is answered on its own")
	assert.Equal(t, 5*time.Second, g[1].RetryAfter)
}

func testLeaseInvalid(t *testing.T, h *leaseHarness) {
	k, l := pool("invalid"), lim(10, 1)
	for name, asks := range map[string][]limiter.LeaseAsk{
		"want below need": {ask(k, l, 1, 2)},
		"negative need":   {ask(k, l, 1, -1)},
		"no capacity":     {ask(k, lim(0, 1), 1, 1)},
		"twice":           {ask(k, l, 1, 1), ask(k, l, 1, 1)},
	} {
		_, err := h.b.Lease(context.Background(), asks, h.clock.Now())
		assert.Error(t, err, name)
	}
	assert.Equal(t, int64(10), h.level(t, k, l))
	empty, err := h.b.Lease(context.Background(), nil, h.clock.Now())
	require.NoError(t, err)
	assert.Empty(t, empty)
}

func (h *leaseHarness) slots(t *testing.T, holder string, want int64) (held, inFlight int64) {
	t.Helper()
	held, inFlight, err := h.b.LeaseSlots(context.Background(), limiter.SlotLease{Client: "acme", Max: 5, Holder: holder, Want: want, TTL: 10 * time.Second}, h.clock.Now())
	require.NoError(t, err)
	return held, inFlight
}

func (h *leaseHarness) hold(t *testing.T) limiter.Decision {
	t.Helper()
	h.n++
	d, err := h.b.Reserve(context.Background(), limiter.Request{Now: h.clock.Now(), Hold: &limiter.Hold{
		ID: "slot-" + string(rune('a'+h.n)), TTL: time.Minute, Period: period, Budgets: []limiter.Budget{{Owner: "acme", Limit: limiter.Unlimited}},
		Slot: &limiter.Slot{Client: "acme", Max: 5},
	}})
	require.NoError(t, err)
	return d
}

func testSlotLease(t *testing.T, h *leaseHarness) {
	held, inFlight := h.slots(t, "node-a", 3)
	assert.Equal(t, [2]int64{3, 3}, [2]int64{held, inFlight})
	require.True(t, h.hold(t).Allowed)
	d := h.hold(t)
	require.True(t, d.Allowed)
	assert.Equal(t, int64(5), d.InFlight, "three leased, two held")
	assert.Equal(t, limiter.ReasonConcurrency, h.hold(t).Reason, "the leased slots count")
	held, inFlight = h.slots(t, "node-b", 2)
	assert.Equal(t, [2]int64{0, 5}, [2]int64{held, inFlight}, "none left for another holder")
	held, _ = h.slots(t, "node-a", 1) // node-a gives two back
	assert.Equal(t, int64(1), held)
	held, inFlight = h.slots(t, "node-b", 2)
	assert.Equal(t, [2]int64{2, 5}, [2]int64{held, inFlight})
	held, inFlight = h.slots(t, "node-a", 0)
	assert.Equal(t, [2]int64{0, 4}, [2]int64{held, inFlight})
	u, err := h.b.Usage(context.Background(), period, []limiter.Budget{{Owner: "acme", Limit: limiter.Unlimited}}, h.clock.Now())
	require.NoError(t, err)
	assert.Equal(t, int64(4), u.InFlight, "two reservations and node-b's two")
}

func testSlotLapse(t *testing.T, h *leaseHarness) {
	held, _ := h.slots(t, "node-a", 5)
	require.Equal(t, int64(5), held)
	assert.Equal(t, limiter.ReasonConcurrency, h.hold(t).Reason)
	h.clock.Advance(5 * time.Second)
	held, _ = h.slots(t, "node-a", 5) // renewed: 10 s from now
	require.Equal(t, int64(5), held)
	h.clock.Advance(9 * time.Second)
	assert.Equal(t, limiter.ReasonConcurrency, h.hold(t).Reason, "renewed, still held")
	h.clock.Advance(time.Second) // a holder that stopped renewing loses them
	assert.True(t, h.hold(t).Allowed)
	_, inFlight := h.slots(t, "node-b", 0)
	assert.Equal(t, int64(1), inFlight)
}

func testBook(t *testing.T, h *leaseHarness) {
	ctx := context.Background()
	a, b := limiter.Budget{Owner: "acme", Limit: 1000}, limiter.Budget{Owner: "acme-group", Limit: limiter.Unlimited}
	deltas := []limiter.SpendDelta{{Owner: "acme", Period: period, Spent: 300}, {Owner: "acme-group", Period: period, Spent: 300}}
	applied, err := h.b.Book(ctx, "node-a:1", deltas)
	require.NoError(t, err)
	assert.True(t, applied)
	applied, err = h.b.Book(ctx, "node-a:1", deltas)
	require.NoError(t, err)
	assert.False(t, applied, "the same batch twice is booked once")
	applied, err = h.b.Book(ctx, "node-a:2", []limiter.SpendDelta{{Owner: "acme", Period: period, Spent: -120}})
	require.NoError(t, err)
	assert.True(t, applied)
	u, err := h.b.Usage(ctx, period, []limiter.Budget{a, b}, h.clock.Now())
	require.NoError(t, err)
	assert.Equal(t, []policy.Money{180, 300}, []policy.Money{u.Budgets[0].Spent, u.Budgets[1].Spent})
	// Booked spend counts against the budget like any other.
	d, err := h.b.Reserve(ctx, limiter.Request{Now: h.clock.Now(), Hold: &limiter.Hold{ID: "after-book", TTL: time.Minute, Period: period, Cost: 900, Budgets: []limiter.Budget{a}}})
	require.NoError(t, err)
	assert.Equal(t, limiter.ReasonBudgetExceeded, d.Reason, "180 booked + 900 > 1000")
	for _, bad := range []string{"", "has space", "{brace}"} {
		_, err := h.b.Book(ctx, bad, deltas)
		assert.Error(t, err, bad)
	}
}
