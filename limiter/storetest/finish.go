package storetest

import (
	"context"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/tollgate/tollgate/internal/fakeclock"
	"github.com/tollgate/tollgate/limiter"
	"github.com/tollgate/tollgate/policy"
)

// FinishBackend is a store that ends reservations in one step (and
// corrects buckets, as every store that does implements).
type FinishBackend interface {
	limiter.Backend
	limiter.Adjuster
	limiter.Finisher
}

// FinishConfig tells RunFinish how to reach a store's state beyond the
// store itself.
type FinishConfig struct {
	// Reopen returns a second store over the same state as b, as a sidecar
	// that restarted (or a new client of the same Redis and prefix) would
	// see it; the suite finishes through it a reservation held through b,
	// which proves that refunds do not depend on the memory of the process
	// that admitted the call. Nil means b itself (a store whose state is
	// its own memory).
	Reopen func(t *testing.T, clock limiter.Clock, b FinishBackend) FinishBackend
	// Level reads a bucket's whole units at now where b keeps it. Nil reads
	// through b with a zero-cost take; a store that reports levels from
	// local leases (cluster) reads them from its shared store instead.
	Level func(t *testing.T, b FinishBackend, k limiter.Key, l limiter.Limit, now time.Time) int64
}

// RunFinish runs the conformance suite of limiter.Finisher (ending a
// reservation with its refunds and the upstream's throttles in one step)
// against backends made by newBackend (same contract as Run's newStore),
// reaching their state as cfg says.
//
// Every Reserve and Finish carries the fake clock's time; the buckets
// never refill (their levels are exact whatever time a store reads).
// Expected numbers follow limiter.Ending.Refunds and limiter.ApplyAdjust.
func RunFinish(t *testing.T, newBackend func(t *testing.T, clock limiter.Clock) FinishBackend, cfg FinishConfig) {
	for name, test := range map[string]func(*testing.T, *finishHarness){
		"settle refunds each charged bucket":     testFinishSettle,
		"release refunds what was not used":      testFinishRelease,
		"a pool not named keeps its charge":      testFinishPartial,
		"a short shadow bucket is not refunded":  testFinishShadow,
		"refunds never exceed capacity":          testFinishClamp,
		"a repeat refunds nothing twice":         testFinishRepeat,
		"concurrent finishes refund once":        testFinishConcurrent,
		"an expired reservation refunds nothing": testFinishExpired,
		"the slot is freed":                      testFinishSlot,
		"throttles cap and pause":                testFinishThrottles,
		"an unknown id still applies throttles":  testFinishUnknown,
		"invalid endings change nothing":         testFinishInvalid,
		"a cancelled context changes nothing":    testFinishCancelled,
		"refunds survive a reconnect":            testFinishReopen,
		"refunds at a fractional rate":           testFinishFractional,
		"a call estimated at $0 ends":            testFinishFree,
	} {
		t.Run(name, func(t *testing.T) {
			h := &finishHarness{clock: fakeclock.New(Epoch)}
			h.b = newBackend(t, h.clock)
			require.NotNil(t, h.b)
			t.Cleanup(func() { assert.NoError(t, h.b.Close()) })
			h.reopen = func(t *testing.T) FinishBackend {
				if cfg.Reopen == nil {
					return h.b
				}
				return cfg.Reopen(t, h.clock, h.b)
			}
			h.read = cfg.Level
			test(t, h)
		})
	}
}

type finishHarness struct {
	clock  *fakeclock.Clock
	b      FinishBackend
	reopen func(t *testing.T) FinishBackend
	read   func(t *testing.T, b FinishBackend, k limiter.Key, l limiter.Limit, now time.Time) int64
}

// The buckets of a call to a chat pool (pool-wide and the client's) and an
// SMS pool; none refills.
var (
	gptPool   = pool("gpt")
	gptClient = client("gpt", "acme")
	smsPool   = pool("sms")
	gptLimit  = lim(1000, 0)
	smsLimit  = lim(50, 0)
	acme      = budget("acme", 10_000)
)

// admit holds id's call at the fake clock's time: estimate, and the takes.
func (h *finishHarness) admit(t *testing.T, id string, estimate policy.Money, takes ...limiter.Take) limiter.Decision {
	t.Helper()
	d, err := h.b.Reserve(context.Background(), limiter.Request{Takes: takes, Hold: hold(id, estimate, acme), Now: h.clock.Now()})
	require.NoError(t, err)
	require.True(t, d.Allowed, "the call is admitted: %+v", d)
	return d
}

