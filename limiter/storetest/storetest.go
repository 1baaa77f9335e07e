// Package storetest is the conformance suite and the benchmarks that every
// limiter.Store passes: the memory store runs them today, and the Redis store
// runs the very same Run and Bench, so the two cannot drift apart. It is
// imported only from tests.
//
// The suite is deterministic: every Request carries an explicit Now read
// from a fake clock, never the zero time, so a store that would otherwise
// read its backend's clock (Redis TIME) decides on the suite's clock too.
// Expected numbers follow limiter.Apply, the single definition of an
// admission, with levels in micro-units (in 1/(Micro·Den) parts of a unit
// for a rate per Den seconds, see rates.go) and time in microseconds.
package storetest

import (
	"context"
	"fmt"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/tollgate/tollgate/internal/fakeclock"
	"github.com/tollgate/tollgate/limiter"
)

// Epoch is the fake clock's start in every subtest. Its Unix microseconds
// stay well below 2^53, as the Redis scripts need.
var Epoch = time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)

// Run runs the conformance suite against stores made by newStore.
//
// newStore must return a new store holding no buckets, distinct from every
// store it returned before (a Redis store gets its own key prefix), whose
// clock for requests without a time is clock. Run closes each store it gets
// when the subtest ends; newStore may register further cleanup on t.
//
// A store may forget a bucket once it has refilled completely under the last
// Limit it saw (a full bucket is the same as none), for example with a sweep
// or a key expiry; the suite never depends on such a bucket being kept.
func Run(t *testing.T, newStore func(t *testing.T, clock limiter.Clock) limiter.Store) {
	for name, test := range map[string]func(*testing.T, *harness){
		"refill over time":                 testRefill,
		"refill is exact":                  testRefillExact,
		"denied calls do not lose refill":  testDeniedKeepsRefill,
		"burst":                            testBurst,
		"zero cost":                        testZeroCost,
		"decision shape":                   testDecisionShape,
		"empty request":                    testEmptyRequest,
		"per-client isolation":             testIsolation,
		"multi-bucket atomicity":           testAtomicity,
		"shadow":                           testShadow,
		"exceeds capacity":                 testExceedsCapacity,
		"denial reason across buckets":     testDenialReason,
		"capacity raised":                  testCapacityRaised,
		"capacity lowered":                 testCapacityLowered,
		"refill rate changed":              testRefillChanged,
		"clock going backwards":            testClockBackwards,
		"concurrent single bucket":         testConcurrentSingle,
		"concurrent pool and clients":      testConcurrentPoolClients,
		"cancelled context":                testCancelled,
		"distinct stores":                  testDistinctStores,
		"fractional rates over a long run": testFractionalLongRun,
		"fractional rates wait exactly":    testFractionalWait,
		"rate period changed":              testRatePeriodChanged,
	} {
		t.Run(name, func(t *testing.T) {
			h := &harness{clock: fakeclock.New(Epoch), newStore: newStore}
			h.store = h.open(t)
			test(t, h)
		})
	}
}

// harness is one subtest's clock and store.
type harness struct {
	clock    *fakeclock.Clock
	store    limiter.Store
	newStore func(t *testing.T, clock limiter.Clock) limiter.Store
}

// open returns a new store on h's clock, closed when t ends.
func (h *harness) open(t *testing.T) limiter.Store {
	t.Helper()
	s := h.newStore(t, h.clock)
	require.NotNil(t, s)
	t.Cleanup(func() { assert.NoError(t, s.Close()) })
	return s
}

// reserveOn asks s for takes at the fake clock's time.
func (h *harness) reserveOn(t *testing.T, s limiter.Store, takes ...limiter.Take) limiter.Decision {
	t.Helper()
	d, err := s.Reserve(context.Background(), limiter.Request{Takes: takes, Now: h.clock.Now()})
	require.NoError(t, err)
	require.Len(t, d.Buckets, len(takes), "one bucket state per take")
	return d
}

func (h *harness) reserve(t *testing.T, takes ...limiter.Take) limiter.Decision {
	t.Helper()
	return h.reserveOn(t, h.store, takes...)
}

