package authz_test

import (
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"regexp"
	"testing"
	"time"

	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"google.golang.org/genproto/googleapis/rpc/code"

	"github.com/tollgate/tollgate/admission"
	"github.com/tollgate/tollgate/authz"
	"github.com/tollgate/tollgate/internal/fakeclock"
	"github.com/tollgate/tollgate/limiter"
	"github.com/tollgate/tollgate/policy"
)

// budgetPolicy: one OpenAI route on a roomy request pool priced $0.0102 a
// call, so every call costs exactly callCost; budgets follow New York's
// calendar. defaults is extra lines for the defaults block (indented by two
// spaces).
//
//   - acme: $0.03 a month (two calls, not three).
//   - marketing and sales: $1 each, under parent acme.
//   - beta: no budget of its own, the tier's $1000; tier team allows two
//     calls in flight.
func budgetPolicy(defaults string) string {
	return fmt.Sprintf(`
defaults:
  unknown_client: deny
  timezone: America/New_York
%s
pools:
  calls:
    unit: request
    capacity: 1000
    refill_per_second: 1000
    price: "0.0102"
routes:
  openai:
    host: api.openai.com
    path_prefix: /v1/
    provider: openai
    pools: [calls]
    class: immediate # answers given at once; queue_test.go holds calls
tiers:
  team:
    priority: 10
    max_concurrent: 2
    monthly_budget: "1000"
clients:
  acme:
    tier: team
    monthly_budget: "0.03"
  marketing:
    tier: team
    parent: acme
    monthly_budget: "1"
  sales:
    tier: team
    parent: acme
    monthly_budget: "1"
  beta:
    tier: team
`, defaults)
}

// holdCost is what a deferred hold reserves for one call: the conservative
// strategy's 120% of callCost.
const holdCost policy.Money = callCost * 120 / 100

// callCost is what one call costs under budgetPolicy: $0.0102.
const callCost policy.Money = 10_200_000

// Budget limits in budgetPolicy.
const (
	acmeLimit   policy.Money = 30_000_000    // $0.03
	childLimit  policy.Money = 1_000_000_000 // $1
	tierLimit   policy.Money = 1000 * policy.NanosPerDollar
	midNovember              = "2026-11-15T12:00:00Z"
)

// reservationID is what a Decider hands out: 128 random bits in hex.
var reservationID = regexp.MustCompile(`^[0-9a-f]{32}$`)

// budgetDecider is a Decider whose budget periods and store share one fake
// clock.
type budgetDecider struct {
	*Decider
	set   *policy.Set
	reg   *prometheus.Registry
	clk   *fakeclock.Clock
	store admission.Store
}

func newBudgetDecider(tb testing.TB, yaml string, start string, s admission.Settlement) *budgetDecider {
	tb.Helper()
	at, err := time.Parse(time.RFC3339Nano, start)
	require.NoError(tb, err)
	clk := fakeclock.New(at)
	store := newMemStore(tb, clk)
	set := compilePolicy(tb, yaml)
	reg := prometheus.NewRegistry()
	return &budgetDecider{
		Decider: newTestDecider(tb, set, store, reg, nil, withClock(clk), withSettlement(s)),
		set:     set, reg: reg, clk: clk, store: store,
	}
}

// call decides one small OpenAI call by client.
func (d *budgetDecider) call(client string) authz.Answer {
	return d.Decide(context.Background(), openAIRequest(client, chatBody("gpt-4o-mini", 16, "hi")))
}

// usage reads client's chain in the period the clock is in.
func (d *budgetDecider) usage(tb testing.TB, client string) limiter.Usage {
	tb.Helper()
	return d.usageIn(tb, client, d.set.Defaults.Period(d.clk.Now()))
}

func (d *budgetDecider) usageIn(tb testing.TB, client, period string) limiter.Usage {
	tb.Helper()
	c, ok := d.set.Clients[client]
	require.True(tb, ok, "client %q", client)
	u, err := d.store.Usage(context.Background(), period, admission.Chain(c), time.Time{})
	require.NoError(tb, err)
	return u
}