// chat is a call's takes: gpt units from the pool-wide and client buckets.
func chat(units int64) []limiter.Take {
	return []limiter.Take{take(gptPool, gptLimit, units), take(gptClient, gptLimit, units)}
}

func (h *finishHarness) finish(t *testing.T, e limiter.Ending) limiter.Settlement {
	t.Helper()
	e.Now = h.clock.Now()
	st, err := h.b.Finish(context.Background(), e)
	require.NoError(t, err)
	assert.Equal(t, e.ID, st.ID)
	return st
}

// level reads a bucket's whole units (through b with a zero-cost take,
// unless the config says otherwise).
func (h *finishHarness) level(t *testing.T, k limiter.Key, l limiter.Limit) int64 {
	t.Helper()
	if h.read != nil {
		return h.read(t, h.b, k, l, h.clock.Now())
	}
	d, err := h.b.Reserve(context.Background(), limiter.Request{Takes: []limiter.Take{take(k, l, 0)}, Now: h.clock.Now()})
	require.NoError(t, err)
	require.True(t, d.Allowed)
	return d.Buckets[0].Remaining
}

// levels reads the chat pool's two buckets and the SMS pool.
func (h *finishHarness) levels(t *testing.T) [3]int64 {
	t.Helper()
	return [3]int64{h.level(t, gptPool, gptLimit), h.level(t, gptClient, gptLimit), h.level(t, smsPool, smsLimit)}
}

func (h *finishHarness) spent(t *testing.T) (spent, reserved policy.Money) {
	t.Helper()
	u, err := h.b.Usage(context.Background(), period, []limiter.Budget{acme}, h.clock.Now())
	require.NoError(t, err)
	require.Len(t, u.Budgets, 1)
	return u.Budgets[0].Spent, u.Budgets[0].Reserved
}

func used(pool string, units int64) limiter.PoolUse { return limiter.PoolUse{Pool: pool, Units: units} }

func testFinishSettle(t *testing.T, h *finishHarness) {
	tests := map[string]struct {
		used   int64
		actual policy.Money
		want   int64 // each gpt bucket after the finish
	}{
		"below the estimate": {used: 120, actual: 100, want: 1000 - 120},
		"at the estimate":    {used: 300, actual: 250, want: 1000 - 300},
		"above the estimate": {used: 500, actual: 400, want: 1000 - 500},
		"nothing used":       {used: 0, actual: 0, want: 1000},
	}
	for name, tc := range tests {
		id := "settle-" + strings.ReplaceAll(name, " ", "-")
		before := h.levels(t)
		h.admit(t, id, 250, chat(300)...)
		assert.Equal(t, [3]int64{before[0] - 300, before[1] - 300, 50}, h.levels(t), name)
		st := h.finish(t, limiter.Ending{ID: id, Outcome: limiter.OutcomeSettled, Actual: tc.actual, Used: []limiter.PoolUse{used("gpt", tc.used)}})
		assert.Equal(t, limiter.Settlement{ID: id, Outcome: limiter.OutcomeSettled, Estimated: 250, Spent: tc.actual}, st, name)
		assert.Equal(t, [3]int64{tc.want, tc.want, 50}, h.levels(t), "%s: each charged bucket gets back what it was charged less what was used", name)
		// Reset the buckets for the next case.
		_, err := h.b.Refund(context.Background(), []limiter.Refund{{Key: gptPool, Limit: gptLimit, Units: 1000}, {Key: gptClient, Limit: gptLimit, Units: 1000}}, h.clock.Now())
		require.NoError(t, err)
	}
	spent, reserved := h.spent(t)
	assert.Equal(t, policy.Money(100+250+400+0), spent, "the actual costs are committed")
	assert.Zero(t, reserved)
}

