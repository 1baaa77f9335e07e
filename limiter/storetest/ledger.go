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
	"github.com/tollgate/tollgate/policy"
)

// RunLedger runs the conformance suite of budgets, reservations and
// concurrency slots against backends made by newBackend (same contract as
// Run's newStore). Every Reserve and Expire carries the fake clock's time;
// Settle and Release take none, as in production.
func RunLedger(t *testing.T, newBackend func(t *testing.T, clock limiter.Clock) limiter.Backend) {
	for name, test := range map[string]func(*testing.T, *ledgerHarness){
		"hold reserves against the budget":           testHoldReserves,
		"settle below the estimate returns the rest": testSettleBelow,
		"settle above the estimate charges it all":   testSettleAbove,
		"settle is idempotent":                       testSettleIdempotent,
		"release returns everything":                 testRelease,
		"budget exceeded takes nothing":              testBudgetExceeded,
		"a child never outspends its parent":         testHierarchy,
		"unlimited budgets are tracked":              testUnlimited,
		"expiry commits at the estimate":             testExpiry,
		"reserve commits lapsed holds first":         testLazyExpiry,
		"concurrency slots":                          testSlots,
		"slots are reclaimed after the TTL":          testSlotReclaim,
		"month rollover":                             testMonthRollover,
		"duplicate and unknown ids":                  testIDs,
		"concurrent holds never overspend":           testConcurrentHolds,
		"commit spends at once":                      testCommit,
	} {
		t.Run(name, func(t *testing.T) {
			h := &ledgerHarness{clock: fakeclock.New(Epoch)}
			h.b = newBackend(t, h.clock)
			require.NotNil(t, h.b)
			t.Cleanup(func() { assert.NoError(t, h.b.Close()) })
			test(t, h)
		})
	}
}

type ledgerHarness struct {
	clock *fakeclock.Clock
	b     limiter.Backend
	n     atomic.Int64
}

const period = "2026-01"

func (h *ledgerHarness) id() string { return fmt.Sprintf("r%d", h.n.Add(1)) }

// hold builds a Hold on client's chain (owners, each with its limit).
func hold(id string, cost policy.Money, budgets ...limiter.Budget) *limiter.Hold {
	return &limiter.Hold{ID: id, TTL: time.Minute, Period: period, Cost: cost, Budgets: budgets}
}

func budget(owner string, limit policy.Money) limiter.Budget {
	return limiter.Budget{Owner: owner, Limit: limit}
}

func (h *ledgerHarness) reserve(t *testing.T, hd *limiter.Hold, takes ...limiter.Take) limiter.Decision {
	t.Helper()
	d, err := h.b.Reserve(context.Background(), limiter.Request{Takes: takes, Hold: hd, Now: h.clock.Now()})
	require.NoError(t, err)
	require.Len(t, d.Budgets, len(hd.Budgets), "one budget state per budget")
	return d
}

func (h *ledgerHarness) usage(t *testing.T, per string, budgets ...limiter.Budget) limiter.Usage {
	t.Helper()
	u, err := h.b.Usage(context.Background(), per, budgets, h.clock.Now())
	require.NoError(t, err)
	require.Len(t, u.Budgets, len(budgets))
	return u
}

// spentReserved asserts one budget's standing.
func (h *ledgerHarness) spentReserved(t *testing.T, b limiter.Budget, spent, reserved policy.Money) {
	t.Helper()
	u := h.usage(t, period, b)
	assert.Equal(t, spent, u.Budgets[0].Spent, "spent of %s", b.Owner)
	assert.Equal(t, reserved, u.Budgets[0].Reserved, "reserved of %s", b.Owner)
}

func testHoldReserves(t *testing.T, h *ledgerHarness) {
	b := budget("acme", 1000)
	d := h.reserve(t, hold(h.id(), 300, b))
	require.True(t, d.Allowed)
	assert.Equal(t, -1, d.BudgetBlocking)
	assert.Equal(t, policy.Money(300), d.Budgets[0].Reserved)
	assert.Equal(t, policy.Money(700), d.Budgets[0].Remaining())
	h.spentReserved(t, b, 0, 300)
}

func testSettleBelow(t *testing.T, h *ledgerHarness) {
	b := budget("acme", 1000)
	id := h.id()
	require.True(t, h.reserve(t, hold(id, 300, b)).Allowed)
	s, err := h.b.Settle(context.Background(), id, 120)
	require.NoError(t, err)
	assert.Equal(t, limiter.Settlement{ID: id, Outcome: limiter.OutcomeSettled, Estimated: 300, Spent: 120}, s)
	h.spentReserved(t, b, 120, 0)
}

