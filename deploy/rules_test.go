// Package deploy_test checks the deployment files that are not Envoy's:
// the Prometheus alerting rules and configs, with promtool (Debian package
// prometheus; `make test` installs it), and the Kubernetes manifests
// (k8s_test.go).
package deploy_test

import (
	"os/exec"
	"testing"

	"github.com/stretchr/testify/require"
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