// TestChain: a client's budgets, its own (or its tier's) first, then each
// parent's.
func TestChain(t *testing.T) {
	set := compilePolicy(t, budgetPolicy(""))
	tests := map[string]struct {
		client string
		want   []limiter.Budget
	}{
		"own budget, no parent": {client: "acme", want: []limiter.Budget{{Owner: "acme", Limit: acmeLimit}}},
		"tier budget":           {client: "beta", want: []limiter.Budget{{Owner: "beta", Limit: tierLimit}}},
		"child then parent": {client: "marketing", want: []limiter.Budget{
			{Owner: "marketing", Limit: childLimit}, {Owner: "acme", Limit: acmeLimit},
		}},
	}
	for name, tc := range tests {
		t.Run(name, func(t *testing.T) {
			assert.Equal(t, tc.want, admission.Chain(set.Clients[tc.client]))
		})
	}
	t.Run("an unbudgeted level is tracked, not capped", func(t *testing.T) {
		set := compilePolicy(t, `
routes:
  any: {host: api.openai.com, path_prefix: /, pools: [p]}
pools:
  p: {unit: request, capacity: 1, refill_per_second: 1}
tiers:
  free: {priority: 0, max_concurrent: 1}
clients:
  root: {tier: free}
  leaf: {tier: free, parent: root, monthly_budget: "5"}
`)
		assert.Equal(t, []limiter.Budget{{Owner: "leaf", Limit: 5 * policy.NanosPerDollar}, {Owner: "root", Limit: limiter.Unlimited}},
			admission.Chain(set.Clients["leaf"]))
	})
}

// TestBudgetImmediateCommitsAlongChain: in immediate settlement an admitted
// call's estimate is spent at once, on the client and on every parent, and
// nothing is left to settle.
func TestBudgetImmediateCommitsAlongChain(t *testing.T) {
	d := newBudgetDecider(t, budgetPolicy(""), midNovember, admission.SettleImmediate)
	require.Equal(t, admission.SettleImmediate, d.Settlement())

	v := d.call("marketing")
	require.True(t, v.Allowed, v.Message)
	assert.Equal(t, admission.OutcomeAllowed, v.Outcome)
	assert.Empty(t, v.Reservation, "nothing to settle")
	assert.Equal(t, callCost, v.Estimate.Cost)
	// The tightest budget of the chain is the parent's $0.03.
	require.NotNil(t, v.Budget)
	assert.Equal(t, limiter.BudgetState{Owner: "acme", Limit: acmeLimit, Spent: callCost}, *v.Budget)

	assert.Equal(t, limiter.Usage{Budgets: []limiter.BudgetState{
		{Owner: "marketing", Limit: childLimit, Spent: callCost},
		{Owner: "acme", Limit: acmeLimit, Spent: callCost},
	}}, d.usage(t, "marketing"))
	// The parent's own view: its budget carries the child's spend.
	assert.Equal(t, limiter.Usage{Budgets: []limiter.BudgetState{{Owner: "acme", Limit: acmeLimit, Spent: callCost}}},
		d.usage(t, "acme"))
	// The period is November in New York.
	assert.Equal(t, "2026-11", d.set.Defaults.Period(d.clk.Now()))
	assert.Equal(t, callCost, d.usageIn(t, "marketing", "2026-11").Budgets[0].Spent)
	assert.Zero(t, d.usageIn(t, "marketing", "2026-12").Budgets[0].Spent)
}

