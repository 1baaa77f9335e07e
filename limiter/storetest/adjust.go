package storetest

import (
	"context"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/tollgate/tollgate/internal/fakeclock"
	"github.com/tollgate/tollgate/limiter"
)

// RunAdjust runs the conformance suite of limiter.Adjuster (refunds and
// charges after the fact with Refund, upstream caps and pauses with
// Throttle) against stores made by
// newStore (same contract as Run's). Every call carries the fake clock's
// time. Expected numbers follow limiter.ApplyAdjust.
func RunAdjust(t *testing.T, newStore func(t *testing.T, clock limiter.Clock) limiter.Store) {
	for name, test := range map[string]func(*testing.T, *adjustHarness){
		"refund returns units up to capacity":  testRefund,
		"a charge after the fact is a debt":    testCharge,
		"cap lowers and never raises":          testCap,
		"pause denies until it ends":           testPause,
		"pause of a bucket that never refills": testPauseNoRefill,
		"order is refund, cap, pause":          testAdjustOrder,
		"debt is floored":                      testDebtFloor,
		"unknown bucket starts full":           testAdjustFresh,
		"invalid adjustments are refused":      testAdjustInvalid,
		"a batch is applied together":          testAdjustBatch,
		"fractional rates":                     testFractionalAdjust,
	} {
		t.Run(name, func(t *testing.T) {
			clk := fakeclock.New(Epoch)
			s := newStore(t, clk)
			require.NotNil(t, s)
			t.Cleanup(func() { assert.NoError(t, s.Close()) })
			a, ok := s.(limiter.Adjuster)
			require.True(t, ok, "the store implements limiter.Adjuster")
			test(t, &adjustHarness{harness: harness{clock: clk, store: s}, a: a})
		})
	}
}

type adjustHarness struct {
	harness
	a limiter.Adjuster
}

// refund applies refunds at the fake clock's time.
func (h *adjustHarness) refund(t *testing.T, refunds ...limiter.Refund) []limiter.BucketState {
	t.Helper()
	st, err := h.a.Refund(context.Background(), refunds, h.clock.Now())
	require.NoError(t, err)
	require.Len(t, st, len(refunds), "one state per refund")
	for i := range refunds {
		assert.Equal(t, refunds[i].Key, st[i].Key)
		assert.Equal(t, refunds[i].Limit, st[i].Limit)
	}
	return st
}

// throttle applies throttles at the fake clock's time.
func (h *adjustHarness) throttle(t *testing.T, throttles ...limiter.Throttle) []limiter.BucketState {
	t.Helper()
	st, err := h.a.Throttle(context.Background(), throttles, h.clock.Now())
	require.NoError(t, err)
	require.Len(t, st, len(throttles), "one state per throttle")
	for i := range throttles {
		assert.Equal(t, throttles[i].Key, st[i].Key)
		assert.Equal(t, throttles[i].Limit, st[i].Limit)
	}
	return st
}

func refund(k limiter.Key, l limiter.Limit, units int64) limiter.Refund {
	return limiter.Refund{Key: k, Limit: l, Units: units}
}

// capTo is an upstream's report of units left.
func capTo(k limiter.Key, l limiter.Limit, units int64) limiter.Throttle {
	return limiter.Throttle{Key: k, Limit: l, Cap: units}
}

// pause is an upstream's 429 with its Retry-After.
func pause(k limiter.Key, l limiter.Limit, d time.Duration) limiter.Throttle {
	return limiter.Throttle{Key: k, Limit: l, Cap: limiter.NoCap, Pause: d}
}

func testRefund(t *testing.T, h *adjustHarness) {
	k, l := pool("refund"), lim(100, 1)
	granted(t, h.reserve(t, take(k, l, 80)))
	st := h.refund(t, refund(k, l, 30))
	assert.Equal(t, int64(50), st[0].Remaining)
	assert.Equal(t, 50*time.Second, st[0].ResetAfter)
	assert.Equal(t, int64(50), h.remaining(t, k, l))

	st = h.refund(t, refund(k, l, 1000))
	assert.Equal(t, int64(100), st[0].Remaining, "never past capacity")
	assert.Zero(t, st[0].ResetAfter)
	granted(t, h.reserve(t, take(k, l, 100)))
}