func testFinishRelease(t *testing.T, h *finishHarness) {
	h.admit(t, "r", 250, append(chat(300), take(smsPool, smsLimit, 2))...)
	st := h.finish(t, limiter.Ending{ID: "r", Outcome: limiter.OutcomeReleased, Used: []limiter.PoolUse{used("gpt", 0), used("sms", 0)}})
	assert.Equal(t, limiter.Settlement{ID: "r", Outcome: limiter.OutcomeReleased, Estimated: 250, Spent: 0}, st)
	assert.Equal(t, [3]int64{1000, 1000, 50}, h.levels(t), "a call that used nothing gets everything back")
	spent, reserved := h.spent(t)
	assert.Zero(t, spent)
	assert.Zero(t, reserved)

	// A release without Used returns the money and keeps the units charged
	// (the call reached the upstream, or the caller does not know).
	h.admit(t, "r2", 250, chat(300)...)
	h.finish(t, limiter.Ending{ID: "r2", Outcome: limiter.OutcomeReleased})
	assert.Equal(t, [3]int64{700, 700, 50}, h.levels(t))
}

func testFinishPartial(t *testing.T, h *finishHarness) {
	h.admit(t, "p", 250, append(chat(300), take(smsPool, smsLimit, 5))...)
	h.finish(t, limiter.Ending{ID: "p", Outcome: limiter.OutcomeSettled, Actual: 10, Used: []limiter.PoolUse{used("sms", 1), used("other", 7)}})
	assert.Equal(t, [3]int64{700, 700, 50 - 1}, h.levels(t), "gpt is not named: it keeps its charge; sms gets 4 back; a pool not charged changes nothing")
	assert.Equal(t, int64(1000), h.level(t, pool("other"), gptLimit))
}

func testFinishShadow(t *testing.T, h *finishHarness) {
	shadow := lim(100, 0)
	d, err := h.b.Reserve(context.Background(), limiter.Request{Takes: []limiter.Take{take(gptClient, shadow, 90)}, Now: h.clock.Now()})
	require.NoError(t, err)
	require.True(t, d.Allowed)
	sh := take(gptClient, shadow, 50)
	sh.Shadow = true
	d = h.admit(t, "s", 250, take(gptPool, gptLimit, 300), sh)
	require.True(t, d.Buckets[1].Short, "the shadow bucket holds 10 of 50")
	h.finish(t, limiter.Ending{ID: "s", Outcome: limiter.OutcomeSettled, Actual: 10, Used: []limiter.PoolUse{used("gpt", 0)}})
	assert.Equal(t, int64(1000), h.level(t, gptPool, gptLimit))
	assert.Equal(t, int64(10), h.level(t, gptClient, shadow), "a short shadow bucket was not charged, so gets nothing back")
}

func testFinishClamp(t *testing.T, h *finishHarness) {
	h.admit(t, "c", 250, chat(300)...)
	// Another call's unused units came back meanwhile: the pool is full.
	_, err := h.b.Refund(context.Background(), []limiter.Refund{{Key: gptPool, Limit: gptLimit, Units: 300}}, h.clock.Now())
	require.NoError(t, err)
	h.finish(t, limiter.Ending{ID: "c", Outcome: limiter.OutcomeReleased, Used: []limiter.PoolUse{used("gpt", 0)}})
	assert.Equal(t, int64(1000), h.level(t, gptPool, gptLimit), "never past capacity")

	// A charge after the fact runs into debt, floored at MinLevel.
	h.admit(t, "c2", 250, chat(1000)...)
	h.finish(t, limiter.Ending{ID: "c2", Outcome: limiter.OutcomeSettled, Actual: 1, Used: []limiter.PoolUse{used("gpt", 1_000_000_000)}})
	assert.Zero(t, h.level(t, gptPool, gptLimit))
	d, err := h.b.Reserve(context.Background(), limiter.Request{Takes: []limiter.Take{take(gptPool, lim(1000, 1_000_000_000), 1)}, Now: h.clock.Now()})
	require.NoError(t, err)
	// In debt by the units used beyond the charge: 999,999,000 units and the
	// one asked for, at 10^9 units a second.
	assert.Equal(t, time.Second, d.RetryAfter, "the charge after the fact is a debt")
}

