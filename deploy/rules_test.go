// Package deploy_test checks the deployment files that are not Envoy's:
// the Prometheus alerting rules and configs, with promtool (Debian package
// prometheus; `make test` installs it), and the Kubernetes manifests
// (k8s_test.go).
package deploy_test

import (
	"os"
	"os/exec"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"gopkg.in/yaml.v3"

	"github.com/tollgate/tollgate/admission"
	"github.com/tollgate/tollgate/policy"
)

func promtool(t *testing.T, args ...string) string {
	t.Helper()
	bin, err := exec.LookPath("promtool")
	require.NoError(t, err, "promtool not found: run `make test` (it installs the Debian package prometheus) or apt-get install prometheus")
	out, err := exec.Command(bin, args...).CombinedOutput()
	require.NoError(t, err, "promtool %v:\n%s", args, out)
	return string(out)
}

// TestAlertRules: the rules parse, and fire (or stay quiet) as their unit
// tests expect, on series shaped like Tollgate's metrics.
func TestAlertRules(t *testing.T) {
	require.Contains(t, promtool(t, "check", "rules", "alerts.yml"), "SUCCESS")
	require.Contains(t, promtool(t, "test", "rules", "alerts_test.yml"), "SUCCESS")
}

// TestPrometheusConfigs: the docker-compose Prometheus configs parse
// (syntax only: their rule file paths are inside the container).
func TestPrometheusConfigs(t *testing.T) {
	for _, f := range []string{"prometheus.yml", "prometheus.fleet.yml"} {
		require.Contains(t, promtool(t, "check", "config", "--syntax-only", f), "SUCCESS", f)
	}
}

// TestAlertRulesAgreeWithPolicy: the rules of the alerts GET /admin/alerts
// also evaluates carry the names admission gives them and, as numbers, the
// policy's default thresholds (alerts: and queue.starvation_alert), so an
// operator sees the same alert whichever way they look.
func TestAlertRulesAgreeWithPolicy(t *testing.T) {
	raw, err := os.ReadFile("alerts.yml")
	require.NoError(t, err)
	var doc struct {
		Groups []struct {
			Rules []struct {
				Alert string `yaml:"alert"`
				Expr  string `yaml:"expr"`
			} `yaml:"rules"`
		} `yaml:"groups"`
	}
	require.NoError(t, yaml.Unmarshal(raw, &doc))
	exprs := map[string]string{}
	for _, g := range doc.Groups {
		for _, r := range g.Rules {
			exprs[r.Alert] = strings.Join(strings.Fields(r.Expr), " ")
		}
	}
	d := policy.DefaultAlerts()
	pct := func(p int64) string { return strconv.FormatFloat(float64(p)/100, 'f', 2, 64) }
	window := "[" + strconv.FormatInt(int64(d.UpstreamWindow/time.Minute), 10) + "m]" // whole minutes
	want := map[string][]string{
		admission.AlertPoolLow:         {"tollgate_pool_remaining_ratio", "< " + pct(d.PoolBelow)},
		admission.AlertBudgetHigh:      {"tollgate_budget_used_ratio", "> " + pct(d.BudgetAbove)},
		admission.AlertBudgetForecast:  {"tollgate_budget_forecast_ratio) > 1", "tollgate_budget_used_ratio) < 1"},
		admission.AlertQueueBacklog:    {"sum by (instance) (tollgate_queue_depth) > " + strconv.FormatInt(d.QueueAbove, 10)},
		admission.AlertQueueStarvation: {"tollgate_queue_starvation_alerts_total"}, // counted at the policy's threshold
		admission.AlertUpstreamErrors: {`status_class=~"5xx|none"}` + window, "tollgate_upstream_responses_total" + window,
			"> " + pct(d.UpstreamErrorsAbove)},
	}
	for name, parts := range want {
		expr, ok := exprs[name]
		if !assert.True(t, ok, "alerts.yml has no rule %s", name) {
			continue
		}
		for _, p := range parts {
			assert.Contains(t, expr, p, "%s: the rule must agree with policy.DefaultAlerts", name)
		}
	}
	q := policy.DefaultQueue()
	assert.Less(t, q.StarvationAlert, q.LongestWait(), "the starvation alert must be reachable with the shipped limits")
}