// remaining reads a bucket's whole units without charging it: a zero-cost
// take is always granted and reports the level.
func (h *harness) remaining(t *testing.T, key limiter.Key, l limiter.Limit) int64 {
	t.Helper()
	d := h.reserve(t, limiter.Take{Key: key, Limit: l})
	require.True(t, d.Allowed, "a zero-cost take is granted")
	return d.Buckets[0].Remaining
}

// granted asserts that d allowed the call.
func granted(t *testing.T, d limiter.Decision, msgAndArgs ...any) {
	t.Helper()
	require.True(t, d.Allowed, msgAndArgs...)
	assert.Equal(t, limiter.ReasonNone, d.Reason)
	assert.Equal(t, -1, d.Blocking)
	assert.Zero(t, d.RetryAfter)
}

// denied asserts that d refused the call for reason, blamed on blocking,
// with retry after wait.
func denied(t *testing.T, d limiter.Decision, reason limiter.Reason, blocking int, wait time.Duration, msgAndArgs ...any) {
	t.Helper()
	require.False(t, d.Allowed, msgAndArgs...)
	assert.Equal(t, reason, d.Reason, "reason")
	assert.Equal(t, blocking, d.Blocking, "blocking")
	assert.Equal(t, wait, d.RetryAfter, "retry after")
	if blocking >= 0 && blocking < len(d.Buckets) {
		assert.True(t, d.Buckets[blocking].Short, "the blocking bucket is short")
	}
}

func take(k limiter.Key, l limiter.Limit, cost int64) limiter.Take {
	return limiter.Take{Key: k, Limit: l, Cost: cost}
}

func pool(name string) limiter.Key   { return limiter.Key{Pool: name} }
func client(p, c string) limiter.Key { return limiter.Key{Pool: p, Client: c} }
func lim(capacity, refill int64) limiter.Limit {
	return limiter.Limit{Capacity: capacity, Refill: refill}
}

func testRefill(t *testing.T, h *harness) {
	k, l := pool("refill"), lim(10, 2) // one unit per 500 ms
	granted(t, h.reserve(t, take(k, l, 10)))
	denied(t, h.reserve(t, take(k, l, 1)), limiter.ReasonRateLimited, 0, 500*time.Millisecond)

	h.clock.Advance(500*time.Millisecond - time.Microsecond)
	denied(t, h.reserve(t, take(k, l, 1)), limiter.ReasonRateLimited, 0, time.Microsecond)

	h.clock.Advance(time.Microsecond)
	d := h.reserve(t, take(k, l, 1))
	granted(t, d)
	assert.Equal(t, int64(0), d.Buckets[0].Remaining)
	assert.Equal(t, 5*time.Second, d.Buckets[0].ResetAfter)

	h.clock.Advance(2 * time.Second)
	assert.Equal(t, int64(4), h.remaining(t, k, l))

	// Refill stops at capacity however long the bucket sits.
	h.clock.Advance(time.Hour)
	d = h.reserve(t, take(k, l, 1))
	granted(t, d)
	assert.Equal(t, int64(9), d.Buckets[0].Remaining)
	assert.Equal(t, 500*time.Millisecond, d.Buckets[0].ResetAfter)

	// Also when one microsecond brings more than a unit: 3 units/µs fill
	// 10 units in ceil(10/3) = 4 µs, and not to 12.
	fast, fl := pool("refill-fast"), lim(10, 3_000_000)
	granted(t, h.reserve(t, take(fast, fl, 10)))
	h.clock.Advance(3 * time.Microsecond)
	assert.Equal(t, int64(9), h.remaining(t, fast, fl))
	h.clock.Advance(time.Microsecond)
	d = h.reserve(t, take(fast, fl, 0))
	assert.Equal(t, int64(10), d.Buckets[0].Remaining)
	assert.Zero(t, d.Buckets[0].ResetAfter)
}

