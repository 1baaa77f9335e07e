package authz_test

import (
	"context"
	"encoding/json"
	"net/http"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/tollgate/tollgate/admission"
	"github.com/tollgate/tollgate/authz"
	"github.com/tollgate/tollgate/internal/fakeclock"
	"github.com/tollgate/tollgate/limiter"
	"github.com/tollgate/tollgate/policy"
)

// TestAdminAlerts: GET /admin/alerts, over HTTP on the API listener with
// the token, evaluates the alerts against what the store holds now: quiet
// on a fresh store, then the pool below 10% and acme past 95% of its
// budget, with the policy's thresholds; the gauges follow.
func TestAdminAlerts(t *testing.T) {
	clk := fakeclock.New(epoch)
	store := newMemStore(t, clk)
	ts := startServer(t, serverOpts{policy: apiPolicy("  unknown_client: deny"), clk: clk, store: store,
		config: func(c *authz.Config) { c.WatchEvery = 0 }}) // refreshed by the GET alone
	get := func() authz.AlertsReply {
		t.Helper()
		sc, body := ts.get(t, "/admin/alerts")
		require.Equal(t, http.StatusOK, sc, body)
		var rep authz.AlertsReply
		require.NoError(t, json.Unmarshal([]byte(body), &rep), body)
		assert.Empty(t, rep.StaleError)
		return rep
	}

	rep := get()
	assert.Empty(t, rep.Alerts)
	assert.Equal(t, authz.AlertThresholds{PoolBelowPercent: 10, BudgetAbovePercent: 95, QueueAbove: 1000, UpstreamErrorsPercent: 10,
		UpstreamWindow: "10m0s", StarvationAlert: "4m0s", BudgetClients: 50, ForecastWindow: "1h0m0s"}, rep.Thresholds)

	ctx := context.Background()
	_, err := store.Reserve(ctx, limiter.Request{Takes: []limiter.Take{{Key: limiter.Key{Pool: "calls"},
		Limit: limiter.Limit{Capacity: 1000, Refill: 1000}, Cost: 950}}})
	require.NoError(t, err)
	set := ts.srv.Service().Policy()
	_, err = store.Reserve(ctx, limiter.Request{Hold: &limiter.Hold{Commit: true, Period: set.Defaults.Period(clk.Now()),
		Cost: 96 * policy.NanosPerDollar / 100, Budgets: admission.Chain(set.Clients["acme"])}})
	require.NoError(t, err)

	rep = get()
	require.Len(t, rep.Alerts, 2, "%+v", rep.Alerts)
	budget, pool := rep.Alerts[0], rep.Alerts[1]
	assert.Equal(t, admission.AlertBudgetHigh, budget.Name)
	assert.Equal(t, map[string]string{"client": "acme"}, budget.Labels)
	assert.InDelta(t, 0.96, budget.Value, 1e-9)
	assert.Equal(t, 0.95, budget.Threshold)
	assert.Equal(t, admission.AlertPoolLow, pool.Name)
	assert.Equal(t, "warning", pool.Severity)
	assert.Equal(t, map[string]string{"pool": "calls"}, pool.Labels)
	assert.InDelta(t, 0.05, pool.Value, 1e-9)
	assert.Equal(t, 0.10, pool.Threshold)
	assert.True(t, pool.Since.Equal(epoch), "since the refresh that first saw it: %v", pool.Since)

	assert.InDelta(t, 0.05, metricValue(t, ts.reg, "tollgate_pool_remaining_ratio", map[string]string{"pool": "calls"}), 1e-9)
	assert.InDelta(t, 0.96, metricValue(t, ts.reg, "tollgate_budget_used_ratio", map[string]string{"client": "acme"}), 1e-9)
	assert.Equal(t, 1.0, metricValue(t, ts.reg, "tollgate_alerts_firing", map[string]string{"alert": admission.AlertPoolLow}))

	// The thresholds are the policy's.
	ts2 := startServer(t, serverOpts{policy: apiPolicy("  unknown_client: deny") + "alerts:\n  pool_below: 4%\n  budget_above: 97%\n",
		clk: clk, store: store, config: func(c *authz.Config) { c.WatchEvery = 0 }})
	sc, body := ts2.get(t, "/admin/alerts")
	require.Equal(t, http.StatusOK, sc, body)
	assert.JSONEq(t, `[]`, string(mustField(t, body, "alerts")), "5% left is above 4%, 96% used below 97%")
}

func mustField(t *testing.T, body, field string) json.RawMessage {
	t.Helper()
	var m map[string]json.RawMessage
	require.NoError(t, json.Unmarshal([]byte(body), &m), body)
	return m[field]
}

// TestWatchCadence: the server's loop refreshes the gauges every
// WatchEvery without anyone asking.
func TestWatchCadence(t *testing.T) {
	ts := startServer(t, serverOpts{policy: apiPolicy("  unknown_client: deny"),
		config: func(c *authz.Config) { c.WatchEvery = 10 * time.Millisecond }})
	require.Eventually(t, func() bool {
		fams, err := ts.reg.Gather()
		require.NoError(t, err)
		for _, f := range fams {
			if f.GetName() == "tollgate_pool_capacity" {
				return len(f.GetMetric()) == 1 && f.GetMetric()[0].GetGauge().GetValue() == 1000
			}
		}
		return false
	}, 10*time.Second, 10*time.Millisecond)
}