func testSettleAbove(t *testing.T, h *ledgerHarness) {
	b := budget("acme", 1000)
	id := h.id()
	require.True(t, h.reserve(t, hold(id, 300, b)).Allowed)
	_, err := h.b.Settle(context.Background(), id, 450)
	require.NoError(t, err)
	h.spentReserved(t, b, 450, 0)
}

func testSettleIdempotent(t *testing.T, h *ledgerHarness) {
	b := budget("acme", 1000)
	id := h.id()
	require.True(t, h.reserve(t, hold(id, 300, b)).Allowed)
	first, err := h.b.Settle(context.Background(), id, 200)
	require.NoError(t, err)
	for _, again := range []func() (limiter.Settlement, error){
		func() (limiter.Settlement, error) { return h.b.Settle(context.Background(), id, 999) },
		func() (limiter.Settlement, error) { return h.b.Release(context.Background(), id) },
	} {
		s, err := again()
		require.NoError(t, err)
		assert.True(t, s.Repeat)
		s.Repeat = false
		assert.Equal(t, first, s, "a repeat reports the first outcome")
	}
	h.spentReserved(t, b, 200, 0)
}

func testRelease(t *testing.T, h *ledgerHarness) {
	b := budget("acme", 1000)
	id := h.id()
	hd := hold(id, 300, b)
	hd.Slot = &limiter.Slot{Client: "acme", Max: 1}
	require.True(t, h.reserve(t, hd).Allowed)
	assert.Equal(t, int64(1), h.usage(t, period, b).InFlight)
	s, err := h.b.Release(context.Background(), id)
	require.NoError(t, err)
	assert.Equal(t, limiter.Settlement{ID: id, Outcome: limiter.OutcomeReleased, Estimated: 300, Spent: 0}, s)
	h.spentReserved(t, b, 0, 0)
	assert.Equal(t, int64(0), h.usage(t, period, b).InFlight, "the slot is free again")
}

func testBudgetExceeded(t *testing.T, h *ledgerHarness) {
	b := budget("acme", 100)
	tk := limiter.Take{Key: limiter.Key{Pool: "p"}, Limit: limiter.Limit{Capacity: 10, Refill: 1}, Cost: 4}
	require.True(t, h.reserve(t, hold(h.id(), 60, b), tk).Allowed)
	id := h.id()
	d := h.reserve(t, hold(id, 60, b), tk)
	require.False(t, d.Allowed)
	assert.Equal(t, limiter.ReasonBudgetExceeded, d.Reason)
	assert.Equal(t, 0, d.BudgetBlocking)
	assert.True(t, d.Budgets[0].Short)
	assert.Equal(t, time.Duration(0), d.RetryAfter, "waiting does not refill a budget")
	assert.Equal(t, int64(6), d.Buckets[0].Remaining, "the bucket is untouched by the denied call")
	h.spentReserved(t, b, 0, 60)
	_, err := h.b.Settle(context.Background(), id, 1)
	assert.ErrorIs(t, err, limiter.ErrUnknownReservation, "a denied hold leaves no reservation")
	// Exactly up to the limit is allowed.
	assert.True(t, h.reserve(t, hold(h.id(), 40, b)).Allowed)
}

func testHierarchy(t *testing.T, h *ledgerHarness) {
	parent := budget("acme", 150)
	marketing, sales := budget("acme/marketing", 100), budget("acme/sales", 100)
	m := h.id()
	require.True(t, h.reserve(t, hold(m, 100, marketing, parent)).Allowed)
	d := h.reserve(t, hold(h.id(), 60, sales, parent))
	require.False(t, d.Allowed, "the parent has only 50 left")
	assert.Equal(t, limiter.ReasonBudgetExceeded, d.Reason)
	assert.Equal(t, 1, d.BudgetBlocking, "the parent, second in the chain, denied")
	assert.False(t, d.Budgets[0].Short)
	assert.True(t, d.Budgets[1].Short)
	require.True(t, h.reserve(t, hold(h.id(), 50, sales, parent)).Allowed)
	_, err := h.b.Settle(context.Background(), m, 70)
	require.NoError(t, err)
	u := h.usage(t, period, sales, parent)
	assert.Equal(t, policy.Money(70), u.Budgets[1].Spent, "the charge applies to the whole chain")
	assert.Equal(t, policy.Money(50), u.Budgets[1].Reserved)
	assert.Equal(t, policy.Money(50), u.Budgets[0].Reserved)
	h.spentReserved(t, marketing, 70, 0)
}

func testUnlimited(t *testing.T, h *ledgerHarness) {
	b := budget("big", limiter.Unlimited)
	id := h.id()
	d := h.reserve(t, hold(id, 1_000_000_000_000, b))
	require.True(t, d.Allowed)
	assert.Equal(t, limiter.Unlimited, d.Budgets[0].Remaining())
	_, err := h.b.Settle(context.Background(), id, 5)
	require.NoError(t, err)
	h.spentReserved(t, b, 5, 0)
}

