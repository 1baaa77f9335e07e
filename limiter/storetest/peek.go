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

// PeekBackend is a backend that can also decide without deciding.
type PeekBackend interface {
	limiter.Backend
	limiter.Peeker
}

// PeekConfig says what a backend's peeks may differ in.
type PeekConfig struct {
	// LeasedSlots: the backend leases concurrency slots in blocks that
	// outlive a hold (a fleet member, cluster.Store), and its peek asks
	// the shared store, which still counts a lapsed hold's leased slot.
	// Such a peek may refuse what the reserve grants (never the reverse).
	LeasedSlots bool
}

// RunPeek runs the conformance suite of Peek against backends made by
// newBackend (same contract as Run's newStore): a peek answers what a
// Reserve would at that moment, and leaves the store exactly as it was.
func RunPeek(t *testing.T, newBackend func(t *testing.T, clock limiter.Clock) PeekBackend, cfg PeekConfig) {
	for name, test := range map[string]func(*testing.T, *peekHarness){
		"peek agrees with reserve":          testPeekAgrees,
		"peek changes nothing":              testPeekChangesNothing,
		"peek sees budgets":                 testPeekBudget,
		"peek sees slots, live only":        testPeekSlots,
		"peek refuses what reserve refuses": testPeekInvalid,
	} {
		t.Run(name, func(t *testing.T) {
			h := &peekHarness{clock: fakeclock.New(Epoch), cfg: cfg}
			h.b = newBackend(t, h.clock)
			require.NotNil(t, h.b)
			t.Cleanup(func() { assert.NoError(t, h.b.Close()) })
			test(t, h)
		})
	}
}

type peekHarness struct {
	cfg   PeekConfig
	clock *fakeclock.Clock
	b     PeekBackend
}

var peekLimit = limiter.Limit{Capacity: 100, Refill: 10}

func peekTake(pool string, cost int64) limiter.Take {
	return limiter.Take{Key: limiter.Key{Pool: pool}, Limit: peekLimit, Cost: cost}
}

func (h *peekHarness) req(hd *limiter.Hold, takes ...limiter.Take) limiter.Request {
	return limiter.Request{Takes: takes, Hold: hd, Now: h.clock.Now()}
}

func (h *peekHarness) peek(t *testing.T, r limiter.Request) limiter.Decision {
	t.Helper()
	d, err := h.b.Peek(context.Background(), r)
	require.NoError(t, err)
	return d
}

func (h *peekHarness) reserve(t *testing.T, r limiter.Request) limiter.Decision {
	t.Helper()
	d, err := h.b.Reserve(context.Background(), r)
	require.NoError(t, err)
	return d
}

func testPeekAgrees(t *testing.T, h *peekHarness) {
	for _, cost := range []int64{30, 60, 30, 50} { // granted, granted, short, short
		r := h.req(nil, peekTake("p", cost))
		p := h.peek(t, r)
		d := h.reserve(t, r)
		assertSameDecision(t, d, p)
		h.clock.Advance(500 * time.Millisecond)
	}
	// Too large for the bucket ever: the same refusal, with no retry.
	p := h.peek(t, h.req(nil, peekTake("p", 101)))
	assert.False(t, p.Allowed)
	assert.Equal(t, limiter.ReasonExceedsCapacity, p.Reason)
}

func testPeekChangesNothing(t *testing.T, h *peekHarness) {
	hd := &limiter.Hold{ID: "peek-1", TTL: time.Minute, Period: period, Cost: 500, Budgets: []limiter.Budget{budget("acme", 1000)},
		Slot: &limiter.Slot{Client: "acme", Max: 1}}
	for range 5 {
		d := h.peek(t, h.req(hd, peekTake("p", 100)))
		require.True(t, d.Allowed, "nothing a peek did makes the next one fail")
		assert.Equal(t, int64(1), d.InFlight, "in flight as the reserve would leave it")
		assert.Equal(t, int64(0), d.Buckets[0].Remaining, "what would be left after the call")
	}
	u, err := h.b.Usage(context.Background(), period, []limiter.Budget{budget("acme", 1000)}, h.clock.Now())
	require.NoError(t, err)
	assert.Zero(t, u.Budgets[0].Spent)
	assert.Zero(t, u.Budgets[0].Reserved)
	assert.Zero(t, u.InFlight)
	// The whole bucket, the id and the slot are still there to take.
	d := h.reserve(t, h.req(hd, peekTake("p", 100)))
	assert.True(t, d.Allowed, "peeks took no units, no id, no slot")
	assert.Equal(t, int64(1), d.InFlight)
}

func testPeekBudget(t *testing.T, h *peekHarness) {
	hd := func(id string) *limiter.Hold {
		return &limiter.Hold{ID: id, TTL: time.Minute, Period: period, Cost: 600, Budgets: []limiter.Budget{budget("acme", 1000)}}
	}
	require.True(t, h.reserve(t, h.req(hd("b1"))).Allowed)
	p := h.peek(t, h.req(hd("b2")))
	assert.False(t, p.Allowed)
	assert.Equal(t, limiter.ReasonBudgetExceeded, p.Reason)
	assert.Equal(t, 0, p.BudgetBlocking)
	assert.Equal(t, int64(600), int64(p.Budgets[0].Reserved))
	assertSameDecision(t, h.reserve(t, h.req(hd("b2"))), p)
}

func testPeekSlots(t *testing.T, h *peekHarness) {
	hd := func(id string) *limiter.Hold {
		return &limiter.Hold{ID: id, TTL: time.Second, Period: period, Cost: 1, Budgets: []limiter.Budget{budget("acme", limiter.Unlimited)},
			Slot: &limiter.Slot{Client: "acme", Max: 1}}
	}
	require.True(t, h.reserve(t, h.req(hd("s1"))).Allowed)
	p := h.peek(t, h.req(hd("s2")))
	assert.False(t, p.Allowed)
	assert.Equal(t, limiter.ReasonConcurrency, p.Reason)
	assert.Equal(t, int64(1), p.InFlight)
	// Past the hold's TTL its slot is free, though nothing reclaimed it yet.
	h.clock.Advance(2 * time.Second)
	r := h.req(hd("s2"))
	p = h.peek(t, r)
	if h.cfg.LeasedSlots {
		d := h.reserve(t, r)
		assert.True(t, !p.Allowed || d.Allowed, "a peek is never more generous than the reserve")
		return
	}
	assert.True(t, p.Allowed, "a lapsed slot does not count")
	assertSameDecision(t, h.reserve(t, r), p)
}

func testPeekInvalid(t *testing.T, h *peekHarness) {
	_, err := h.b.Peek(context.Background(), h.req(nil, peekTake("p", -1)))
	assert.Error(t, err)
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	_, err = h.b.Peek(ctx, h.req(nil, peekTake("p", 1)))
	assert.Error(t, err)
}

// assertSameDecision compares a reserve's decision with the peek before
// it: the same in all but what Reserve did on the way (lapsed holds
// committed: counted, and moved from reserved to spent, the same total).
func assertSameDecision(t *testing.T, reserved, peeked limiter.Decision) {
	t.Helper()
	norm := func(d limiter.Decision) limiter.Decision {
		d.Expired = 0
		d.Budgets = append([]limiter.BudgetState(nil), d.Budgets...)
		for i := range d.Budgets {
			d.Budgets[i].Spent += d.Budgets[i].Reserved
			d.Budgets[i].Reserved = 0
		}
		return d
	}
	assert.Equal(t, norm(reserved), norm(peeked), "a peek answers as the reserve that follows it")
}