func testCharge(t *testing.T, h *adjustHarness) {
	k, l := pool("charge"), lim(10, 2) // 2 units a second
	granted(t, h.reserve(t, take(k, l, 10)))
	st := h.refund(t, refund(k, l, -4)) // the call used 4 more than it reserved
	assert.Zero(t, st[0].Remaining, "a debt reads as nothing left")
	assert.Equal(t, 7*time.Second, st[0].ResetAfter, "14 units to refill at 2/s")

	// 4 units of debt plus 1 of cost: 2.5 s.
	denied(t, h.reserve(t, take(k, l, 1)), limiter.ReasonRateLimited, 0, 2500*time.Millisecond)
	h.clock.Advance(2499 * time.Millisecond)
	denied(t, h.reserve(t, take(k, l, 1)), limiter.ReasonRateLimited, 0, time.Millisecond)
	h.clock.Advance(time.Millisecond)
	granted(t, h.reserve(t, take(k, l, 1)))
}

func testCap(t *testing.T, h *adjustHarness) {
	k, l := pool("cap"), lim(100, 10)
	granted(t, h.reserve(t, take(k, l, 20))) // 80 left
	st := h.throttle(t, capTo(k, l, 30))
	assert.Equal(t, int64(30), st[0].Remaining)
	assert.Equal(t, 7*time.Second, st[0].ResetAfter)

	st = h.throttle(t, capTo(k, l, 60))
	assert.Equal(t, int64(30), st[0].Remaining, "a cap above the level changes nothing")
	st = h.throttle(t, capTo(k, l, 0))
	assert.Zero(t, st[0].Remaining)
	denied(t, h.reserve(t, take(k, l, 5)), limiter.ReasonRateLimited, 0, 500*time.Millisecond)
	st = h.throttle(t, capTo(k, l, 1_000_000))
	assert.Zero(t, st[0].Remaining, "a cap above capacity is no cap")
}

func testPause(t *testing.T, h *adjustHarness) {
	k, l := pool("pause"), lim(100, 10) // 100 ms a unit
	st := h.throttle(t, pause(k, l, 30*time.Second))
	assert.Zero(t, st[0].Remaining)
	assert.Equal(t, 40*time.Second, st[0].ResetAfter, "30 s of pause, then 10 s to refill 100 units")

	denied(t, h.reserve(t, take(k, l, 1)), limiter.ReasonRateLimited, 0, 30*time.Second+100*time.Millisecond)
	h.clock.Advance(30 * time.Second)
	denied(t, h.reserve(t, take(k, l, 1)), limiter.ReasonRateLimited, 0, 100*time.Millisecond,
		"the pause is over; the bucket refills from empty")
	h.clock.Advance(100 * time.Millisecond)
	granted(t, h.reserve(t, take(k, l, 1)))

	// A shorter pause never shortens a longer one in force.
	h.throttle(t, pause(k, l, 10*time.Second))
	st = h.throttle(t, pause(k, l, time.Second))
	assert.Equal(t, 20*time.Second, st[0].ResetAfter)
}

func testPauseNoRefill(t *testing.T, h *adjustHarness) {
	k, l := pool("quota"), lim(5, 0)
	st := h.throttle(t, pause(k, l, time.Minute))
	assert.Zero(t, st[0].Remaining)
	assert.Zero(t, st[0].ResetAfter, "a bucket that never refills has no reset")
	d := h.reserve(t, take(k, l, 1))
	require.False(t, d.Allowed)
	assert.Equal(t, limiter.ReasonExceedsCapacity, d.Reason, "an empty bucket without refill can never cover a cost")
}

func testAdjustOrder(t *testing.T, h *adjustHarness) {
	k, l := pool("order"), lim(100, 10)
	granted(t, h.reserve(t, take(k, l, 50)))
	// Refund 40 (→ 90), cap at 70 (→ 70): the cap is applied after the refund.
	h.refund(t, refund(k, l, 40))
	st := h.throttle(t, limiter.Throttle{Key: k, Limit: l, Cap: 70})
	assert.Equal(t, int64(70), st[0].Remaining)
	// Refund 10 and pause 1 s: the pause wins.
	h.refund(t, refund(k, l, 10))
	st = h.throttle(t, limiter.Throttle{Key: k, Limit: l, Cap: limiter.NoCap, Pause: time.Second})
	assert.Zero(t, st[0].Remaining)
	assert.Equal(t, 11*time.Second, st[0].ResetAfter)
}