func testRefillExact(t *testing.T, h *harness) {
	// 166/s does not divide a second: one unit takes ceil(1e6/166) = 6025 µs.
	k, l := pool("odd"), lim(10_000, 166)
	granted(t, h.reserve(t, take(k, l, 10_000)))
	denied(t, h.reserve(t, take(k, l, 1)), limiter.ReasonRateLimited, 0, 6025*time.Microsecond)

	h.clock.Advance(6024 * time.Microsecond)
	denied(t, h.reserve(t, take(k, l, 1)), limiter.ReasonRateLimited, 0, time.Microsecond)
	h.clock.Advance(time.Microsecond)
	granted(t, h.reserve(t, take(k, l, 1)))

	// The 150 micro-units left over are kept: a second after draining, the
	// bucket has gained exactly 166 units, one of them taken.
	h.clock.Set(Epoch.Add(time.Second))
	assert.Equal(t, int64(165), h.remaining(t, k, l))
}

func testDeniedKeepsRefill(t *testing.T, h *harness) {
	k, l := pool("denied"), lim(4, 4) // one unit per 250 ms
	granted(t, h.reserve(t, take(k, l, 4)))
	for range 3 {
		h.clock.Advance(100 * time.Millisecond)
		require.False(t, h.reserve(t, take(k, l, 2)).Allowed)
	}
	// 300 ms of refill = 1.2 units, after three denials; 500 ms = 2 units.
	d := h.reserve(t, take(k, l, 2))
	denied(t, d, limiter.ReasonRateLimited, 0, 200*time.Millisecond)
	assert.Equal(t, int64(1), d.Buckets[0].Remaining)
	h.clock.Advance(200 * time.Millisecond)
	granted(t, h.reserve(t, take(k, l, 2)))
}

func testBurst(t *testing.T, h *harness) {
	l := lim(5, 1)
	t.Run("one by one", func(t *testing.T) {
		k := pool("burst-singles")
		for i := range 5 {
			d := h.reserve(t, take(k, l, 1))
			granted(t, d, "take %d of 5", i+1)
			assert.Equal(t, int64(4-i), d.Buckets[0].Remaining)
		}
		denied(t, h.reserve(t, take(k, l, 1)), limiter.ReasonRateLimited, 0, time.Second)
	})
	t.Run("whole capacity at once", func(t *testing.T) {
		k := pool("burst-whole")
		d := h.reserve(t, take(k, l, 5))
		granted(t, d)
		assert.Equal(t, int64(0), d.Buckets[0].Remaining)
		assert.Equal(t, 5*time.Second, d.Buckets[0].ResetAfter)
	})
	t.Run("not capacity plus one", func(t *testing.T) {
		k := pool("burst-over")
		denied(t, h.reserve(t, take(k, l, 6)), limiter.ReasonExceedsCapacity, 0, 0)
		assert.Equal(t, int64(5), h.remaining(t, k, l))
	})
}

func testZeroCost(t *testing.T, h *harness) {
	k, l := pool("zero"), lim(3, 1)
	d := h.reserve(t, take(k, l, 0))
	granted(t, d)
	assert.Equal(t, int64(3), d.Buckets[0].Remaining)
	assert.Zero(t, d.Buckets[0].ResetAfter)

	granted(t, h.reserve(t, take(k, l, 3)))
	d = h.reserve(t, take(k, l, 0))
	granted(t, d, "zero cost is granted on an empty bucket")
	assert.Equal(t, int64(0), d.Buckets[0].Remaining)
	assert.Equal(t, 3*time.Second, d.Buckets[0].ResetAfter)
}

func testDecisionShape(t *testing.T, h *harness) {
	takes := []limiter.Take{
		take(pool("shape"), lim(100, 10), 20),
		take(client("shape", "c"), lim(10, 4), 3),
	}
	d := h.reserve(t, takes...)
	granted(t, d)
	assert.Equal(t, []limiter.BucketState{
		{Key: takes[0].Key, Limit: takes[0].Limit, Remaining: 80, ResetAfter: 2 * time.Second},
		{Key: takes[1].Key, Limit: takes[1].Limit, Remaining: 7, ResetAfter: 750 * time.Millisecond},
	}, d.Buckets)
	assert.Equal(t, 1, d.Tightest(), "7 of 10 is tighter than 80 of 100")

	takes[1].Cost = 8
	d = h.reserve(t, takes...)
	denied(t, d, limiter.ReasonRateLimited, 1, 250*time.Millisecond)
	assert.Equal(t, []limiter.BucketState{
		{Key: takes[0].Key, Limit: takes[0].Limit, Remaining: 80, ResetAfter: 2 * time.Second},
		{Key: takes[1].Key, Limit: takes[1].Limit, Remaining: 7, ResetAfter: 750 * time.Millisecond, Short: true, RetryAfter: 250 * time.Millisecond},
	}, d.Buckets)
}