// TestBudgetDeferredHoldsUnderReservation: in deferred settlement an
// admitted call holds its estimate along the chain and a slot under a fresh
// reservation id until the call is settled.
func TestBudgetDeferredHoldsUnderReservation(t *testing.T) {
	d := newBudgetDecider(t, budgetPolicy(""), midNovember, admission.SettleDeferred)
	ctx := context.Background()

	v1 := d.call("marketing")
	require.True(t, v1.Allowed, v1.Message)
	assert.Regexp(t, reservationID, v1.Reservation)
	v2 := d.call("marketing")
	require.True(t, v2.Allowed, v2.Message)
	assert.Regexp(t, reservationID, v2.Reservation)
	assert.NotEqual(t, v1.Reservation, v2.Reservation)

	assert.Equal(t, limiter.Usage{InFlight: 2, Budgets: []limiter.BudgetState{
		{Owner: "marketing", Limit: childLimit, Reserved: 2 * holdCost},
		{Owner: "acme", Limit: acmeLimit, Reserved: 2 * holdCost},
	}}, d.usage(t, "marketing"))

	// Settling charges the actual cost along the chain and frees the slot.
	st, err := d.store.Settle(ctx, v1.Reservation, 1_200_000)
	require.NoError(t, err)
	assert.Equal(t, limiter.Settlement{ID: v1.Reservation, Outcome: limiter.OutcomeSettled, Estimated: holdCost, Spent: 1_200_000}, st)
	assert.Equal(t, limiter.Usage{InFlight: 1, Budgets: []limiter.BudgetState{
		{Owner: "marketing", Limit: childLimit, Spent: 1_200_000, Reserved: holdCost},
		{Owner: "acme", Limit: acmeLimit, Spent: 1_200_000, Reserved: holdCost},
	}}, d.usage(t, "marketing"))
}

// TestReservationHeaderOverGRPC: the gRPC OK response carries the
// reservation id upstream (on the request, for ext_proc), never to the
// caller; immediate settlement sends none.
func TestReservationHeaderOverGRPC(t *testing.T) {
	tests := map[string]struct {
		settle     admission.Settlement
		wantHeader bool
	}{
		"deferred":  {settle: admission.SettleDeferred, wantHeader: true},
		"immediate": {settle: admission.SettleImmediate},
	}
	for name, tc := range tests {
		t.Run(name, func(t *testing.T) {
			clk := fakeclock.New(epoch)
			store := newMemStore(t, clk)
			ts := startServer(t, serverOpts{clk: clk, store: store, config: func(c *authz.Config) { c.Settlement = tc.settle }})
			require.Equal(t, tc.settle, ts.srv.Service().Settlement())

			resp, err := ts.auth.Check(context.Background(), chatCheck("team-a", chatBody("gpt-4", 10, "hi")))
			require.NoError(t, err)
			require.Equal(t, int32(code.Code_OK), resp.GetStatus().GetCode())
			ok := resp.GetOkResponse()
			require.NotNil(t, ok)
			assert.NotContains(t, responseHeaders(t, resp), authz.HeaderReservation, "the caller never sees the id")

			up := ok.GetHeaders()
			require.NotEmpty(t, up)
			last := up[len(up)-1]
			assert.Equal(t, authz.HeaderRoute, last.GetHeader().GetKey(), "the route goes upstream, for ext_proc")
			assert.Equal(t, "openai", last.GetHeader().GetValue())
			if !tc.wantHeader {
				require.Len(t, up, 1)
				assert.Equal(t, []string{authz.HeaderReservation}, ok.GetHeadersToRemove(), "a caller's own reservation header is dropped")
				return
			}
			require.Len(t, up, 2)
			assert.Equal(t, authz.HeaderReservation, up[0].GetHeader().GetKey())
			id := up[0].GetHeader().GetValue()
			assert.Regexp(t, reservationID, id)
			assert.Equal(t, corev3.HeaderValueOption_OVERWRITE_IF_EXISTS_OR_ADD, up[0].GetAppendAction(),
				"a caller's own x-tollgate-reservation is replaced, not passed along")

			// The id names a live reservation: releasing it works once.
			st, err := store.Release(context.Background(), id)
			require.NoError(t, err)
			assert.Equal(t, limiter.OutcomeReleased, st.Outcome)
			assert.False(t, st.Repeat)
		})
	}
}

