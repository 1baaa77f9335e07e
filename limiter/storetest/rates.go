package storetest

import (
	"context"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/tollgate/tollgate/limiter"
)

// Rates that are no whole number of units a second: a limit refilling
// Refill units every Per, whose levels a store keeps in 1/(Micro·Den)
// parts of a unit. The numbers below follow limiter.Bucket at that scale;
// a store that rounded a rate to whole units a second (166/s for
// 10000/min) or lost parts of a unit between calls fails them.
var (
	perMinute = limiter.Limit{Capacity: 10_000, Refill: 500, Per: 3 * time.Second} // 10000/min: a unit every 6 ms
	perHour   = limiter.Limit{Capacity: 100, Refill: 1, Per: 36 * time.Second}     // 100/h: a unit every 36 s
	perDay    = limiter.Limit{Capacity: 5, Refill: 1, Per: 24 * time.Hour}         // 1/d
)

// drainAll takes every whole unit bucket k holds, and returns how many.
func (h *harness) drainAll(t *testing.T, k limiter.Key, l limiter.Limit) int64 {
	t.Helper()
	n := h.remaining(t, k, l)
	if n > 0 {
		granted(t, h.reserve(t, take(k, l, n)))
	}
	return n
}

// testFractionalLongRun: a bucket drained at every step, over several of
// its rate's periods in uneven steps, hands out exactly its capacity plus
// the rate times the time: 10,000 a minute (166/s would give 9,960), 100
// an hour, one a day.
func testFractionalLongRun(t *testing.T, h *harness) {
	for _, tc := range []struct {
		name          string
		limit         limiter.Limit
		period        time.Duration
		per           int64 // units a period
		periods, step int64 // steps a period
	}{
		{"10000/min", perMinute, time.Minute, 10_000, 4, 25},
		{"100/h", perHour, time.Hour, 100, 3, 10},
		{"1/d", perDay, 24 * time.Hour, 1, 3, 4},
	} {
		k := pool("long-run " + tc.name)
		start := h.clock.Now()
		taken := h.drainAll(t, k, tc.limit)
		require.Equal(t, tc.limit.Capacity, taken, "%s: a new bucket is full", tc.name)
		for p := int64(1); p <= tc.periods; p++ {
			for i := int64(1); i < tc.step; i++ {
				// Uneven steps: a prime number of microseconds off the even grid.
				h.clock.Set(start.Add(time.Duration(p-1)*tc.period + time.Duration(i)*tc.period/time.Duration(tc.step) + time.Duration(i*7919%1000)*time.Microsecond))
				taken += h.drainAll(t, k, tc.limit)
			}
			h.clock.Set(start.Add(time.Duration(p) * tc.period))
			taken += h.drainAll(t, k, tc.limit)
			require.Equal(t, tc.limit.Capacity+p*tc.per, taken, "%s: after %d periods", tc.name, p)
			d := h.reserve(t, take(k, tc.limit, 0))
			assert.Equal(t, time.Duration(tc.limit.Capacity)*tc.period/time.Duration(tc.per), d.Buckets[0].ResetAfter,
				"%s: after %d periods, not a part of a unit is left over: a whole refill to full", tc.name, p)
		}
	}
}

// testFractionalWait: retry-after and reset times are exact at a rate's
// own scale, to the microsecond.
func testFractionalWait(t *testing.T, h *harness) {
	k := pool("wait 10000/min")
	d := h.reserve(t, take(k, perMinute, 10_000))
	granted(t, d)
	assert.Equal(t, time.Minute, d.Buckets[0].ResetAfter)
	denied(t, h.reserve(t, take(k, perMinute, 1)), limiter.ReasonRateLimited, 0, 6*time.Millisecond)
	h.clock.Advance(6*time.Millisecond - time.Microsecond)
	denied(t, h.reserve(t, take(k, perMinute, 1)), limiter.ReasonRateLimited, 0, time.Microsecond)
	h.clock.Advance(time.Microsecond)
	d = h.reserve(t, take(k, perMinute, 1))
	granted(t, d)
	assert.Equal(t, time.Minute, d.Buckets[0].ResetAfter, "one unit refilled and taken: empty again")

	k = pool("wait 100/h")
	granted(t, h.reserve(t, take(k, perHour, 100)))
	denied(t, h.reserve(t, take(k, perHour, 3)), limiter.ReasonRateLimited, 0, 108*time.Second)
	h.clock.Advance(18 * time.Second) // half a unit
	d = h.reserve(t, take(k, perHour, 3))
	denied(t, d, limiter.ReasonRateLimited, 0, 90*time.Second)
	assert.Equal(t, time.Hour-18*time.Second, d.Buckets[0].ResetAfter)

	k = pool("wait 1/d")
	granted(t, h.reserve(t, take(k, perDay, 5)))
	denied(t, h.reserve(t, take(k, perDay, 1)), limiter.ReasonRateLimited, 0, 24*time.Hour)
	h.clock.Advance(24 * time.Hour)
	granted(t, h.reserve(t, take(k, perDay, 1)))
}