func testEmptyRequest(t *testing.T, h *harness) {
	d := h.reserve(t)
	granted(t, d)
	assert.Empty(t, d.Buckets)
}

func testIsolation(t *testing.T, h *harness) {
	poolKey, a, b := pool("p"), client("p", "a"), client("p", "b")
	pl, cl := lim(100, 1), lim(3, 1)

	// Drain client a alone, then through its pool.
	granted(t, h.reserve(t, take(a, cl, 3)))
	denied(t, h.reserve(t, take(a, cl, 1)), limiter.ReasonRateLimited, 0, time.Second)
	denied(t, h.reserve(t, take(poolKey, pl, 1), take(a, cl, 1)), limiter.ReasonRateLimited, 1, time.Second)

	assert.Equal(t, int64(3), h.remaining(t, b, cl), "client b is untouched")
	assert.Equal(t, int64(100), h.remaining(t, poolKey, pl), "the pool-wide bucket is untouched")

	d := h.reserve(t, take(poolKey, pl, 1), take(b, cl, 3))
	granted(t, d)
	assert.Equal(t, int64(99), d.Buckets[0].Remaining)
	assert.Equal(t, int64(0), d.Buckets[1].Remaining)

	// Same client name in another pool, and a pool named like a client.
	assert.Equal(t, int64(3), h.remaining(t, client("q", "a"), cl))
	assert.Equal(t, int64(100), h.remaining(t, pool("a"), pl))
	assert.Equal(t, int64(100), h.remaining(t, client("", "p"), pl))

	// Keys that collide when pool and client are naively joined, or that
	// carry separators and hash-tag braces, are distinct buckets.
	for _, pair := range [][2]limiter.Key{
		{client("x:y", "z"), client("x", "y:z")},
		{client("x_y", "z"), client("x", "y_z")},
		{pool("xy"), client("x", "y")},
		{pool("vw"), client("", "vw")},
		{client("{x}", "y"), client("{x", "}y")},
		{client("x", "1:y"), client("x:1", "y")},
	} {
		granted(t, h.reserve(t, take(pair[0], cl, 3)))
		assert.Equal(t, int64(3), h.remaining(t, pair[1], cl), "%q drained, %q untouched", pair[0].String(), pair[1].String())
	}
}

func testAtomicity(t *testing.T, h *harness) {
	pl, cl := lim(100, 1), lim(2, 1)
	t.Run("second short", func(t *testing.T) {
		p, c := pool("atomic-1"), client("atomic-1", "c")
		granted(t, h.reserve(t, take(p, pl, 1), take(c, cl, 1)))
		granted(t, h.reserve(t, take(p, pl, 1), take(c, cl, 1)))
		d := h.reserve(t, take(p, pl, 1), take(c, cl, 1))
		denied(t, d, limiter.ReasonRateLimited, 1, time.Second)
		assert.Equal(t, int64(98), d.Buckets[0].Remaining, "the pool is reported undebited")
		assert.False(t, d.Buckets[0].Short)
		assert.Equal(t, int64(98), h.remaining(t, p, pl), "and is undebited")
	})
	t.Run("first short", func(t *testing.T) {
		p, c := pool("atomic-2"), client("atomic-2", "c")
		granted(t, h.reserve(t, take(c, cl, 2)))
		d := h.reserve(t, take(c, cl, 1), take(p, pl, 10))
		denied(t, d, limiter.ReasonRateLimited, 0, time.Second)
		assert.Equal(t, int64(100), h.remaining(t, p, pl))
	})
	t.Run("many buckets, last short", func(t *testing.T) {
		var takes []limiter.Take
		for i := range 8 {
			takes = append(takes, take(client("atomic-3", fmt.Sprint(i)), lim(10, 1), 5))
		}
		takes[7].Cost = 11
		denied(t, h.reserve(t, takes...), limiter.ReasonExceedsCapacity, 7, 0)
		for _, tk := range takes[:7] {
			assert.Equal(t, int64(10), h.remaining(t, tk.Key, tk.Limit), "%s", tk.Key)
		}
		takes[7].Cost = 5
		d := h.reserve(t, takes...)
		granted(t, d)
		for i, st := range d.Buckets {
			assert.Equal(t, int64(5), st.Remaining, "bucket %d", i)
		}
	})
}