func testFinishRepeat(t *testing.T, h *finishHarness) {
	h.admit(t, "x", 250, chat(300)...)
	e := limiter.Ending{ID: "x", Outcome: limiter.OutcomeSettled, Actual: 100, Used: []limiter.PoolUse{used("gpt", 100)}}
	first := h.finish(t, e)
	require.False(t, first.Repeat)
	assert.Equal(t, [3]int64{900, 900, 50}, h.levels(t))
	for name, again := range map[string]limiter.Ending{
		"the same":     e,
		"released":     {ID: "x", Outcome: limiter.OutcomeReleased, Used: []limiter.PoolUse{used("gpt", 0)}},
		"another cost": {ID: "x", Outcome: limiter.OutcomeSettled, Actual: 999, Used: []limiter.PoolUse{used("gpt", 1)}},
	} {
		st := h.finish(t, again)
		want := first
		want.Repeat = true
		assert.Equal(t, want, st, name)
		assert.Equal(t, [3]int64{900, 900, 50}, h.levels(t), "%s: nothing is refunded twice", name)
	}
	spent, _ := h.spent(t)
	assert.Equal(t, policy.Money(100), spent)
}

func testFinishConcurrent(t *testing.T, h *finishHarness) {
	h.admit(t, "race", 250, chat(300)...)
	const n = 16
	var wg sync.WaitGroup
	results := make([]limiter.Settlement, n)
	errs := make([]error, n)
	for i := range n {
		wg.Go(func() {
			results[i], errs[i] = h.b.Finish(context.Background(), limiter.Ending{ID: "race", Outcome: limiter.OutcomeSettled, Actual: 50,
				Used: []limiter.PoolUse{used("gpt", 100)}, Now: h.clock.Now()})
		})
	}
	wg.Wait()
	firsts := 0
	for i := range n {
		require.NoError(t, errs[i])
		if !results[i].Repeat {
			firsts++
		}
	}
	assert.Equal(t, 1, firsts, "one finish ends it; the others are repeats")
	assert.Equal(t, [3]int64{900, 900, 50}, h.levels(t), "refunded once")
}

func testFinishExpired(t *testing.T, h *finishHarness) {
	h.admit(t, "late", 250, chat(300)...)
	h.clock.Advance(2 * time.Minute)
	n, err := h.b.Expire(context.Background(), h.clock.Now(), 10)
	require.NoError(t, err)
	require.Equal(t, 1, n)
	st := h.finish(t, limiter.Ending{ID: "late", Outcome: limiter.OutcomeSettled, Actual: 1, Used: []limiter.PoolUse{used("gpt", 0)}})
	assert.Equal(t, limiter.Settlement{ID: "late", Outcome: limiter.OutcomeExpired, Estimated: 250, Spent: 250, Repeat: true}, st)
	assert.Equal(t, [3]int64{700, 700, 50}, h.levels(t), "a reservation that lapsed keeps its charges")
}

// testFinishFree: a call estimated at nothing (an unpriced pool, a body
// the estimator could not price) on a client with a budget and a slot is
// settled, released and expired like any other, and frees its slot. (On
// Redis its -0 once reached HINCRBY, which refused it: the reservation
// could never end, and once lapsed it failed every later admission of its
// client.)
func testFinishFree(t *testing.T, h *finishHarness) {
	free := func(id string) limiter.Request {
		hd := hold(id, 0, acme)
		hd.Slot = &limiter.Slot{Client: "acme", Max: 3}
		return limiter.Request{Takes: chat(1), Hold: hd, Now: h.clock.Now()}
	}
	for _, id := range []string{"settled", "released", "lapsed"} {
		d, err := h.b.Reserve(context.Background(), free(id))
		require.NoError(t, err)
		require.True(t, d.Allowed, "%s: %+v", id, d)
	}
	st := h.finish(t, limiter.Ending{ID: "settled", Outcome: limiter.OutcomeSettled, Actual: 0, Used: []limiter.PoolUse{used("gpt", 1)}})
	assert.Equal(t, limiter.Settlement{ID: "settled", Outcome: limiter.OutcomeSettled}, st)
	st = h.finish(t, limiter.Ending{ID: "released", Outcome: limiter.OutcomeReleased})
	assert.Equal(t, limiter.Settlement{ID: "released", Outcome: limiter.OutcomeReleased}, st)
	h.clock.Advance(2 * time.Minute)
	n, err := h.b.Expire(context.Background(), h.clock.Now(), 10)
	require.NoError(t, err)
	assert.Equal(t, 1, n, "the lapsed one expires")
	spent, reserved := h.spent(t)
	assert.Zero(t, spent)
	assert.Zero(t, reserved)
	for _, id := range []string{"after-1", "after-2", "after-3"} {
		d, err := h.b.Reserve(context.Background(), free(id))
		require.NoError(t, err, "a later admission of the client")
		assert.True(t, d.Allowed, "%s: every slot is free again: %+v", id, d)
	}
}