// TestBudgetExhausted: a client whose month's budget cannot cover a call
// gets 429 budget_exceeded in OpenAI's own insufficient_quota shape. Waiting
// helps only when the month is about to end, so Retry-After is sent only
// within a day of the month's end — in the policy's time zone.
func TestBudgetExhausted(t *testing.T) {
	tests := map[string]struct {
		now        string
		retryAfter time.Duration
		header     string // Retry-After; "": none
	}{
		"mid-month: no Retry-After":         {now: midNovember},
		"a day and a second before the end": {now: "2026-11-30T04:59:59Z"},
		"exactly a day before the end":      {now: "2026-11-30T05:00:00Z", retryAfter: 24 * time.Hour, header: "86400"},
		// 03:30Z is 22:30 on 30 November in New York (EST, UTC-5): the month
		// ends at 05:00Z, 90 minutes on.
		"still November in New York":        {now: "2026-12-01T03:30:00Z", retryAfter: 90 * time.Minute, header: "5400"},
		"half a second left rounds up to 1": {now: "2026-12-01T04:59:59.5Z", retryAfter: 500 * time.Millisecond, header: "1"},
	}
	for name, tc := range tests {
		t.Run(name, func(t *testing.T) {
			d := newBudgetDecider(t, budgetPolicy(""), tc.now, admission.SettleImmediate)
			require.Equal(t, "2026-11", d.set.Defaults.Period(d.clk.Now()))
			for range 2 {
				v := d.call("acme")
				require.True(t, v.Allowed, v.Message)
			}
			before := d.usage(t, "acme")
			require.Equal(t, 2*callCost, before.Budgets[0].Spent)

			v := d.call("acme")
			assert.Equal(t, gist{Outcome: admission.OutcomeDenied, Reason: string(limiter.ReasonBudgetExceeded), Status: http.StatusTooManyRequests,
				Provider: policy.ProviderOpenAI, Route: "openai", Tier: "team", Pool: "calls", RetryAfter: tc.retryAfter}, gistOf(v))
			const msg = `Monthly budget of "acme" is exhausted: $0.0204 spent and $0 held of $0.03; this call needs about $0.0102.`
			assert.Equal(t, msg, v.Message)
			require.NotNil(t, v.Budget)
			assert.Equal(t, limiter.BudgetState{Owner: "acme", Limit: acmeLimit, Spent: 2 * callCost, Short: true}, *v.Budget)
			assert.Empty(t, v.Reservation)

			hs := headerMap(t, authz.ResponseHeaders(&v))
			assert.Equal(t, "budget_exceeded", hs["x-tollgate-reason"])
			if tc.header == "" {
				assert.NotContains(t, hs, "retry-after")
			} else {
				assert.Equal(t, tc.header, hs["retry-after"])
			}

			ct, body := authz.DenialBody(&v)
			assert.Equal(t, "application/json", ct)
			want, err := json.Marshal(map[string]any{"error": map[string]any{
				"type": "budget_exceeded", "code": "insufficient_quota", "param": nil, "message": msg,
			}})
			require.NoError(t, err)
			assert.JSONEq(t, string(want), string(body))

			assert.Equal(t, before, d.usage(t, "acme"), "a denied call holds and spends nothing")
			assert.Equal(t, 2.0, metricValue(t, d.reg, decisionsMetric, decisionLabels("calls", "team", admission.OutcomeAllowed, "")))
			assert.Equal(t, 1.0, metricValue(t, d.reg, decisionsMetric, decisionLabels("calls", "team", admission.OutcomeDenied, "budget_exceeded")))
			assert.Equal(t, 0.0, metricValue(t, d.reg, storeErrorsMetric, nil))
			requireLint(t, d.reg)
		})
	}
}

// TestBudgetNewMonthInPolicyZone: the budget resets when the month turns in
// the policy's time zone, not in UTC.
func TestBudgetNewMonthInPolicyZone(t *testing.T) {
	d := newBudgetDecider(t, budgetPolicy(""), "2026-12-01T03:30:00Z", admission.SettleImmediate)
	for range 2 {
		require.True(t, d.call("acme").Allowed)
	}
	v := d.call("acme")
	require.False(t, v.Allowed)
	assert.Equal(t, 90*time.Minute, v.RetryAfter)

	d.clk.Advance(90*time.Minute - time.Nanosecond)
	require.False(t, d.call("acme").Allowed, "a nanosecond before midnight in New York")

	d.clk.Advance(time.Nanosecond) // 05:00Z: December in New York
	v = d.call("acme")
	require.True(t, v.Allowed, v.Message)
	assert.Equal(t, 2*callCost, d.usageIn(t, "acme", "2026-11").Budgets[0].Spent, "November keeps its spend")
	assert.Equal(t, callCost, d.usageIn(t, "acme", "2026-12").Budgets[0].Spent)
}