func testShadow(t *testing.T, h *harness) {
	pl, cl := lim(100, 1), lim(3, 1)
	shadowed := func(tk limiter.Take) limiter.Take { tk.Shadow = true; return tk }
	t.Run("short: allowed, reported, not debited", func(t *testing.T) {
		p, c := pool("shadow-1"), client("shadow-1", "c")
		granted(t, h.reserve(t, take(c, cl, 2)))
		takes := []limiter.Take{take(p, pl, 2), shadowed(take(c, cl, 2))}
		d := h.reserve(t, takes...)
		granted(t, d)
		assert.Equal(t, int64(98), d.Buckets[0].Remaining, "the real bucket is debited")
		assert.False(t, d.Buckets[0].Short)
		assert.True(t, d.Buckets[1].Short, "the shadow bucket reports its shortfall")
		assert.Equal(t, time.Second, d.Buckets[1].RetryAfter)
		assert.Equal(t, int64(1), d.Buckets[1].Remaining)
		i, ok := d.ShadowDenied(takes)
		assert.True(t, ok)
		assert.Equal(t, 1, i)
		assert.Equal(t, int64(1), h.remaining(t, c, cl), "the short shadow bucket is not debited")
	})
	t.Run("ok: debited", func(t *testing.T) {
		p, c := pool("shadow-2"), client("shadow-2", "c")
		takes := []limiter.Take{take(p, pl, 2), shadowed(take(c, cl, 2))}
		d := h.reserve(t, takes...)
		granted(t, d)
		assert.False(t, d.Buckets[1].Short)
		_, ok := d.ShadowDenied(takes)
		assert.False(t, ok)
		assert.Equal(t, int64(1), h.remaining(t, c, cl))
		assert.Equal(t, int64(98), h.remaining(t, p, pl))
	})
	t.Run("above capacity: allowed, not debited", func(t *testing.T) {
		c := client("shadow-3", "c")
		d := h.reserve(t, shadowed(take(c, cl, 4)))
		granted(t, d)
		assert.True(t, d.Buckets[0].Short)
		assert.Zero(t, d.Buckets[0].RetryAfter)
		assert.Equal(t, int64(3), h.remaining(t, c, cl))
	})
	t.Run("ok but a real bucket short: nothing debited", func(t *testing.T) {
		p, c := pool("shadow-4"), client("shadow-4", "c")
		granted(t, h.reserve(t, take(p, pl, 100)))
		d := h.reserve(t, take(p, pl, 1), shadowed(take(c, cl, 1)))
		denied(t, d, limiter.ReasonRateLimited, 0, time.Second)
		assert.Equal(t, int64(3), h.remaining(t, c, cl))
	})
	t.Run("only shadows, all short", func(t *testing.T) {
		a, b := client("shadow-5", "a"), client("shadow-5", "b")
		granted(t, h.reserve(t, take(a, cl, 3), take(b, cl, 3)))
		d := h.reserve(t, shadowed(take(a, cl, 1)), shadowed(take(b, cl, 2)))
		granted(t, d)
		assert.True(t, d.Buckets[0].Short)
		assert.True(t, d.Buckets[1].Short)
		assert.Equal(t, 2*time.Second, d.Buckets[1].RetryAfter)
	})
}