// testRatePeriodChanged: a policy reload changes a bucket's rate, and with
// it the denominator its level is kept at. The level is converted once,
// rounding down (never gaining a part of a unit), and the bucket refills
// at the new rate from there. As for any change of rate, the rate in force
// at a decision applies to the time since the bucket was last written, so
// each change here comes at the instant of a write.
func testRatePeriodChanged(t *testing.T, h *harness) {
	k := pool("reload")
	perSecond := lim(10_000, 166)
	perHourBig := limiter.Limit{Capacity: 10_000, Refill: 25, Per: 9 * time.Second} // 10000/h
	granted(t, h.reserve(t, take(k, perSecond, 9_900)))

	// 166/s to 10000/min: the 100 units stay, and a unit comes every 6 ms.
	assert.Equal(t, int64(100), h.remaining(t, k, perMinute))
	h.clock.Advance(9 * time.Millisecond) // 101.5 units
	d := h.reserve(t, take(k, perMinute, 101))
	granted(t, d)
	assert.Equal(t, time.Minute-3*time.Millisecond, d.Buckets[0].ResetAfter, "half a unit left")

	// Back to 166/s: half a unit is 500,000 micro-units, so the next unit is
	// ⌈500,000/166⌉ = 3,013 µs away.
	denied(t, h.reserve(t, take(k, perSecond, 1)), limiter.ReasonRateLimited, 0, 3013*time.Microsecond)
	h.clock.Advance(3013 * time.Microsecond)
	granted(t, h.reserve(t, take(k, perSecond, 1))) // 158 micro-units left

	// To 10000/h (25 every 9 s): 158·9 = 1,422 parts; the next unit is
	// 8,998,578 parts away at 25 a µs: ⌈359,943.12⌉ µs.
	denied(t, h.reserve(t, take(k, perHourBig, 1)), limiter.ReasonRateLimited, 0, 359_944*time.Microsecond)
	h.clock.Advance(359_944 * time.Microsecond)
	granted(t, h.reserve(t, take(k, perHourBig, 1))) // 22 parts left

	// To 10000/min: 22 ninths of a micro-unit are ⌊22·3/9⌋ = 7 thirds (the
	// conversion rounds down); the next unit is ⌈2,999,993/500⌉ = 6,000 µs
	// away, and a microsecond before it is 493 parts, one microsecond, short.
	denied(t, h.reserve(t, take(k, perMinute, 1)), limiter.ReasonRateLimited, 0, 6000*time.Microsecond)
	h.clock.Advance(5999 * time.Microsecond)
	denied(t, h.reserve(t, take(k, perMinute, 1)), limiter.ReasonRateLimited, 0, time.Microsecond)
	h.clock.Advance(time.Microsecond)
	granted(t, h.reserve(t, take(k, perMinute, 1))) // 7 parts left

	// To 1/s, where a micro-unit is a microsecond: 7 thirds are ⌊7/3⌋ = 2
	// micro-units, rounded down, so the next unit is 999,998 µs away.
	perSecondSlow := lim(10_000, 1)
	denied(t, h.reserve(t, take(k, perSecondSlow, 1)), limiter.ReasonRateLimited, 0, 999_998*time.Microsecond)

	// Lowered capacity and a new period at once: full at the new capacity.
	h.clock.Advance(time.Hour)
	assert.Equal(t, int64(100), h.remaining(t, k, perHour))
}