// TestBudgetParentBlocksChild: when a parent's budget is spent, its
// children are denied even though their own budgets have room; clients
// outside the family are not.
func TestBudgetParentBlocksChild(t *testing.T) {
	for _, settle := range []admission.Settlement{admission.SettleImmediate, admission.SettleDeferred} {
		t.Run(settle.String(), func(t *testing.T) {
			d := newBudgetDecider(t, budgetPolicy(""), midNovember, settle)
			ctx := context.Background()
			for range 2 {
				v := d.call("marketing")
				require.True(t, v.Allowed, v.Message)
			}
			before := d.usage(t, "marketing")

			v := d.call("marketing")
			require.False(t, v.Allowed)
			assert.Equal(t, string(limiter.ReasonBudgetExceeded), v.Reason)
			assert.Equal(t, http.StatusTooManyRequests, v.Status)
			require.NotNil(t, v.Budget)
			assert.Equal(t, "acme", v.Budget.Owner, "the verdict names the budget that denied")
			assert.True(t, v.Budget.Short)
			assert.Contains(t, v.Message, `Monthly budget of "acme" is exhausted`)
			assert.Equal(t, before, d.usage(t, "marketing"), "a denied call holds and spends nothing")

			// The store says which level of the chain blocked: the parent.
			c := d.set.Clients["marketing"]
			dec, err := d.store.Reserve(ctx, limiter.Request{Hold: &limiter.Hold{
				Period: d.set.Defaults.Period(d.clk.Now()), Cost: callCost, Budgets: admission.Chain(c), Commit: true,
			}})
			require.NoError(t, err)
			require.False(t, dec.Allowed)
			assert.Equal(t, 1, dec.BudgetBlocking)
			require.Len(t, dec.Budgets, 2)
			assert.False(t, dec.Budgets[0].Short, "the child's own budget has room")
			assert.Greater(t, dec.Budgets[0].Remaining(), callCost)
			assert.True(t, dec.Budgets[1].Short)

			// A sibling and the parent itself are blocked too; an outsider is not.
			for _, client := range []string{"sales", "acme"} {
				v := d.call(client)
				assert.False(t, v.Allowed, client)
				assert.Equal(t, "acme", v.Budget.Owner, client)
			}
			assert.True(t, d.call("beta").Allowed)

			assert.Equal(t, 3.0, metricValue(t, d.reg, decisionsMetric, decisionLabels("calls", "team", admission.OutcomeDenied, "budget_exceeded")))
			requireLint(t, d.reg)
		})
	}
}