func testExceedsCapacity(t *testing.T, h *harness) {
	k, l := pool("exceeds"), lim(10, 1)
	d := h.reserve(t, take(k, l, 11))
	denied(t, d, limiter.ReasonExceedsCapacity, 0, 0)
	assert.Zero(t, d.Buckets[0].RetryAfter)
	assert.Equal(t, int64(10), d.Buckets[0].Remaining)

	// Also on an empty bucket, where a wait would otherwise be computed.
	granted(t, h.reserve(t, take(k, l, 10)))
	denied(t, h.reserve(t, take(k, l, 11)), limiter.ReasonExceedsCapacity, 0, 0)
	h.clock.Advance(time.Hour)
	denied(t, h.reserve(t, take(k, l, 11)), limiter.ReasonExceedsCapacity, 0, 0)
	assert.Equal(t, int64(10), h.remaining(t, k, l))
}

func testDenialReason(t *testing.T, h *harness) {
	l := lim(10, 1)
	a, b, c := client("why", "a"), client("why", "b"), client("why", "c")
	granted(t, h.reserve(t, take(a, l, 10), take(b, l, 10), take(c, l, 10)))

	// Waits of 2 s, 7 s and 3 s: the longest blocks.
	denied(t, h.reserve(t, take(a, l, 2), take(b, l, 7), take(c, l, 3)), limiter.ReasonRateLimited, 1, 7*time.Second)
	// A cost that never fits beats any wait, wherever it is.
	denied(t, h.reserve(t, take(a, l, 11), take(b, l, 7)), limiter.ReasonExceedsCapacity, 0, 0)
	denied(t, h.reserve(t, take(a, l, 2), take(b, l, 11)), limiter.ReasonExceedsCapacity, 1, 0)
	// Equal waits: the first blocks.
	denied(t, h.reserve(t, take(a, l, 4), take(b, l, 4)), limiter.ReasonRateLimited, 0, 4*time.Second)
}

func testCapacityRaised(t *testing.T, h *harness) {
	k := pool("raised")
	granted(t, h.reserve(t, take(k, lim(10, 1), 4)))

	// The level carries over; the bucket is not refilled to the new capacity.
	d := h.reserve(t, take(k, lim(20, 1), 1))
	granted(t, d)
	assert.Equal(t, int64(5), d.Buckets[0].Remaining)
	assert.Equal(t, 15*time.Second, d.Buckets[0].ResetAfter)
	denied(t, h.reserve(t, take(k, lim(20, 1), 6)), limiter.ReasonRateLimited, 0, time.Second)

	// It refills up to the new capacity.
	h.clock.Advance(15 * time.Second)
	granted(t, h.reserve(t, take(k, lim(20, 1), 20)))
}

func testCapacityLowered(t *testing.T, h *harness) {
	k := pool("lowered")
	granted(t, h.reserve(t, take(k, lim(10, 1), 2)))

	// A level of 8 above the new capacity of 5 is clamped to 5.
	d := h.reserve(t, take(k, lim(5, 1), 1))
	granted(t, d)
	assert.Equal(t, int64(4), d.Buckets[0].Remaining)
	assert.Equal(t, time.Second, d.Buckets[0].ResetAfter)
	denied(t, h.reserve(t, take(k, lim(5, 1), 6)), limiter.ReasonExceedsCapacity, 0, 0)

	// Raising it back does not restore what the clamp removed.
	d = h.reserve(t, take(k, lim(10, 1), 1))
	granted(t, d)
	assert.Equal(t, int64(3), d.Buckets[0].Remaining)
}

func testRefillChanged(t *testing.T, h *harness) {
	k := pool("rate")
	granted(t, h.reserve(t, take(k, lim(10, 1), 10)))
	// The rate in force at a decision applies to the time since the bucket
	// was last written: 100 ms at 10/s is exactly one unit.
	h.clock.Advance(100 * time.Millisecond)
	d := h.reserve(t, take(k, lim(10, 10), 1))
	granted(t, d)
	assert.Equal(t, int64(0), d.Buckets[0].Remaining)
	assert.Equal(t, time.Second, d.Buckets[0].ResetAfter)
	denied(t, h.reserve(t, take(k, lim(10, 10), 1)), limiter.ReasonRateLimited, 0, 100*time.Millisecond)
}