// testFractionalAdjust: refunds, charges and pauses at a fractional rate,
// exact to the part of a unit, and the debt floor at the largest scale.
func testFractionalAdjust(t *testing.T, h *adjustHarness) {
	k := pool("refund 100/h")
	granted(t, h.reserve(t, take(k, perHour, 100)))
	st := h.refund(t, refund(k, perHour, 40))
	assert.Equal(t, int64(40), st[0].Remaining)
	assert.Equal(t, 60*36*time.Second, st[0].ResetAfter)

	k = pool("charge 100/h")
	granted(t, h.reserve(t, take(k, perHour, 100)))
	st = h.refund(t, refund(k, perHour, -10)) // ten units of debt
	assert.Zero(t, st[0].Remaining)
	assert.Equal(t, 110*36*time.Second, st[0].ResetAfter)
	denied(t, h.reserve(t, take(k, perHour, 1)), limiter.ReasonRateLimited, 0, 11*36*time.Second)

	k = pool("pause 10000/min")
	st = h.throttle(t, pause(k, perMinute, time.Minute))
	assert.Equal(t, 2*time.Minute, st[0].ResetAfter, "a minute of pause, then a minute to refill")
	h.clock.Advance(time.Minute)
	denied(t, h.reserve(t, take(k, perMinute, 1)), limiter.ReasonRateLimited, 0, 6*time.Millisecond)

	k = pool("cap 10000/min")
	st = h.throttle(t, capTo(k, perMinute, 7))
	assert.Equal(t, int64(7), st[0].Remaining)
	assert.Equal(t, time.Minute-42*time.Millisecond, st[0].ResetAfter)

	// The largest charge, at the largest scale, stops at the floor without
	// overflowing: 7·10^15 parts of 1/(86,400·10^6) of a unit below zero.
	k = pool("floor 1/d")
	st = h.refund(t, refund(k, perDay, -1_000_000_000))
	assert.Zero(t, st[0].Remaining)
	assert.Equal(t, time.Duration(5*24*3600*limiter.Micro-limiter.MinLevel)*time.Microsecond, st[0].ResetAfter)
	st = h.refund(t, refund(k, perDay, 1_000_000_000))
	assert.Equal(t, int64(5), st[0].Remaining, "the largest refund fills it, without overflowing")
}

// testFractionalLease: a lease takes whole units and leaves the part of a
// unit in the bucket.
func testFractionalLease(t *testing.T, h *leaseHarness) {
	k := pool("lease 100/h")
	g := h.lease(t, ask(k, perHour, 30, 1))
	assert.Equal(t, limiter.LeaseGrant{Granted: 30, Remaining: 70, ResetAfter: 30 * 36 * time.Second, Possible: true}, g[0])
	require.Equal(t, int64(70), h.lease(t, ask(k, perHour, 100, 1))[0].Granted)
	h.clock.Advance(18 * time.Second) // half a unit
	g = h.lease(t, ask(k, perHour, 5, 1))
	assert.Zero(t, g[0].Granted)
	assert.Equal(t, 18*time.Second, g[0].RetryAfter)
	h.clock.Advance(18 * time.Second)
	g = h.lease(t, ask(k, perHour, 5, 1))
	assert.Equal(t, int64(1), g[0].Granted)
	assert.Equal(t, time.Hour, g[0].ResetAfter)
}

// testFinishFractional: a reservation records the rate (with its period) of
// each bucket it charged, and its refund is given back at that scale, also
// through a store that did not admit the call.
func testFinishFractional(t *testing.T, h *finishHarness) {
	k := pool("finish 10000/min")
	h.admit(t, "frac", 100, take(k, perMinute, 300))
	h.clock.Advance(3 * time.Millisecond) // half a unit
	st, err := h.reopen(t).Finish(context.Background(), limiter.Ending{ID: "frac", Outcome: limiter.OutcomeSettled, Actual: 50,
		Used: []limiter.PoolUse{used(k.Pool, 120)}, Now: h.clock.Now()})
	require.NoError(t, err)
	assert.False(t, st.Repeat)
	assert.Equal(t, int64(9_880), h.level(t, k, perMinute), "180 units back, and half a unit refilled")
	h.clock.Advance(3 * time.Millisecond)
	assert.Equal(t, int64(9_881), h.level(t, k, perMinute))
}