func testExpiry(t *testing.T, h *ledgerHarness) {
	b := budget("acme", 1000)
	id := h.id()
	hd := hold(id, 300, b)
	hd.TTL = 10 * time.Second
	hd.Slot = &limiter.Slot{Client: "acme", Max: 5}
	require.True(t, h.reserve(t, hd).Allowed)
	n, err := h.b.Expire(context.Background(), h.clock.Now().Add(10*time.Second-time.Microsecond), 100)
	require.NoError(t, err)
	assert.Equal(t, 0, n, "not yet")
	h.clock.Advance(10 * time.Second)
	n, err = h.b.Expire(context.Background(), h.clock.Now(), 100)
	require.NoError(t, err)
	assert.Equal(t, 1, n)
	h.spentReserved(t, b, 300, 0)
	assert.Equal(t, int64(0), h.usage(t, period, b).InFlight)
	s, err := h.b.Settle(context.Background(), id, 1)
	require.NoError(t, err, "a late settle is recognised")
	assert.True(t, s.Repeat)
	assert.Equal(t, limiter.OutcomeExpired, s.Outcome)
	h.spentReserved(t, b, 300, 0)
	n, err = h.b.Expire(context.Background(), h.clock.Now(), 100)
	require.NoError(t, err)
	assert.Equal(t, 0, n, "never committed twice")
}

func testLazyExpiry(t *testing.T, h *ledgerHarness) {
	b := budget("acme", 500)
	hd := hold(h.id(), 400, b)
	hd.TTL = time.Second
	require.True(t, h.reserve(t, hd).Allowed)
	h.clock.Advance(time.Second)
	// The lapsed hold is committed at 400 before this one is decided.
	d := h.reserve(t, hold(h.id(), 200, b))
	assert.False(t, d.Allowed)
	assert.Equal(t, policy.Money(400), d.Budgets[0].Spent)
	assert.Equal(t, policy.Money(0), d.Budgets[0].Reserved)
}

func testSlots(t *testing.T, h *ledgerHarness) {
	b := budget("acme", limiter.Unlimited)
	slot := &limiter.Slot{Client: "acme", Max: 2}
	mk := func(id string) *limiter.Hold { hd := hold(id, 1, b); hd.Slot = slot; return hd }
	a, c := h.id(), h.id()
	require.True(t, h.reserve(t, mk(a)).Allowed)
	d := h.reserve(t, mk(c))
	require.True(t, d.Allowed)
	assert.Equal(t, int64(2), d.InFlight)
	d = h.reserve(t, mk(h.id()))
	require.False(t, d.Allowed)
	assert.Equal(t, limiter.ReasonConcurrency, d.Reason)
	assert.Equal(t, int64(2), d.InFlight)
	_, err := h.b.Settle(context.Background(), a, 1)
	require.NoError(t, err)
	assert.True(t, h.reserve(t, mk(h.id())).Allowed, "a settled call frees its slot")
	other := hold(h.id(), 1, budget("other", limiter.Unlimited))
	other.Slot = &limiter.Slot{Client: "other", Max: 1}
	assert.True(t, h.reserve(t, other).Allowed, "slots are per client")
}

func testSlotReclaim(t *testing.T, h *ledgerHarness) {
	b := budget("acme", limiter.Unlimited)
	mk := func() *limiter.Hold {
		hd := hold(h.id(), 1, b)
		hd.TTL = 30 * time.Second
		hd.Slot = &limiter.Slot{Client: "acme", Max: 1}
		return hd
	}
	require.True(t, h.reserve(t, mk()).Allowed)
	assert.False(t, h.reserve(t, mk()).Allowed)
	h.clock.Advance(30 * time.Second) // the holder died: no settle, no release
	assert.True(t, h.reserve(t, mk()).Allowed, "the lapsed slot is reclaimed")
}

func testMonthRollover(t *testing.T, h *ledgerHarness) {
	b := budget("acme", 100)
	late := h.id()
	require.True(t, h.reserve(t, hold(late, 90, b)).Allowed)
	dec := hold(h.id(), 90, b)
	dec.Period = "2026-02"
	d := h.reserve(t, dec)
	require.True(t, d.Allowed, "a new month starts with the whole budget")
	assert.Equal(t, policy.Money(0), d.Budgets[0].Spent)
	_, err := h.b.Settle(context.Background(), late, 80)
	require.NoError(t, err)
	jan, feb := h.usage(t, "2026-01", b), h.usage(t, "2026-02", b)
	assert.Equal(t, policy.Money(80), jan.Budgets[0].Spent, "a call settles into the month it was reserved in")
	assert.Equal(t, policy.Money(0), feb.Budgets[0].Spent)
	assert.Equal(t, policy.Money(90), feb.Budgets[0].Reserved)
}