func testFinishSlot(t *testing.T, h *finishHarness) {
	slotted := func(id string) limiter.Request {
		hd := hold(id, 10, acme)
		hd.Slot = &limiter.Slot{Client: "acme", Max: 1}
		return limiter.Request{Takes: chat(1), Hold: hd, Now: h.clock.Now()}
	}
	d, err := h.b.Reserve(context.Background(), slotted("one"))
	require.NoError(t, err)
	require.True(t, d.Allowed)
	d, err = h.b.Reserve(context.Background(), slotted("two"))
	require.NoError(t, err)
	require.False(t, d.Allowed)
	assert.Equal(t, limiter.ReasonConcurrency, d.Reason)
	h.finish(t, limiter.Ending{ID: "one", Outcome: limiter.OutcomeSettled, Actual: 5, Used: []limiter.PoolUse{used("gpt", 1)}})
	d, err = h.b.Reserve(context.Background(), slotted("three"))
	require.NoError(t, err)
	assert.True(t, d.Allowed, "the finish freed the slot")
	assert.Equal(t, int64(1), d.InFlight)
}

func testFinishThrottles(t *testing.T, h *finishHarness) {
	paused := lim(100, 10) // 100 ms a unit
	h.admit(t, "t", 250, append(chat(300), take(smsPool, smsLimit, 5))...)
	h.finish(t, limiter.Ending{ID: "t", Outcome: limiter.OutcomeSettled, Actual: 100,
		Used: []limiter.PoolUse{used("gpt", 100), used("sms", 5)},
		Throttles: []limiter.Throttle{
			{Key: gptPool, Limit: gptLimit, Cap: 400}, // after the refund: 900 capped to 400
			{Key: smsPool, Limit: smsLimit, Cap: 48},  // above the level: no change
			{Key: pool("paused"), Limit: paused, Cap: limiter.NoCap, Pause: 30 * time.Second},
		}})
	assert.Equal(t, [3]int64{400, 900, 45}, h.levels(t), "refunds first, then the caps")
	d, err := h.b.Reserve(context.Background(), limiter.Request{Takes: []limiter.Take{take(pool("paused"), paused, 1)}, Now: h.clock.Now()})
	require.NoError(t, err)
	denied(t, d, limiter.ReasonRateLimited, 0, 30*time.Second+100*time.Millisecond, "the pause, then a unit's refill")

	// A repeat changes no refund, but the upstream spoke again: its
	// throttles apply.
	st := h.finish(t, limiter.Ending{ID: "t", Outcome: limiter.OutcomeSettled, Actual: 100, Used: []limiter.PoolUse{used("gpt", 0)},
		Throttles: []limiter.Throttle{{Key: gptClient, Limit: gptLimit, Cap: 10}}})
	assert.True(t, st.Repeat)
	assert.Equal(t, [3]int64{400, 10, 45}, h.levels(t))
}

func testFinishUnknown(t *testing.T, h *finishHarness) {
	_, err := h.b.Finish(context.Background(), limiter.Ending{ID: "never-held", Outcome: limiter.OutcomeSettled, Actual: 1,
		Used:      []limiter.PoolUse{used("gpt", 0)},
		Throttles: []limiter.Throttle{{Key: gptPool, Limit: gptLimit, Cap: 600}}, Now: h.clock.Now()})
	require.ErrorIs(t, err, limiter.ErrUnknownReservation)
	assert.Equal(t, [3]int64{600, 1000, 50}, h.levels(t), "the throttle applies; nothing else changes")
}

