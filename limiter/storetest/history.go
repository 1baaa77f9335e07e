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

// HistoryBackend ends reservations and keeps their history and cost
// records.
type HistoryBackend interface {
	limiter.Backend
	limiter.Finisher
	limiter.Historian
	limiter.Recorder
}

// HistoryConfig tells RunHistory how to reach a store's state.
type HistoryConfig struct {
	// Sync, when set, books what the backend decided on its own into the
	// store it reads history from (a fleet member books its local calls'
	// records at its next sync); the suite calls it before every read.
	Sync func(t *testing.T, b HistoryBackend)
}

// RunHistory runs the conformance suite of history and cost records
// (limiter.CallRecord booked by Finish, read through limiter.Historian)
// against backends made by newBackend (same contract as Run's newStore).
func RunHistory(t *testing.T, newBackend func(t *testing.T, clock limiter.Clock) HistoryBackend, cfg HistoryConfig) {
	for name, test := range map[string]func(*testing.T, *historyHarness){
		"settles add up by month, route and model":  testHistorySums,
		"a repeat books nothing twice":              testHistoryRepeat,
		"a release keeps a cost record, no history": testHistoryRelease,
		"no record, nothing booked":                 testHistoryNone,
		"unknown ids and clients":                   testHistoryUnknown,
		"an invalid record changes nothing":         testHistoryInvalid,
		"a record batch books once":                 testHistoryBatch,
		"a request id's first record is kept":       testHistoryFirstKept,
	} {
		t.Run(name, func(t *testing.T) {
			h := &historyHarness{clock: fakeclock.New(Epoch), cfg: cfg}
			h.b = newBackend(t, h.clock)
			require.NotNil(t, h.b)
			t.Cleanup(func() { assert.NoError(t, h.b.Close()) })
			test(t, h)
		})
	}
}

type historyHarness struct {
	cfg   HistoryConfig
	clock *fakeclock.Clock
	b     HistoryBackend
}

func (h *historyHarness) call(t *testing.T, id string, estimate policy.Money, e limiter.Ending) limiter.Settlement {
	t.Helper()
	d, err := h.b.Reserve(context.Background(), limiter.Request{Hold: hold(id, estimate, budget("acme", 1_000_000)), Now: h.clock.Now()})
	require.NoError(t, err)
	require.True(t, d.Allowed)
	e.ID, e.Now = id, h.clock.Now()
	st, err := h.b.Finish(context.Background(), e)
	require.NoError(t, err)
	return st
}

func rec(reqID, route, model string, in, out int64, est, saved policy.Money) *limiter.CallRecord {
	return &limiter.CallRecord{RequestID: reqID, Client: "acme", Month: "2026-01", Route: route, Model: model,
		InputTokens: in, OutputTokens: out, Estimate: est, Saved: saved}
}

func settled(actual policy.Money, r *limiter.CallRecord) limiter.Ending {
	return limiter.Ending{Outcome: limiter.OutcomeSettled, Actual: actual, Record: r}
}

