package admission_test

import (
	"context"
	"net/http"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/tollgate/tollgate/admission"
	"github.com/tollgate/tollgate/cluster"
	"github.com/tollgate/tollgate/internal/fakeclock"
	"github.com/tollgate/tollgate/internal/redistest"
	"github.com/tollgate/tollgate/limiter"
	"github.com/tollgate/tollgate/limiter/memstore"
	"github.com/tollgate/tollgate/limiter/redisstore"
	"github.com/tollgate/tollgate/policy"
)

// watchPolicy: two named clients with budgets, of which alerts watch one
// (budget_clients: 1, in name order), and one pool.
const watchPolicy = settlePolicy + `  zeta: {tier: team, monthly_budget: "1000"}
alerts:
  budget_clients: 1
`

func newWatched(t *testing.T) (*admission.Service, admission.Store, *fakeclock.Clock, *prometheus.Registry) {
	t.Helper()
	clk := fakeclock.New(time.Date(2026, 12, 10, 0, 0, 0, 0, time.UTC))
	store, err := memstore.New(memstore.Config{Clock: clk})
	require.NoError(t, err)
	t.Cleanup(func() { require.NoError(t, store.Close()) })
	set, err := policy.Compile(policy.Source{Name: "watch.yaml", Data: []byte(watchPolicy)})
	require.NoError(t, err)
	reg := prometheus.NewRegistry()
	s, err := admission.New(admission.Config{Settlement: admission.SettleDeferred}, admission.Deps{
		Policies: admission.StaticPolicy{Set: set}, Store: store, Registerer: reg, Clock: clk})
	require.NoError(t, err)
	t.Cleanup(func() { require.NoError(t, s.Close()) })
	return s, store, clk, reg
}

// spend books d dollars of client's budget (of limit dollars) at once.
func spend(t *testing.T, store limiter.Store, client string, d, limit int64) {
	t.Helper()
	dec, err := store.Reserve(context.Background(), limiter.Request{Hold: &limiter.Hold{Commit: true, Period: "2026-12",
		Cost: policy.Money(d) * policy.NanosPerDollar, Budgets: []limiter.Budget{{Owner: client, Limit: policy.Money(limit) * policy.NanosPerDollar}}}})
	require.NoError(t, err)
	require.True(t, dec.Allowed)
}

// series reads one series of the registry: name{label=value}; ok is false
// when there is none.
func series(t *testing.T, reg *prometheus.Registry, name, label, value string) (float64, bool) {
	t.Helper()
	fams, err := reg.Gather()
	require.NoError(t, err)
	for _, f := range fams {
		if f.GetName() != name {
			continue
		}
		for _, m := range f.GetMetric() {
			for _, l := range m.GetLabel() {
				if l.GetName() == label && l.GetValue() == value {
					if m.GetCounter() != nil {
						return m.GetCounter().GetValue(), true
					}
					return m.GetGauge().GetValue(), true
				}
			}
		}
	}
	return 0, false
}

func alertNames(as []admission.Alert) []string {
	var out []string
	for _, a := range as {
		out = append(out, a.Name)
	}
	return out
}

