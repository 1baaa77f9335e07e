package policy_test

import (
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/tollgate/tollgate/policy"
)

func TestAlertsCompile(t *testing.T) {
	assert.Equal(t, policy.DefaultAlerts(), mustCompile(t, withPool()).Alerts, "no alerts: block: the defaults")
	set := mustCompile(t, withPool(
		"alerts:",
		"  pool_below: 20%",
		"  budget_above: 80",
		"  queue_above: 50",
		"  upstream_errors_above: 5%",
		"  upstream_window: 5m",
		"  budget_clients: 3",
		"  forecast_window: 30m",
	))
	assert.Equal(t, policy.Alerts{PoolBelow: 20, BudgetAbove: 80, QueueAbove: 50, UpstreamErrorsAbove: 5,
		UpstreamWindow: 5 * time.Minute, BudgetClients: 3, ForecastWindow: 30 * time.Minute}, set.Alerts)
	assert.Equal(t, policy.DefaultAlerts(), policy.Alerts{}.WithDefaults())
	assert.Equal(t, set.Alerts, set.Alerts.WithDefaults())
}

func TestAlertsRefusals(t *testing.T) {
	tests := map[string]struct {
		lines []string
		want  wantErr
	}{
		"percent too high": {[]string{"alerts:", "  pool_below: 120%"}, wantErr{line: 7, path: "alerts.pool_below", msg: "whole percent"}},
		"not a percent":    {[]string{"alerts:", "  budget_above: most"}, wantErr{line: 7, path: "alerts.budget_above", msg: "whole percent"}},
		"queue zero":       {[]string{"alerts:", "  queue_above: 0"}, wantErr{line: 7, path: "alerts.queue_above", msg: "between 1 and"}},
		"clients too many": {[]string{"alerts:", "  budget_clients: 5000"}, wantErr{line: 7, path: "alerts.budget_clients", msg: "between 0 and 1000"}},
		"window too short": {[]string{"alerts:", "  forecast_window: 1m"}, wantErr{line: 7, path: "alerts.forecast_window", msg: "between 5m0s"}},
		"bad window":       {[]string{"alerts:", "  upstream_window: soon"}, wantErr{line: 7, path: "alerts.upstream_window", msg: "duration"}},
		"misspelt key":     {[]string{"alerts:", "  pool_bellow: 5%"}, wantErr{line: 7, path: "alerts", msg: `did you mean "pool_below"`}},
	}
	for name, tc := range tests {
		t.Run(name, func(t *testing.T) {
			_, err := compile(withPool(tc.lines...))
			tc.want.file = "x.yaml"
			requireHasError(t, policyErrors(t, err), tc.want)
		})
	}
	_, err := policy.Compile(policy.Source{Name: "a.yaml", Data: withPool("alerts:", "  queue_above: 10")},
		policy.Source{Name: "b.yaml", Data: lines("alerts:", "  queue_above: 20")})
	requireHasError(t, policyErrors(t, err), wantErr{file: "b.yaml", line: 2, path: "alerts.queue_above", msg: "already set at a.yaml:7"})
}

// TestStarvationAlertReachable: the default starvation alert is shorter
// than the longest hold of the default classes, and a policy whose alert
// no class reaches is warned about.
func TestStarvationAlertReachable(t *testing.T) {
	q := policy.DefaultQueue()
	require.Less(t, q.StarvationAlert, q.LongestWait(), "the default alert must be able to fire")
	assert.Less(t, q.LongestWait(), 310*time.Second, "Envoy's ext_authz timeout in envoy/ is longer than every hold")
	assert.NotContains(t, joinWarnings(mustCompile(t, withPool()).Warnings()), "starvation_alert")
	set := mustCompile(t, withPool("queue:", "  starvation_alert: 10m"))
	assert.Contains(t, joinWarnings(set.Warnings()), "queue.starvation_alert: 10m0s, but no class holds a call that long (the longest max_wait is 5m0s)")
}

func joinWarnings(ws []string) string {
	out := ""
	for _, w := range ws {
		out += w + "\n"
	}
	return out
}