func testDebtFloor(t *testing.T, h *adjustHarness) {
	k, l := pool("floor"), lim(1_000_000_000, 1_000_000_000)
	for range 10 {
		h.refund(t, refund(k, l, -1_000_000_000))
	}
	st := h.refund(t, refund(k, l, 0))
	// The floor is MinLevel: (capacity·Micro − MinLevel) / refill µs to full.
	full := int64(1_000_000_000) * limiter.Micro
	assert.Equal(t, time.Duration((full-limiter.MinLevel)/1_000_000_000)*time.Microsecond, st[0].ResetAfter)
	// A pause longer than the floor allows is cut to it.
	k2 := pool("floor-pause")
	st = h.throttle(t, pause(k2, l, time.Hour))
	assert.Equal(t, time.Duration((full-limiter.MinLevel)/1_000_000_000)*time.Microsecond, st[0].ResetAfter)
}

func testAdjustFresh(t *testing.T, h *adjustHarness) {
	k, l := pool("fresh"), lim(10, 1)
	st := h.refund(t, refund(k, l, -3))
	assert.Equal(t, int64(7), st[0].Remaining, "a bucket never used is full before the charge")
	assert.Equal(t, int64(7), h.remaining(t, k, l))
}

func testAdjustInvalid(t *testing.T, h *adjustHarness) {
	k, l := pool("invalid"), lim(10, 1)
	granted(t, h.reserve(t, take(k, l, 4)))
	for name, refunds := range map[string][]limiter.Refund{
		"twice the same bucket": {refund(k, l, 1), refund(k, l, 1)},
		"zero capacity":         {refund(k, lim(0, 1), 1)},
		"huge refund":           {refund(k, l, 1<<40)},
	} {
		_, err := h.a.Refund(context.Background(), refunds, h.clock.Now())
		assert.Error(t, err, name)
	}
	for name, throttles := range map[string][]limiter.Throttle{
		"twice the same bucket": {capTo(k, l, 1), pause(k, l, time.Second)},
		"zero capacity":         {capTo(k, lim(0, 1), 1)},
		"cap out of range":      {capTo(k, l, 1<<40)},
		"negative pause":        {pause(k, l, -time.Second)},
		"pause over a day":      {pause(k, l, 25*time.Hour)},
	} {
		_, err := h.a.Throttle(context.Background(), throttles, h.clock.Now())
		assert.Error(t, err, name)
	}
	assert.Equal(t, int64(6), h.remaining(t, k, l), "a refused batch changes nothing")

	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	_, err := h.a.Refund(ctx, []limiter.Refund{refund(k, l, 1)}, h.clock.Now())
	assert.ErrorIs(t, err, context.Canceled)
	_, err = h.a.Throttle(ctx, []limiter.Throttle{capTo(k, l, 1)}, h.clock.Now())
	assert.ErrorIs(t, err, context.Canceled)

	st, err := h.a.Refund(context.Background(), nil, h.clock.Now())
	require.NoError(t, err)
	assert.Empty(t, st)
	st, err = h.a.Throttle(context.Background(), nil, h.clock.Now())
	require.NoError(t, err)
	assert.Empty(t, st)
}

func testAdjustBatch(t *testing.T, h *adjustHarness) {
	p, c, l := pool("batch"), client("batch", "acme"), lim(100, 1)
	granted(t, h.reserve(t, take(p, l, 60), take(c, l, 60)))
	st := h.refund(t, refund(p, l, 50), refund(c, l, -10))
	assert.Equal(t, int64(90), st[0].Remaining)
	assert.Equal(t, int64(30), st[1].Remaining)
	assert.Equal(t, int64(90), h.remaining(t, p, l))
	assert.Equal(t, int64(30), h.remaining(t, c, l))
}