// TestWatch: a refresh reads the pools and the watched budgets from the
// store, and the gauges, the alerts and the usage report's forecast follow;
// a scrape between refreshes reads nothing from the store.
func TestWatch(t *testing.T) {
	ctx := context.Background()
	s, store, clk, reg := newWatched(t)

	// One call whose stream ends without a response: an upstream error.
	v := s.Decide(ctx, chatRequest(`{"model":"gpt-4o","max_tokens":10,"messages":[{"role":"user","content":"hi"}]}`))
	require.True(t, v.Allowed, v.Reason)
	s.Follow(v.Reservation, v.Route, http.MethodPost).End(ctx)
	n, _ := series(t, reg, "tollgate_upstream_responses_total", "status_class", "none")
	assert.Equal(t, 1.0, n)

	// Drain the pool to 8% left; acme spends $10 of $100, zeta $900 of $1000.
	_, err := store.Reserve(ctx, limiter.Request{Takes: []limiter.Take{{Key: limiter.Key{Pool: "gpt"}, Limit: gptLimit, Cost: 92000}}})
	require.NoError(t, err)
	spend(t, store, "acme", 10, 100)
	spend(t, store, "zeta", 990, 1000)

	_, ok := series(t, reg, "tollgate_pool_remaining_ratio", "pool", "gpt")
	assert.False(t, ok, "nothing before the first refresh")
	require.NoError(t, s.Refresh(ctx))
	snap := s.Snapshot()
	require.Len(t, snap.Pools, 1)
	ratio, _ := series(t, reg, "tollgate_pool_remaining_ratio", "pool", "gpt")
	assert.InDelta(t, 0.08, ratio, 0.001)
	capacity, _ := series(t, reg, "tollgate_pool_capacity", "pool", "gpt")
	assert.Equal(t, 100000.0, capacity)
	used, _ := series(t, reg, "tollgate_budget_used_ratio", "client", "acme")
	assert.InDelta(t, 0.1, used, 1e-5)
	_, ok = series(t, reg, "tollgate_budget_used_ratio", "client", "zeta")
	assert.False(t, ok, "alerts.budget_clients: 1 watches acme only, though zeta is nearer its budget")
	assert.Equal(t, []string{admission.AlertPoolLow, admission.AlertUpstreamErrors}, alertNames(s.Alerts()))
	firing, _ := series(t, reg, "tollgate_alerts_firing", "alert", admission.AlertPoolLow)
	assert.Equal(t, 1.0, firing)

	// Changes in the store show at the next refresh, not at a scrape.
	spend(t, store, "acme", 10, 100)
	used, _ = series(t, reg, "tollgate_budget_used_ratio", "client", "acme")
	assert.InDelta(t, 0.1, used, 1e-5, "a scrape reads the last refresh")

	// An hour later acme has spent $20 at $10 an hour: at that rate its
	// $100 runs out 8 hours on, well before the month ends.
	clk.Advance(time.Hour)
	require.NoError(t, s.Refresh(ctx))
	assert.Equal(t, []string{admission.AlertBudgetForecast}, alertNames(s.Alerts()),
		"the pool refilled (1 a second), the upstream error is older than upstream_window; acme is at 20% but heading past its budget")
	rep, err := s.Usage(ctx, "acme")
	require.NoError(t, err)
	require.NotNil(t, rep.Forecast)
	assert.Equal(t, "1h0m0s", rep.Forecast.RateWindow)
	assert.Equal(t, "10", rep.Forecast.PerHour)
	assert.True(t, rep.Forecast.ExceedsBudget)
	require.NotNil(t, rep.Forecast.CrossesAt)
	assert.WithinDuration(t, clk.Now().Add(8*time.Hour), *rep.Forecast.CrossesAt, time.Second)
	// 21 days and 23 hours left at $10 an hour, on top of $20 (and the
	// first call's $0.00012, committed at its estimate).
	assert.Equal(t, "5290.00012", rep.Forecast.Spend)
	forecast, _ := series(t, reg, "tollgate_budget_forecast_ratio", "client", "acme")
	assert.InDelta(t, 52.9000012, forecast, 1e-9)

	rep, err = s.Usage(ctx, "zeta")
	require.NoError(t, err)
	assert.Nil(t, rep.Forecast, "a client the alerts do not watch has no forecast")
}

// TestWatchInAFleet: a fleet member's watch reads the shared store through
// its cluster store: spend and pool use booked in Redis by others show in
// its gauges and alerts, not just what this member leased.
func TestWatchInAFleet(t *testing.T) {
	ctx := context.Background()
	rs, err := redisstore.New(srv.Client(t), redisstore.Config{Prefix: redistest.Prefix(t)})
	require.NoError(t, err)
	member, err := cluster.NewStore(cluster.DefaultConfig(), rs, nil, prometheus.NewRegistry())
	require.NoError(t, err)
	t.Cleanup(func() { assert.NoError(t, member.Close()) })
	clk := fakeclock.New(time.Date(2026, 12, 10, 0, 0, 0, 0, time.UTC))
	set, err := policy.Compile(policy.Source{Name: "watch.yaml", Data: []byte(watchPolicy)})
	require.NoError(t, err)
	reg := prometheus.NewRegistry()
	s, err := admission.New(admission.Config{Settlement: admission.SettleDeferred}, admission.Deps{
		Policies: admission.StaticPolicy{Set: set}, Store: member, Registerer: reg, Clock: clk})
	require.NoError(t, err)
	t.Cleanup(func() { require.NoError(t, s.Close()) })

	// Another member's work, straight into Redis.
	_, err = rs.Reserve(ctx, limiter.Request{Takes: []limiter.Take{{Key: limiter.Key{Pool: "gpt"}, Limit: gptLimit, Cost: 95000}}})
	require.NoError(t, err)
	spend(t, rs, "acme", 97, 100)

	require.NoError(t, s.Refresh(ctx))
	ratio, _ := series(t, reg, "tollgate_pool_remaining_ratio", "pool", "gpt")
	assert.InDelta(t, 0.05, ratio, 0.001, "the fleet's pool (Redis refills 1 a second meanwhile)")
	used, _ := series(t, reg, "tollgate_budget_used_ratio", "client", "acme")
	assert.InDelta(t, 0.97, used, 1e-9)
	assert.Equal(t, []string{admission.AlertBudgetHigh, admission.AlertPoolLow}, alertNames(s.Alerts()))
}