func testClockBackwards(t *testing.T, h *harness) {
	k, l := pool("backwards"), lim(10, 2)
	h.clock.Advance(time.Second)
	granted(t, h.reserve(t, take(k, l, 10)))

	// A decision dated before the bucket's last write refills nothing and
	// does not move the bucket back in time.
	h.clock.Set(Epoch)
	denied(t, h.reserve(t, take(k, l, 1)), limiter.ReasonRateLimited, 0, 500*time.Millisecond)
	h.clock.Set(Epoch.Add(time.Second + 499*time.Millisecond))
	denied(t, h.reserve(t, take(k, l, 1)), limiter.ReasonRateLimited, 0, time.Millisecond)
	h.clock.Set(Epoch.Add(time.Second + 500*time.Millisecond))
	d := h.reserve(t, take(k, l, 1))
	granted(t, d)
	assert.Equal(t, int64(0), d.Buckets[0].Remaining)
}

const (
	workers           = 64
	reservesPerWorker = 40
)

func testConcurrentSingle(t *testing.T, h *harness) {
	// No time passes: exactly the capacity is granted, whatever the
	// interleaving.
	k, l := pool("hot"), lim(1000, 1)
	now := h.clock.Now()
	var grantedUnits, deniedCalls atomic.Int64
	var wg sync.WaitGroup
	for range workers {
		wg.Go(func() {
			for range reservesPerWorker {
				d, err := h.store.Reserve(context.Background(), limiter.Request{Takes: []limiter.Take{take(k, l, 1)}, Now: now})
				if !assert.NoError(t, err) {
					return
				}
				if d.Allowed {
					grantedUnits.Add(1)
				} else {
					deniedCalls.Add(1)
				}
			}
		})
	}
	wg.Wait()
	assert.Equal(t, int64(1000), grantedUnits.Load())
	assert.Equal(t, int64(workers*reservesPerWorker-1000), deniedCalls.Load())
	assert.Equal(t, int64(0), h.remaining(t, k, l))
}

func testConcurrentPoolClients(t *testing.T, h *harness) {
	// 64 goroutines share 8 clients of 100 units under one pool of 1000,
	// each call taking 1 from the pool and 1 from a client: the clients run
	// dry at 800, so the pool must lose exactly 800, never a unit for a
	// call a client bucket refused.
	p, pl, cl := pool("crowd"), lim(1000, 1), lim(100, 1)
	now := h.clock.Now()
	const clients = 8
	var perClient [clients]atomic.Int64
	var wg sync.WaitGroup
	for w := range workers {
		wg.Go(func() {
			for i := range reservesPerWorker {
				c := (w + i) % clients
				d, err := h.store.Reserve(context.Background(), limiter.Request{
					Takes: []limiter.Take{take(p, pl, 1), take(client("crowd", fmt.Sprint(c)), cl, 1)},
					Now:   now,
				})
				if !assert.NoError(t, err) {
					return
				}
				if d.Allowed {
					perClient[c].Add(1)
				} else if !assert.Equal(t, 1, d.Blocking, "only client buckets run dry") {
					return
				}
			}
		})
	}
	wg.Wait()
	for c := range perClient {
		assert.Equal(t, int64(100), perClient[c].Load(), "client %d", c)
		assert.Equal(t, int64(0), h.remaining(t, client("crowd", fmt.Sprint(c)), cl))
	}
	assert.Equal(t, int64(200), h.remaining(t, p, pl))
}