// TestConcurrencyDeferred: tier team allows two calls in flight; the third
// is denied with Retry-After 1 until one of the two ends, and a lapsed
// reservation frees its slot too.
func TestConcurrencyDeferred(t *testing.T) {
	d := newBudgetDecider(t, budgetPolicy(""), midNovember, admission.SettleDeferred)
	ctx := context.Background()

	v1, v2 := d.call("beta"), d.call("beta")
	require.True(t, v1.Allowed, v1.Message)
	require.True(t, v2.Allowed, v2.Message)
	before := d.usage(t, "beta")
	require.Equal(t, int64(2), before.InFlight)

	v := d.call("beta")
	assert.Equal(t, gist{Outcome: admission.OutcomeDenied, Reason: string(limiter.ReasonConcurrency), Status: http.StatusTooManyRequests,
		Provider: policy.ProviderOpenAI, Route: "openai", Tier: "team", Pool: "calls", RetryAfter: time.Second}, gistOf(v))
	assert.Equal(t, `Client "beta" has 2 calls in flight, the most its tier team allows.`, v.Message)
	assert.Empty(t, v.Reservation)
	hs := headerMap(t, authz.ResponseHeaders(&v))
	assert.Equal(t, "1", hs["retry-after"])
	assert.Equal(t, "concurrency", hs["x-tollgate-reason"])
	_, body := authz.DenialBody(&v)
	var oa struct{ Error map[string]any }
	require.NoError(t, json.Unmarshal(body, &oa), string(body))
	assert.Equal(t, "requests", oa.Error["type"])
	assert.Equal(t, "rate_limit_exceeded", oa.Error["code"])
	assert.Equal(t, before, d.usage(t, "beta"), "a denied call holds nothing")

	// Another client of the same tier has slots of its own.
	require.True(t, d.call("marketing").Allowed)

	// Ending one call frees its slot for the next.
	st, err := d.store.Release(ctx, v1.Reservation)
	require.NoError(t, err)
	assert.Equal(t, limiter.Settlement{ID: v1.Reservation, Outcome: limiter.OutcomeReleased, Estimated: holdCost}, st)
	v3 := d.call("beta")
	require.True(t, v3.Allowed, v3.Message)
	require.False(t, d.call("beta").Allowed, "two in flight again")

	// Calls never settled lapse after the policy's reservation TTL and are
	// committed at their estimate, freeing their slots.
	d.clk.Advance(d.set.Defaults.ReservationTTL)
	v4 := d.call("beta")
	require.True(t, v4.Allowed, v4.Message)
	assert.Equal(t, limiter.Usage{InFlight: 1, Budgets: []limiter.BudgetState{
		{Owner: "beta", Limit: tierLimit, Spent: 2 * holdCost, Reserved: holdCost},
	}}, d.usage(t, "beta"))

	assert.Equal(t, 2.0, metricValue(t, d.reg, decisionsMetric, decisionLabels("calls", "team", admission.OutcomeDenied, "concurrency")))
	requireLint(t, d.reg)
}

// TestConcurrencyImmediateIgnored: immediate settlement never learns when a
// call ends, so it cannot and does not cap calls in flight.
func TestConcurrencyImmediateIgnored(t *testing.T) {
	d := newBudgetDecider(t, budgetPolicy(""), midNovember, admission.SettleImmediate)
	for i := range 5 {
		v := d.call("beta")
		require.True(t, v.Allowed, "call %d: %s", i, v.Message)
		assert.Empty(t, v.Reservation)
	}
	assert.Equal(t, limiter.Usage{Budgets: []limiter.BudgetState{{Owner: "beta", Limit: tierLimit, Spent: 5 * callCost}}},
		d.usage(t, "beta"))
	assert.Zero(t, metricValue(t, d.reg, decisionsMetric, decisionLabels("calls", "team", admission.OutcomeDenied, "concurrency")))
}

