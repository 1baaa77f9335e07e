package storetest

import (
	"context"
	"fmt"
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

// RunSavings runs the conformance suite of savings (limiter.Ending.Savings
// booked with a settlement, reported by Usage) against backends made by
// newBackend, reaching their state as cfg says (Reopen only; Level is not
// used). Every case runs on a chain of unlimited budgets and on one of
// capped budgets, since a store may decide them differently (a fleet
// member decides the first locally); the reopen case runs on the capped
// chain alone, which such a store leaves to its shared store near a limit.
//
// Every Reserve, Finish, Expire and Usage carries the fake clock's time.
func RunSavings(t *testing.T, newBackend func(t *testing.T, clock limiter.Clock) FinishBackend, cfg FinishConfig) {
	cases := map[string]func(*testing.T, *savingsHarness){
		"booked once per settle, by strategy":          testSavingsBooked,
		"booked beside throttles at a fractional rate": testSavingsWithThrottles,
		"a repeat books nothing":                       testSavingsRepeat,
		"a release books nothing":                      testSavingsRelease,
		"an expired reservation books nothing":         testSavingsExpired,
		"an unknown id books nothing":                  testSavingsUnknown,
		"negative savings keep their sign":             testSavingsNegative,
		"clients and periods are kept apart":           testSavingsApart,
		"invalid savings are refused, nothing changes": testSavingsInvalid,
		"concurrent finishes book once":                testSavingsConcurrent,
	}
	chains := map[string]policy.Money{"unlimited": limiter.Unlimited, "capped": 100 * policy.NanosPerDollar}
	for chain, limit := range chains {
		for name, test := range cases {
			t.Run(chain+"/"+name, func(t *testing.T) {
				test(t, newSavingsHarness(t, newBackend, cfg, limit))
			})
		}
	}
	t.Run("capped/savings survive a reconnect", func(t *testing.T) {
		testSavingsReopen(t, newSavingsHarness(t, newBackend, cfg, chains["capped"]))
	})
}

type savingsHarness struct {
	clock  *fakeclock.Clock
	b      FinishBackend
	limit  policy.Money
	reopen func(t *testing.T) FinishBackend
}

func newSavingsHarness(t *testing.T, newBackend func(t *testing.T, clock limiter.Clock) FinishBackend, cfg FinishConfig, limit policy.Money) *savingsHarness {
	h := &savingsHarness{clock: fakeclock.New(Epoch), limit: limit}
	h.b = newBackend(t, h.clock)
	require.NotNil(t, h.b)
	t.Cleanup(func() { assert.NoError(t, h.b.Close()) })
	h.reopen = func(t *testing.T) FinishBackend {
		if cfg.Reopen == nil {
			return h.b
		}
		return cfg.Reopen(t, h.clock, h.b)
	}
	return h
}

// chain is the budget chain of client: itself, then its parents.
func (h *savingsHarness) chain(owners ...string) []limiter.Budget {
	out := make([]limiter.Budget, len(owners))
	for i, o := range owners {
		out[i] = limiter.Budget{Owner: o, Limit: h.limit}
	}
	return out
}

// admitIn holds id's call of estimate on chain in per.
func (h *savingsHarness) admitIn(t *testing.T, per, id string, estimate policy.Money, chain []limiter.Budget) {
	t.Helper()
	d, err := h.b.Reserve(context.Background(), limiter.Request{
		Hold: &limiter.Hold{ID: id, TTL: time.Minute, Period: per, Cost: estimate, Budgets: chain}, Now: h.clock.Now()})
	require.NoError(t, err)
	require.True(t, d.Allowed, "the call is admitted: %+v", d)
}

func (h *savingsHarness) admit(t *testing.T, id string, estimate policy.Money) {
	t.Helper()
	h.admitIn(t, period, id, estimate, h.chain("acme"))
}

// settle ends id at actual with savings on b.
func (h *savingsHarness) settle(t *testing.T, b FinishBackend, id string, actual policy.Money, savings ...limiter.Saving) limiter.Settlement {
	t.Helper()
	st, err := b.Finish(context.Background(), limiter.Ending{ID: id, Outcome: limiter.OutcomeSettled, Actual: actual, Savings: savings, Now: h.clock.Now()})
	require.NoError(t, err)
	return st
}

// savedIn reads the savings of chain's first owner in per.
func (h *savingsHarness) savedIn(t *testing.T, per string, chain []limiter.Budget) []limiter.Saving {
	t.Helper()
	u, err := h.b.Usage(context.Background(), per, chain, h.clock.Now())
	require.NoError(t, err)
	require.Len(t, u.Budgets, len(chain))
	return u.Savings
}

func (h *savingsHarness) saved(t *testing.T) []limiter.Saving {
	t.Helper()
	return h.savedIn(t, period, h.chain("acme"))
}

func saving(strategy string, amount policy.Money) limiter.Saving {
	return limiter.Saving{Strategy: strategy, Amount: amount}
}

func testSavingsBooked(t *testing.T, h *savingsHarness) {
	assert.Empty(t, h.saved(t), "nothing booked yet")
	h.admit(t, "a", 50_000_000)
	st := h.settle(t, h.b, "a", 40_000_000, saving("flex", 3_000_000), saving("downgrade", 41_200_000), saving("compaction", 0))
	assert.False(t, st.Repeat)
	assert.Equal(t, []limiter.Saving{saving("downgrade", 41_200_000), saving("flex", 3_000_000)}, h.saved(t),
		"by strategy, sorted by name; a zero saving is not listed")
	h.admit(t, "b", 50_000_000)
	h.settle(t, h.b, "b", 10_000_000, saving("downgrade", 1))
	assert.Equal(t, []limiter.Saving{saving("downgrade", 41_200_001), saving("flex", 3_000_000)}, h.saved(t), "added exactly")
	h.admit(t, "c", 50_000_000)
	h.settle(t, h.b, "c", 10_000_000)
	assert.Equal(t, []limiter.Saving{saving("downgrade", 41_200_001), saving("flex", 3_000_000)}, h.saved(t), "a settle without savings books none")
	u, err := h.b.Usage(context.Background(), period, h.chain("acme"), h.clock.Now())
	require.NoError(t, err)
	assert.Equal(t, policy.Money(60_000_000), u.Budgets[0].Spent, "the settlements themselves are as ever")
}

// testSavingsWithThrottles: an ending that also throttles buckets (whose
// arguments come before the savings' on Redis, five per bucket at a rate
// that is no whole number a second) books its savings all the same.
func testSavingsWithThrottles(t *testing.T, h *savingsHarness) {
	h.admit(t, "a", 50_000_000)
	th := []limiter.Throttle{
		{Key: limiter.Key{Pool: "gpt"}, Limit: limiter.Limit{Capacity: 10_000, Refill: 500, Per: 3 * time.Second}, Cap: 100, Pause: time.Second},
		{Key: limiter.Key{Pool: "sms"}, Limit: limiter.Limit{Capacity: 500, Refill: 8}, Cap: limiter.NoCap, Pause: 2 * time.Second},
	}
	st, err := h.b.Finish(context.Background(), limiter.Ending{ID: "a", Outcome: limiter.OutcomeSettled, Actual: 40_000_000,
		Throttles: th, Savings: []limiter.Saving{saving("downgrade", 41_200_000), saving("flex", 3_000_000)}, Now: h.clock.Now()})
	require.NoError(t, err)
	assert.False(t, st.Repeat)
	assert.Equal(t, []limiter.Saving{saving("downgrade", 41_200_000), saving("flex", 3_000_000)}, h.saved(t))
}

func testSavingsRepeat(t *testing.T, h *savingsHarness) {
	h.admit(t, "x", 50_000_000)
	first := h.settle(t, h.b, "x", 40_000_000, saving("downgrade", 7_000))
	require.False(t, first.Repeat)
	for name, again := range map[string]limiter.Ending{
		"the same":        {ID: "x", Outcome: limiter.OutcomeSettled, Actual: 40_000_000, Savings: []limiter.Saving{saving("downgrade", 7_000)}},
		"other savings":   {ID: "x", Outcome: limiter.OutcomeSettled, Actual: 1, Savings: []limiter.Saving{saving("flex", 5), saving("downgrade", -3)}},
		"released":        {ID: "x", Outcome: limiter.OutcomeReleased, Savings: []limiter.Saving{saving("flex", 5)}},
		"without savings": {ID: "x", Outcome: limiter.OutcomeSettled, Actual: 1},
	} {
		again.Now = h.clock.Now()
		st, err := h.b.Finish(context.Background(), again)
		require.NoError(t, err, name)
		assert.True(t, st.Repeat, name)
		assert.Equal(t, []limiter.Saving{saving("downgrade", 7_000)}, h.saved(t), "%s: booked once", name)
	}
}

func testSavingsRelease(t *testing.T, h *savingsHarness) {
	h.admit(t, "r", 50_000_000)
	st, err := h.b.Finish(context.Background(), limiter.Ending{ID: "r", Outcome: limiter.OutcomeReleased,
		Savings: []limiter.Saving{saving("downgrade", 41_200_000)}, Now: h.clock.Now()})
	require.NoError(t, err)
	assert.Equal(t, limiter.OutcomeReleased, st.Outcome)
	assert.Empty(t, h.saved(t), "a released call saved nothing: it cost nothing")
	st = h.settle(t, h.b, "r", 1, saving("downgrade", 41_200_000))
	assert.True(t, st.Repeat)
	assert.Empty(t, h.saved(t), "nor does a settle after the release")
}

func testSavingsExpired(t *testing.T, h *savingsHarness) {
	h.admit(t, "late", 50_000_000)
	h.clock.Advance(2 * time.Minute)
	n, err := h.b.Expire(context.Background(), h.clock.Now(), 10)
	require.NoError(t, err)
	require.Equal(t, 1, n)
	st := h.settle(t, h.b, "late", 1, saving("downgrade", 41_200_000))
	assert.True(t, st.Repeat)
	assert.Equal(t, limiter.OutcomeExpired, st.Outcome)
	assert.Empty(t, h.saved(t))
}

func testSavingsUnknown(t *testing.T, h *savingsHarness) {
	_, err := h.b.Finish(context.Background(), limiter.Ending{ID: "never-held", Outcome: limiter.OutcomeSettled, Actual: 1,
		Savings: []limiter.Saving{saving("downgrade", 41_200_000)}, Now: h.clock.Now()})
	require.ErrorIs(t, err, limiter.ErrUnknownReservation)
	assert.Empty(t, h.saved(t))
}

func testSavingsNegative(t *testing.T, h *savingsHarness) {
	h.admit(t, "n1", 50_000_000)
	h.settle(t, h.b, "n1", 40_000_000, saving("prompt_cache", -1_500), saving("downgrade", 2_000))
	assert.Equal(t, []limiter.Saving{saving("downgrade", 2_000), saving("prompt_cache", -1_500)}, h.saved(t),
		"a cache write that cost more than it saved this time: the sign is kept")
	h.admit(t, "n2", 50_000_000)
	h.settle(t, h.b, "n2", 40_000_000, saving("prompt_cache", -(limiter.MaxMoney-1)))
	assert.Equal(t, []limiter.Saving{saving("downgrade", 2_000), saving("prompt_cache", -1_500-(limiter.MaxMoney-1))}, h.saved(t),
		"exact beyond 2^53 in all")
	h.admit(t, "n3", 50_000_000)
	h.settle(t, h.b, "n3", 40_000_000, saving("prompt_cache", limiter.MaxMoney-1))
	h.admit(t, "n4", 50_000_000)
	h.settle(t, h.b, "n4", 40_000_000, saving("prompt_cache", 1_500))
	assert.Equal(t, []limiter.Saving{saving("downgrade", 2_000)}, h.saved(t), "a strategy whose savings sum to zero is not listed")
}

func testSavingsApart(t *testing.T, h *savingsHarness) {
	marketing := h.chain("acme/marketing", "acme")
	h.admitIn(t, period, "m1", 50_000_000, marketing)
	h.settle(t, h.b, "m1", 10_000_000, saving("downgrade", 100))
	h.admitIn(t, period, "b1", 50_000_000, h.chain("beta"))
	h.settle(t, h.b, "b1", 10_000_000, saving("downgrade", 20), saving("flex", 3))
	h.admitIn(t, "2026-02", "m2", 50_000_000, marketing)
	h.settle(t, h.b, "m2", 10_000_000, saving("downgrade", 7))

	assert.Equal(t, []limiter.Saving{saving("downgrade", 100)}, h.savedIn(t, period, marketing))
	assert.Equal(t, []limiter.Saving{saving("downgrade", 7)}, h.savedIn(t, "2026-02", marketing), "another period")
	assert.Equal(t, []limiter.Saving{saving("downgrade", 20), saving("flex", 3)}, h.savedIn(t, period, h.chain("beta")), "another client")
	assert.Empty(t, h.savedIn(t, period, h.chain("acme")), "savings are the client's, not its parents'")
	assert.Empty(t, h.savedIn(t, "2026-03", marketing))
	assert.Empty(t, h.savedIn(t, period, h.chain("acme/marketing/x")), "a name that extends another's is another client")
}

func testSavingsInvalid(t *testing.T, h *savingsHarness) {
	h.admit(t, "v", 50_000_000)
	before, err := h.b.Usage(context.Background(), period, h.chain("acme"), h.clock.Now())
	require.NoError(t, err)
	nine := make([]limiter.Saving, limiter.MaxSavings+1)
	for i := range nine {
		nine[i] = saving("s_"+strings.Repeat("x", i+1), 1)
	}
	tests := map[string][]limiter.Saving{
		"too many strategies":  nine,
		"empty name":           {saving("", 1)},
		"upper case":           {saving("Downgrade", 1)},
		"a dash":               {saving("flex-tier", 1)},
		"a digit":              {saving("tier2", 1)},
		"a space":              {saving("down grade", 1)},
		"a newline":            {saving("down\ngrade", 1)},
		"too long":             {saving(strings.Repeat("a", limiter.MaxStrategyLen+1), 1)},
		"named twice":          {saving("flex", 1), saving("flex", 2)},
		"amount at 2^53":       {saving("flex", limiter.MaxMoney)},
		"amount at -2^53":      {saving("flex", -limiter.MaxMoney)},
		"amount far too large": {saving("flex", 1<<62)},
	}
	for name, bad := range tests {
		_, err := h.b.Finish(context.Background(), limiter.Ending{ID: "v", Outcome: limiter.OutcomeSettled, Actual: 1,
			Savings: append([]limiter.Saving{saving("downgrade", 5)}, bad...), Now: h.clock.Now()})
		require.Error(t, err, name)
		assert.NotErrorIs(t, err, limiter.ErrUnknownReservation, name)
		assert.Contains(t, err.Error(), "finish v: savings", "%s: the error says what was refused: %v", name, err)
	}
	u, err := h.b.Usage(context.Background(), period, h.chain("acme"), h.clock.Now())
	require.NoError(t, err)
	assert.Empty(t, u.Savings, "nothing booked")
	assert.Equal(t, before, u, "nothing changed")
	st := h.settle(t, h.b, "v", 1, saving("downgrade", 5), saving(strings.Repeat("z", limiter.MaxStrategyLen), -1))
	assert.False(t, st.Repeat, "the reservation was still open, and settles as ever")
	assert.Equal(t, policy.Money(50_000_000), st.Estimated)
	assert.Equal(t, []limiter.Saving{saving("downgrade", 5), saving(strings.Repeat("z", limiter.MaxStrategyLen), -1)}, h.saved(t))
}

func testSavingsConcurrent(t *testing.T, h *savingsHarness) {
	const calls, n = 4, 8
	var wg sync.WaitGroup
	firsts := make([]int, calls)
	var mu sync.Mutex
	for c := range calls {
		id := fmt.Sprint("race-", c)
		h.admit(t, id, 50_000_000)
		for range n {
			wg.Go(func() {
				st, err := h.b.Finish(context.Background(), limiter.Ending{ID: id, Outcome: limiter.OutcomeSettled, Actual: 1,
					Savings: []limiter.Saving{saving("downgrade", 1_000), saving("flex", -1)}, Now: h.clock.Now()})
				assert.NoError(t, err)
				if err == nil && !st.Repeat {
					mu.Lock()
					firsts[c]++
					mu.Unlock()
				}
			})
		}
	}
	wg.Wait()
	assert.Equal(t, []int{1, 1, 1, 1}, firsts, "one finish of each call ends it")
	assert.Equal(t, []limiter.Saving{saving("downgrade", calls*1_000), saving("flex", -calls)}, h.saved(t), "each call's savings booked once")
}

func testSavingsReopen(t *testing.T, h *savingsHarness) {
	h.admit(t, "restart", 50_000_000)
	other := h.reopen(t)
	st := h.settle(t, other, "restart", 40_000_000, saving("downgrade", 41_200_000))
	require.False(t, st.Repeat)
	assert.Equal(t, []limiter.Saving{saving("downgrade", 41_200_000)}, h.saved(t), "booked from the store's record, not the admitting process's memory")
	st = h.settle(t, h.b, "restart", 40_000_000, saving("downgrade", 41_200_000))
	assert.True(t, st.Repeat, "either store sees the end")
	assert.Equal(t, []limiter.Saving{saving("downgrade", 41_200_000)}, h.saved(t))
}

// testBookSavings (of RunLease): a batch's savings are booked with its
// spend, once, to each delta's owner and period, and a delta may carry
// savings alone; a batch with savings a delta may not carry is refused
// whole.
func testBookSavings(t *testing.T, h *leaseHarness) {
	ctx := context.Background()
	acme := []limiter.Budget{{Owner: "acme", Limit: limiter.Unlimited}}
	group := []limiter.Budget{{Owner: "acme-group", Limit: limiter.Unlimited}}
	saved := func(per string, chain []limiter.Budget) []limiter.Saving {
		t.Helper()
		u, err := h.b.Usage(ctx, per, chain, h.clock.Now())
		require.NoError(t, err)
		return u.Savings
	}
	deltas := []limiter.SpendDelta{
		{Owner: "acme", Period: period, Spent: 300, Savings: []limiter.Saving{saving("downgrade", 41_200_000), saving("prompt_cache", -1_500)}},
		{Owner: "acme-group", Period: period, Spent: 300},
		{Owner: "acme", Period: "2026-02", Savings: []limiter.Saving{saving("flex", limiter.MaxMoney-1)}},
	}
	for range 2 {
		_, err := h.b.Book(ctx, "node-a:1", deltas)
		require.NoError(t, err)
	}
	_, err := h.b.Book(ctx, "node-a:2", []limiter.SpendDelta{{Owner: "acme", Period: "2026-02", Savings: []limiter.Saving{saving("flex", 2)}}})
	require.NoError(t, err)
	assert.Equal(t, []limiter.Saving{saving("downgrade", 41_200_000), saving("prompt_cache", -1_500)}, saved(period, acme), "booked once")
	assert.Equal(t, []limiter.Saving{saving("flex", limiter.MaxMoney+1)}, saved("2026-02", acme), "a delta of savings alone, summed exactly")
	assert.Empty(t, saved(period, group))
	u, err := h.b.Usage(ctx, period, acme, h.clock.Now())
	require.NoError(t, err)
	assert.Equal(t, policy.Money(300), u.Budgets[0].Spent)

	_, err = h.b.Book(ctx, "node-a:3", []limiter.SpendDelta{{Owner: "acme", Period: period, Spent: 5}, {Owner: "acme", Period: "2026-03", Savings: []limiter.Saving{saving("Flex", 1)}}})
	require.ErrorContains(t, err, "savings")
	u, err = h.b.Usage(ctx, period, acme, h.clock.Now())
	require.NoError(t, err)
	assert.Equal(t, policy.Money(300), u.Budgets[0].Spent, "refused whole")
}