func testIDs(t *testing.T, h *ledgerHarness) {
	b := budget("acme", 1000)
	id := h.id()
	require.True(t, h.reserve(t, hold(id, 1, b)).Allowed)
	_, err := h.b.Reserve(context.Background(), limiter.Request{Hold: hold(id, 1, b), Now: h.clock.Now()})
	assert.ErrorIs(t, err, limiter.ErrDuplicateReservation, "a live id")
	_, err = h.b.Release(context.Background(), id)
	require.NoError(t, err)
	_, err = h.b.Reserve(context.Background(), limiter.Request{Hold: hold(id, 1, b), Now: h.clock.Now()})
	assert.ErrorIs(t, err, limiter.ErrDuplicateReservation, "an ended id")
	_, err = h.b.Settle(context.Background(), "never-held", 1)
	assert.ErrorIs(t, err, limiter.ErrUnknownReservation)
	_, err = h.b.Release(context.Background(), "never-held")
	assert.ErrorIs(t, err, limiter.ErrUnknownReservation)
	h.spentReserved(t, b, 0, 0)
}

// testConcurrentHolds: 64 goroutines reserve against one budget of N; some
// settle for less, some release, some settle for the estimate. At the end
// committed spend never exceeds N... unless a settle charged more than its
// estimate (none do here), and every reservation is accounted for.
func testConcurrentHolds(t *testing.T, h *ledgerHarness) {
	const (
		workers = 64
		each    = 8
		cost    = 10
		limit   = 1000 // room for 100 of the 512 attempts
	)
	b := budget("shared", limit)
	var granted, reserved, committed, returned atomic.Int64
	var wg sync.WaitGroup
	for w := range workers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := range each {
				id := fmt.Sprintf("w%d-%d", w, i)
				d, err := h.b.Reserve(context.Background(), limiter.Request{Hold: hold(id, cost, b), Now: h.clock.Now()})
				if !assert.NoError(t, err) || !d.Allowed {
					continue
				}
				granted.Add(1)
				reserved.Add(cost)
				var s limiter.Settlement
				switch i % 3 {
				case 0:
					s, err = h.b.Release(context.Background(), id)
				case 1:
					s, err = h.b.Settle(context.Background(), id, cost/2)
				default:
					s, err = h.b.Settle(context.Background(), id, cost)
				}
				if assert.NoError(t, err) {
					committed.Add(int64(s.Spent))
					returned.Add(int64(s.Estimated - s.Spent))
				}
			}
		}()
	}
	wg.Wait()
	u := h.usage(t, period, b)
	assert.LessOrEqual(t, int64(u.Budgets[0].Spent), int64(limit), "committed spend never exceeds the budget")
	assert.Equal(t, committed.Load(), int64(u.Budgets[0].Spent))
	assert.Equal(t, policy.Money(0), u.Budgets[0].Reserved, "nothing is left held")
	assert.Equal(t, reserved.Load(), committed.Load()+returned.Load(), "committed + returned = reserved")
	assert.Greater(t, granted.Load(), int64(0))
}

func testCommit(t *testing.T, h *ledgerHarness) {
	b := budget("acme", 100)
	c := &limiter.Hold{Commit: true, Period: period, Cost: 60, Budgets: []limiter.Budget{b},
		Slot: &limiter.Slot{Client: "acme", Max: 0}} // a commit takes no slot
	d := h.reserve(t, c)
	require.True(t, d.Allowed)
	assert.Equal(t, policy.Money(60), d.Budgets[0].Spent)
	h.spentReserved(t, b, 60, 0)
	assert.Equal(t, int64(0), h.usage(t, period, b).InFlight)
	d = h.reserve(t, c)
	assert.False(t, d.Allowed, "a commit is still checked against the budget")
	assert.Equal(t, limiter.ReasonBudgetExceeded, d.Reason)
	h.spentReserved(t, b, 60, 0)
}

// testExpiredCounted: a Reserve that commits lapsed holds says how many.
func testExpiredCounted(t *testing.T, h *ledgerHarness) {
	b := budget("acme", limiter.Unlimited)
	for range 2 {
		hd := hold(h.id(), 5, b)
		hd.TTL = time.Second
		require.True(t, h.reserve(t, hd).Allowed)
	}
	h.clock.Advance(time.Second)
	d := h.reserve(t, hold(h.id(), 5, b))
	assert.Equal(t, 2, d.Expired)
	assert.Equal(t, policy.Money(10), d.Budgets[0].Spent)
	assert.Equal(t, 0, h.reserve(t, hold(h.id(), 5, b)).Expired, "each is counted once")
}