func testHistorySums(t *testing.T, h *historyHarness) {
	h.call(t, "h1", 100, settled(80, rec("req-1", "openai", "gpt-4o", 10, 20, 100, 5)))
	h.call(t, "h2", 100, settled(90, rec("req-2", "openai", "gpt-4o", 1, 2, 100, -3)))
	h.call(t, "h3", 50, settled(40, rec("req-3", "openai", "gpt-4o-mini", 7, 0, 50, 0)))
	r := rec("req-4", "sms", "", 0, 0, 7, 0)
	r.Month = "2026-02"
	h.call(t, "h4", 7, settled(7, r))
	rows, err := h.history(t, "acme", []string{"2026-02", "2026-01", "2025-12"})
	require.NoError(t, err)
	assert.Equal(t, []limiter.HistoryRow{
		{Month: "2026-02", Route: "sms", Model: "", Calls: 1, Cost: 7},
		{Month: "2026-01", Route: "openai", Model: "gpt-4o", Calls: 2, Cost: 170, InputTokens: 11, OutputTokens: 22, Saved: 2},
		{Month: "2026-01", Route: "openai", Model: "gpt-4o-mini", Calls: 1, Cost: 40, InputTokens: 7},
	}, rows)
	c, err := h.costRecord(t, "req-1")
	require.NoError(t, err)
	assert.Equal(t, limiter.CostRecord{RequestID: "req-1", Client: "acme", Route: "openai", Model: "gpt-4o", Outcome: limiter.OutcomeSettled,
		Estimate: 100, Actual: 80, Saved: 5, InputTokens: 10, OutputTokens: 20, At: h.clock.Now().UTC().Truncate(time.Microsecond)}, c)
	h.clock.Advance(limiter.DefaultCostTTL + time.Second)
	_, err = h.costRecord(t, "req-1")
	if err == nil {
		t.Log("the store keeps cost records by its own clock (Redis TTL); past the TTL on the fake clock only memory forgets")
	} else {
		assert.ErrorIs(t, err, limiter.ErrNoCostRecord)
	}
}

func testHistoryRepeat(t *testing.T, h *historyHarness) {
	e := settled(80, rec("req-r", "openai", "gpt-4o", 10, 20, 100, 0))
	h.call(t, "r1", 100, e)
	e.ID, e.Now = "r1", h.clock.Now()
	st, err := h.b.Finish(context.Background(), e)
	require.NoError(t, err)
	require.True(t, st.Repeat)
	rows, err := h.history(t, "acme", []string{"2026-01"})
	require.NoError(t, err)
	require.Len(t, rows, 1)
	assert.Equal(t, int64(1), rows[0].Calls, "booked once")
	assert.Equal(t, policy.Money(80), rows[0].Cost)
}

// testHistoryFirstKept: a second call booked under a request id that has a
// record (a worker sending another's x-request-id) books its history but
// leaves the first record as it was.
func testHistoryFirstKept(t *testing.T, h *historyHarness) {
	h.call(t, "k1", 100, settled(80, rec("req-k", "openai", "gpt-4o", 10, 20, 100, 0)))
	other := rec("req-k", "openai", "gpt-4o-mini", 1, 1, 50, 0)
	other.Client = "mallory"
	h.call(t, "k2", 50, settled(0, other))
	c, err := h.costRecord(t, "req-k")
	require.NoError(t, err)
	assert.Equal(t, "acme", c.Client)
	assert.Equal(t, policy.Money(80), c.Actual)
	assert.Equal(t, "gpt-4o", c.Model)
}

func testHistoryRelease(t *testing.T, h *historyHarness) {
	h.call(t, "x1", 100, limiter.Ending{Outcome: limiter.OutcomeReleased, Record: rec("req-x", "openai", "gpt-4o", 0, 0, 100, 0)})
	rows, err := h.history(t, "acme", []string{"2026-01"})
	require.NoError(t, err)
	assert.Empty(t, rows)
	c, err := h.costRecord(t, "req-x")
	require.NoError(t, err)
	assert.Equal(t, limiter.OutcomeReleased, c.Outcome)
	assert.Zero(t, c.Actual)
	assert.Equal(t, policy.Money(100), c.Estimate)
}

func testHistoryNone(t *testing.T, h *historyHarness) {
	h.call(t, "n1", 100, settled(80, nil))
	h.call(t, "n2", 100, settled(80, rec("", "openai", "gpt-4o", 1, 1, 100, 0)))
	rows, err := h.history(t, "acme", []string{"2026-01"})
	require.NoError(t, err)
	require.Len(t, rows, 1, "the record without a request id books history")
	assert.Equal(t, int64(1), rows[0].Calls)
	_, err = h.costRecord(t, "")
	assert.ErrorIs(t, err, limiter.ErrNoCostRecord)
}