// TestStoreUnavailable: a store failure follows the policy's
// store_unavailable (fail open is counted as such, and as a store error,
// and its spend journaled to be booked when the store answers);
// a check the caller cancelled is neither let through nor blamed on the
// store, whatever the policy says.
func TestStoreUnavailable(t *testing.T) {
	down := failingStore{err: errStoreDown}
	tests := map[string]struct {
		defaults        string
		store           admission.Store // nil: a working memory store
		cancelled       bool
		want            gist
		wantStoreErrors float64
	}{
		"store down, policy fails open": {
			defaults: "  store_unavailable: allow", store: down,
			want:            gist{Allowed: true, Outcome: admission.OutcomeFailOpen, Reason: admission.ReasonStoreError, Provider: policy.ProviderOpenAI, Route: "openai", Tier: "team", Pool: "calls"},
			wantStoreErrors: 1,
		},
		"store down, policy fails closed (the default)": {
			store:           down,
			want:            gist{Outcome: admission.OutcomeError, Reason: admission.ReasonStoreError, Status: http.StatusServiceUnavailable, Provider: policy.ProviderOpenAI, Route: "openai", Tier: "team", Pool: "calls"},
			wantStoreErrors: 1,
		},
		"cancelled check, fail-open policy": {
			defaults: "  store_unavailable: allow", cancelled: true,
			want: gist{Outcome: admission.OutcomeError, Reason: admission.ReasonCancelled, Status: http.StatusServiceUnavailable, Provider: policy.ProviderOpenAI, Route: "openai", Tier: "team", Pool: "calls"},
		},
		"cancelled check while the store is down, fail-open policy": {
			defaults: "  store_unavailable: allow", store: down, cancelled: true,
			want: gist{Outcome: admission.OutcomeError, Reason: admission.ReasonCancelled, Status: http.StatusServiceUnavailable, Provider: policy.ProviderOpenAI, Route: "openai", Tier: "team", Pool: "calls"},
		},
	}
	for name, tc := range tests {
		t.Run(name, func(t *testing.T) {
			at, err := time.Parse(time.RFC3339, midNovember)
			require.NoError(t, err)
			clk := fakeclock.New(at)
			store := tc.store
			if store == nil {
				store = newMemStore(t, clk)
			}
			reg := prometheus.NewRegistry()
			d := newTestDecider(t, compilePolicy(t, budgetPolicy(tc.defaults)), store, reg, nil,
				withClock(clk), withSettlement(admission.SettleDeferred))
			ctx, cancel := context.WithCancel(context.Background())
			if tc.cancelled {
				cancel()
			}
			defer cancel()

			v := d.Decide(ctx, openAIRequest("beta", chatBody("gpt-4o-mini", 16, "hi")))
			assert.Equal(t, tc.want, gistOf(v))
			if tc.want.Outcome == admission.OutcomeFailOpen {
				assert.NotEmpty(t, v.Reservation, "a call let through fail open is settled as any other: its spend is journaled")
				periods, _ := d.FailOpenUnbooked()
				assert.Equal(t, 1, periods, "its hold on beta's budget waits for the store")
			} else {
				assert.Empty(t, v.Reservation, "nothing was held, so there is nothing to settle")
			}
			if !v.Allowed {
				assert.NotEmpty(t, v.Message)
			}
			assert.Equal(t, tc.wantStoreErrors, metricValue(t, reg, storeErrorsMetric, nil))
			assert.Equal(t, 1.0, metricValue(t, reg, decisionsMetric, decisionLabels("calls", "team", tc.want.Outcome, tc.want.Reason)))
			requireLint(t, reg)
		})
	}
}

// TestGlobalShadowCoversBudgets: with defaults.shadow every denial is only
// reported, budget and concurrency ones too; the store took nothing, so the
// passed call is not charged.
func TestGlobalShadowCoversBudgets(t *testing.T) {
	d := newBudgetDecider(t, budgetPolicy("  shadow: true"), midNovember, admission.SettleImmediate)
	for range 2 {
		require.True(t, d.call("acme").Allowed)
	}
	v := d.call("acme")
	assert.True(t, v.Allowed, "shadow mode never denies")
	assert.Equal(t, admission.OutcomeShadowDenied, v.Outcome)
	assert.Equal(t, string(limiter.ReasonBudgetExceeded), v.Reason)
	assert.Contains(t, v.ShadowDecision, "reason=budget_exceeded")
	assert.Zero(t, v.Status)
	assert.Equal(t, 2*callCost, d.usage(t, "acme").Budgets[0].Spent, "the shadow-passed call is not charged")
	assert.Equal(t, 1.0, metricValue(t, d.reg, decisionsMetric, decisionLabels("calls", "team", admission.OutcomeShadowDenied, "budget_exceeded")))
}

// TestInlineExpiryIsCounted: lapsed holds the store commits while deciding
// a later call count in tollgate_authz_reservations_expired_total, as those
// the server's sweep commits do.
func TestInlineExpiryIsCounted(t *testing.T) {
	d := newBudgetDecider(t, budgetPolicy("  reservation_ttl: 1s"), midNovember, admission.SettleDeferred)
	require.True(t, d.call("marketing").Allowed)
	d.clk.Advance(time.Second)
	require.True(t, d.call("marketing").Allowed)
	assert.Equal(t, 1.0, metricValue(t, d.reg, expiredMetric, nil))
	assert.Equal(t, holdCost, d.usage(t, "marketing").Budgets[0].Spent, "the lapsed hold is committed at its estimate")
}