func testFinishInvalid(t *testing.T, h *finishHarness) {
	h.admit(t, "v", 250, chat(300)...)
	ok := limiter.Ending{ID: "v", Outcome: limiter.OutcomeSettled, Actual: 100, Used: []limiter.PoolUse{used("gpt", 100)},
		Throttles: []limiter.Throttle{{Key: smsPool, Limit: smsLimit, Cap: 10}}}
	tests := map[string]func(e *limiter.Ending){
		"empty id":                func(e *limiter.Ending) { e.ID = "" },
		"id with a space":         func(e *limiter.Ending) { e.ID = "v w" },
		"expired outcome":         func(e *limiter.Ending) { e.Outcome = limiter.OutcomeExpired },
		"unknown outcome":         func(e *limiter.Ending) { e.Outcome = "done" },
		"negative actual":         func(e *limiter.Ending) { e.Actual = -1 },
		"actual out of range":     func(e *limiter.Ending) { e.Actual = limiter.MaxMoney },
		"negative use":            func(e *limiter.Ending) { e.Used[0].Units = -1 },
		"use out of range":        func(e *limiter.Ending) { e.Used[0].Units = 1 << 40 },
		"pool named twice":        func(e *limiter.Ending) { e.Used = append(e.Used, used("gpt", 1)) },
		"throttle no capacity":    func(e *limiter.Ending) { e.Throttles[0].Limit = lim(0, 1) },
		"throttle long pause":     func(e *limiter.Ending) { e.Throttles[0].Pause = 25 * time.Hour },
		"throttle twice":          func(e *limiter.Ending) { e.Throttles = append(e.Throttles, e.Throttles[0]) },
		"throttle huge cap":       func(e *limiter.Ending) { e.Throttles[0].Cap = 1 << 40 },
		"throttle negative pause": func(e *limiter.Ending) { e.Throttles[0].Pause = -time.Second },
		"too many throttles": func(e *limiter.Ending) {
			for i := range limiter.MaxCharges {
				e.Throttles = append(e.Throttles, limiter.Throttle{Key: client("many", strconv.Itoa(i)), Limit: smsLimit, Cap: 1})
			}
		},
	}
	for name, spoil := range tests {
		e := ok
		e.Used = append([]limiter.PoolUse(nil), ok.Used...)
		e.Throttles = append([]limiter.Throttle(nil), ok.Throttles...)
		spoil(&e)
		e.Now = h.clock.Now()
		_, err := h.b.Finish(context.Background(), e)
		require.Error(t, err, name)
		assert.NotErrorIs(t, err, limiter.ErrUnknownReservation, name)
		assert.Contains(t, err.Error(), "finish", "%s: the error says what was refused: %v", name, err)
		assert.Equal(t, [3]int64{700, 700, 50}, h.levels(t), "%s: nothing changed", name)
	}
	_, reserved := h.spent(t)
	assert.Equal(t, policy.Money(250), reserved, "the reservation is still open")
	st := h.finish(t, ok)
	assert.False(t, st.Repeat)
	assert.Equal(t, [3]int64{900, 900, 10}, h.levels(t))
}

func testFinishCancelled(t *testing.T, h *finishHarness) {
	h.admit(t, "ctx", 250, chat(300)...)
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	_, err := h.b.Finish(ctx, limiter.Ending{ID: "ctx", Outcome: limiter.OutcomeReleased, Used: []limiter.PoolUse{used("gpt", 0)}, Now: h.clock.Now()})
	require.ErrorIs(t, err, context.Canceled)
	assert.Equal(t, [3]int64{700, 700, 50}, h.levels(t))
	st := h.finish(t, limiter.Ending{ID: "ctx", Outcome: limiter.OutcomeReleased, Used: []limiter.PoolUse{used("gpt", 0)}})
	assert.False(t, st.Repeat, "the cancelled finish ended nothing")
	assert.Equal(t, [3]int64{1000, 1000, 50}, h.levels(t))
}

func testFinishReopen(t *testing.T, h *finishHarness) {
	h.admit(t, "restart", 250, append(chat(300), take(smsPool, smsLimit, 5))...)
	other := h.reopen(t)
	e := limiter.Ending{ID: "restart", Outcome: limiter.OutcomeSettled, Actual: 100, Used: []limiter.PoolUse{used("gpt", 100), used("sms", 2)}, Now: h.clock.Now()}
	st, err := other.Finish(context.Background(), e)
	require.NoError(t, err)
	assert.Equal(t, limiter.Settlement{ID: "restart", Outcome: limiter.OutcomeSettled, Estimated: 250, Spent: 100}, st)
	assert.Equal(t, [3]int64{900, 900, 48}, h.levels(t), "the charges were read from the store, not from the admitting process")
	st, err = h.b.Finish(context.Background(), e)
	require.NoError(t, err)
	assert.True(t, st.Repeat, "either store sees the end")
	assert.Equal(t, [3]int64{900, 900, 48}, h.levels(t))
}