func testHistoryUnknown(t *testing.T, h *historyHarness) {
	_, err := h.costRecord(t, "never")
	assert.ErrorIs(t, err, limiter.ErrNoCostRecord)
	rows, err := h.history(t, "nobody", []string{"2026-01"})
	require.NoError(t, err)
	assert.Empty(t, rows)
	// Finishing an unknown id books nothing.
	_, err = h.b.Finish(context.Background(), limiter.Ending{ID: "ghost", Outcome: limiter.OutcomeSettled, Actual: 1,
		Record: rec("req-g", "openai", "m", 0, 0, 0, 0), Now: h.clock.Now()})
	assert.ErrorIs(t, err, limiter.ErrUnknownReservation)
	_, err = h.costRecord(t, "req-g")
	assert.ErrorIs(t, err, limiter.ErrNoCostRecord)
}

func testHistoryInvalid(t *testing.T, h *historyHarness) {
	d, err := h.b.Reserve(context.Background(), limiter.Request{Hold: hold("i1", 10, budget("acme", 1000)), Now: h.clock.Now()})
	require.NoError(t, err)
	require.True(t, d.Allowed)
	for name, r := range map[string]*limiter.CallRecord{
		"no client":        {Month: "2026-01"},
		"no month":         {Client: "acme"},
		"negative tokens":  {Client: "acme", Month: "2026-01", InputTokens: -1},
		"spaced id":        {Client: "acme", Month: "2026-01", RequestID: "a b"},
		"estimate too big": {Client: "acme", Month: "2026-01", Estimate: limiter.MaxMoney},
	} {
		_, err := h.b.Finish(context.Background(), limiter.Ending{ID: "i1", Outcome: limiter.OutcomeSettled, Actual: 5, Record: r, Now: h.clock.Now()})
		assert.Error(t, err, name)
	}
	u, err := h.b.Usage(context.Background(), period, []limiter.Budget{budget("acme", 1000)}, h.clock.Now())
	require.NoError(t, err)
	assert.Equal(t, policy.Money(10), u.Budgets[0].Reserved, "still held")
}

func testHistoryBatch(t *testing.T, h *historyHarness) {
	at := h.clock.Now().UTC()
	ends := []limiter.RecordedEnd{
		{Record: *rec("req-b1", "openai", "gpt-4o", 3, 4, 10, 1), Outcome: limiter.OutcomeSettled, Spent: 9, At: at},
		{Record: *rec("req-b2", "openai", "gpt-4o", 1, 1, 10, 0), Outcome: limiter.OutcomeSettled, Spent: 11, At: at},
		{Record: *rec("req-b3", "openai", "gpt-4o", 0, 0, 10, 0), Outcome: limiter.OutcomeReleased, At: at},
	}
	for i, want := range []bool{true, false} {
		applied, err := h.b.Record(context.Background(), "batch-1", ends)
		require.NoError(t, err)
		assert.Equal(t, want, applied, "attempt %d", i)
	}
	rows, err := h.history(t, "acme", []string{"2026-01"})
	require.NoError(t, err)
	assert.Equal(t, []limiter.HistoryRow{{Month: "2026-01", Route: "openai", Model: "gpt-4o", Calls: 2, Cost: 20, InputTokens: 4, OutputTokens: 5, Saved: 1}}, rows)
	c, err := h.costRecord(t, "req-b3")
	require.NoError(t, err)
	assert.Equal(t, limiter.OutcomeReleased, c.Outcome)
	assert.Equal(t, at.Truncate(time.Microsecond), c.At)
	_, err = h.b.Record(context.Background(), "bad batch", ends)
	assert.Error(t, err)
}

func (h *historyHarness) sync(t *testing.T) {
	if h.cfg.Sync != nil {
		h.cfg.Sync(t, h.b)
	}
}

func (h *historyHarness) history(t *testing.T, client string, months []string) ([]limiter.HistoryRow, error) {
	h.sync(t)
	return h.b.History(context.Background(), client, months)
}

func (h *historyHarness) costRecord(t *testing.T, id string) (limiter.CostRecord, error) {
	h.sync(t)
	return h.b.CostRecord(context.Background(), id)
}