func testCancelled(t *testing.T, h *harness) {
	past := func() (context.Context, context.CancelFunc) {
		return context.WithTimeout(context.Background(), -time.Second)
	}
	cancelled := func() (context.Context, context.CancelFunc) {
		ctx, cancel := context.WithCancel(context.Background())
		cancel()
		return ctx, cancel
	}
	for name, tc := range map[string]struct {
		ctx  func() (context.Context, context.CancelFunc)
		want error
	}{
		"cancelled":         {ctx: cancelled, want: context.Canceled},
		"deadline exceeded": {ctx: past, want: context.DeadlineExceeded},
	} {
		t.Run(name, func(t *testing.T) {
			k, l := pool("ctx-"+name), lim(5, 1)
			ctx, cancel := tc.ctx()
			defer cancel()
			_, err := h.store.Reserve(ctx, limiter.Request{Takes: []limiter.Take{take(k, l, 3)}, Now: h.clock.Now()})
			require.ErrorIs(t, err, tc.want)
			assert.Equal(t, int64(5), h.remaining(t, k, l), "nothing was taken")
		})
	}
}

func testDistinctStores(t *testing.T, h *harness) {
	other := h.open(t)
	k, l := pool("shared-name"), lim(5, 1)
	granted(t, h.reserve(t, take(k, l, 5)))
	d := h.reserveOn(t, other, take(k, l, 5))
	granted(t, d, "a second store does not see the first one's buckets")
	assert.Equal(t, int64(0), d.Buckets[0].Remaining)
	denied(t, h.reserve(t, take(k, l, 1)), limiter.ReasonRateLimited, 0, time.Second)
}

// Bench runs the store benchmarks on stores made by newStore, which returns
// a new, empty store each call; Bench closes it. Requests carry no Now, so
// each store decides on its own clock as in production (the memory store's
// Clock, Redis TIME). The Redis store runs the same Bench.
//
// Each benchmark reports denied/op, which stays at zero: the limits are
// large enough that every call takes the granted path.
func Bench(b *testing.B, newStore func(b *testing.B) limiter.Store) {
	big := limiter.Limit{Capacity: 1_000_000_000, Refill: 1_000_000_000}
	hot := []limiter.Take{take(pool("bench-hot"), big, 1)}
	const clients = 1000
	poolClient := make([][]limiter.Take, clients)
	for i := range poolClient {
		poolClient[i] = []limiter.Take{take(pool("bench-pool"), big, 1), take(client("bench-pool", fmt.Sprintf("client-%04d", i)), big, 1)}
	}

	open := func(b *testing.B) limiter.Store {
		b.Helper()
		s := newStore(b)
		b.Cleanup(func() {
			if err := s.Close(); err != nil {
				b.Errorf("close: %v", err)
			}
		})
		return s
	}
	serial := func(pick func(i int) []limiter.Take) func(*testing.B) {
		return func(b *testing.B) {
			s := open(b)
			ctx := context.Background()
			var deniedCalls int
			b.ReportAllocs()
			for i := 0; b.Loop(); i++ {
				d, err := s.Reserve(ctx, limiter.Request{Takes: pick(i)})
				if err != nil {
					b.Fatal(err)
				}
				if !d.Allowed {
					deniedCalls++
				}
			}
			b.ReportMetric(float64(deniedCalls)/float64(b.N), "denied/op")
		}
	}
	parallel := func(pick func(i int) []limiter.Take) func(*testing.B) {
		return func(b *testing.B) {
			s := open(b)
			ctx := context.Background()
			var deniedCalls, seed atomic.Int64
			b.ReportAllocs()
			b.ResetTimer()
			b.RunParallel(func(pb *testing.PB) {
				i := int(seed.Add(7919)) // spread goroutines over the clients
				for pb.Next() {
					d, err := s.Reserve(ctx, limiter.Request{Takes: pick(i)})
					if err != nil {
						b.Error(err)
						return
					}
					if !d.Allowed {
						deniedCalls.Add(1)
					}
					i++
				}
			})
			b.ReportMetric(float64(deniedCalls.Load())/float64(b.N), "denied/op")
		}
	}
	hotKey := func(int) []limiter.Take { return hot }
	spread := func(i int) []limiter.Take { return poolClient[i%clients] }

	b.Run("single_bucket_hot_key", serial(hotKey))
	b.Run("pool_client_1000_clients", serial(spread))
	b.Run("parallel_single_bucket_hot_key", parallel(hotKey))
	b.Run("parallel_pool_client_1000_clients", parallel(spread))
}
