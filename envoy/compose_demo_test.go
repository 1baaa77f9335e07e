package envoy_test

import (
	"encoding/json"
	"net"
	"net/url"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"sigs.k8s.io/yaml"

	"github.com/tollgate/tollgate/policy"
)

// statsPort is the port of envoy-stats.yaml's listener.
func statsPort(t *testing.T) int {
	t.Helper()
	b, err := loadBootstrap(readFile(t, statsPath))
	require.NoError(t, err)
	for _, l := range b.GetStaticResources().GetListeners() {
		if l.GetName() == statsListener {
			return int(l.GetAddress().GetSocketAddress().GetPortValue())
		}
	}
	require.FailNow(t, "no stats listener in "+statsPath)
	return 0
}

// listenerPort is the port of the sidecar's listener name.
func listenerPort(t *testing.T, name string) int {
	t.Helper()
	for _, l := range sidecar(t).GetStaticResources().GetListeners() {
		if l.GetName() == name {
			return int(l.GetAddress().GetSocketAddress().GetPortValue())
		}
	}
	require.FailNow(t, "no listener "+name+" in "+sidecarPath)
	return 0
}

// TestComposeDemo: the pieces docker-compose.yaml adds around the sidecar
// fit it: Tollgate runs the mounted policy directory, the worker sits in
// the pod's namespace with its SDKs' base URLs at Envoy's listeners and
// sends as clients the policy knows, the worker pins the SDK version the
// end-to-end test drives, Prometheus scrapes Envoy's stats listener, and
// Grafana's provisioning finds its data source and dashboards.
func TestComposeDemo(t *testing.T) {
	c := loadCompose(t)
	tollgate, worker, prom, grafana := c.Services["tollgate"], c.Services["worker"], c.Services["prometheus"], c.Services["grafana"]

	var set *policy.Set
	t.Run("tollgate runs the mounted policy", func(t *testing.T) {
		dirs := flagValues(tollgate.Command, "policy")
		require.Len(t, dirs, 1)
		src := mountSource(t, tollgate, dirs[0])
		var err error
		set, err = policy.Load(src)
		require.NoError(t, err, "the mounted policy %s", src)
	})

	t.Run("the worker is in the pod and calls through Envoy", func(t *testing.T) {
		assert.Equal(t, "service:tollgate", worker.NetworkMode, "the worker shares the pod's namespace")
		assert.Empty(t, worker.Ports)
		for env, listener := range map[string]string{"OPENAI_BASE_URL": "openai", "ANTHROPIC_BASE_URL": "anthropic", "CLOUDFLARE_BASE_URL": "cloudflare"} {
			u, err := url.Parse(worker.Environment[env])
			require.NoError(t, err, env)
			assert.Equal(t, "http", u.Scheme, env)
			assert.Equal(t, "127.0.0.1", u.Hostname(), "%s: Envoy's listeners are on the pod's loopback", env)
			assert.Equal(t, strconv.Itoa(listenerPort(t, listener)), u.Port(), "%s: the %s listener", env, listener)
		}
		assert.True(t, strings.HasSuffix(worker.Environment["OPENAI_BASE_URL"], "/v1"), "the OpenAI SDK's base URL ends in /v1")
		assert.True(t, strings.HasSuffix(worker.Environment["CLOUDFLARE_BASE_URL"], "/client/v4"), "the Cloudflare SDKs' base URL ends in /client/v4")
		require.NotNil(t, set)
		for _, client := range strings.Split(worker.Environment["WORKER_CLIENTS"], ",") {
			assert.Contains(t, set.Clients, client, "WORKER_CLIENTS names a client of the mounted policy")
		}
	})

	t.Run("the worker pins the SDK the end-to-end test drives", func(t *testing.T) {
		require.NotNil(t, worker.Build)
		dir := filepath.Join(deployDir, worker.Build.Context)
		for _, f := range []string{"Dockerfile", "worker.mjs", "package.json"} {
			_, err := os.Stat(filepath.Join(dir, f))
			assert.NoError(t, err)
		}
		type pkg struct {
			Dependencies map[string]string `json:"dependencies"`
		}
		var w, e pkg
		require.NoError(t, json.Unmarshal(readFile(t, filepath.Join(dir, "package.json")), &w))
		require.NoError(t, json.Unmarshal(readFile(t, "../e2e/package.json"), &e))
		require.NotEmpty(t, w.Dependencies["openai"])
		assert.Equal(t, e.Dependencies["openai"], w.Dependencies["openai"])
	})

	t.Run("prometheus scrapes envoy's stats listener", func(t *testing.T) {
		var cfg struct {
			ScrapeConfigs []struct {
				JobName       string `json:"job_name"`
				MetricsPath   string `json:"metrics_path"`
				StaticConfigs []struct {
					Targets []string `json:"targets"`
				} `json:"static_configs"`
			} `json:"scrape_configs"`
		}
		require.NoError(t, yaml.Unmarshal(readFile(t, mountSource(t, prom, promConfigInImage)), &cfg))
		found := false
		for _, sc := range cfg.ScrapeConfigs {
			if sc.JobName != "envoy" {
				continue
			}
			found = true
			assert.Equal(t, "/stats/prometheus", sc.MetricsPath)
			require.Len(t, sc.StaticConfigs, 1)
			assert.Equal(t, []string{net.JoinHostPort("tollgate", strconv.Itoa(statsPort(t)))}, sc.StaticConfigs[0].Targets)
		}
		assert.True(t, found, "an envoy job")
	})

	t.Run("grafana is provisioned", func(t *testing.T) {
		prov := mountSource(t, grafana, "/etc/grafana/provisioning")
		var loose struct {
			Datasources []struct {
				UID  string `json:"uid"`
				Type string `json:"type"`
				URL  string `json:"url"`
			} `json:"datasources"`
		}
		require.NoError(t, yaml.Unmarshal(readFile(t, filepath.Join(prov, "datasources/prometheus.yaml")), &loose))
		require.Len(t, loose.Datasources, 1)
		ds := loose.Datasources[0]
		assert.Equal(t, "prometheus", ds.Type)
		u, err := url.Parse(ds.URL)
		require.NoError(t, err)
		assert.Contains(t, c.Services, u.Hostname(), "the data source is a compose service")
		assert.Equal(t, "9090", u.Port())

		var provider struct {
			Providers []struct {
				Options struct {
					Path string `json:"path"`
				} `json:"options"`
			} `json:"providers"`
		}
		require.NoError(t, yaml.Unmarshal(readFile(t, filepath.Join(prov, "dashboards/tollgate.yaml")), &provider))
		require.Len(t, provider.Providers, 1)
		dashDir := mountSource(t, grafana, provider.Providers[0].Options.Path)
		dashboards, err := filepath.Glob(filepath.Join(dashDir, "*.json"))
		require.NoError(t, err)
		require.NotEmpty(t, dashboards)
		for _, path := range dashboards {
			var d struct {
				Panels []struct {
					Title      string `json:"title"`
					Datasource struct {
						UID string `json:"uid"`
					} `json:"datasource"`
					Targets []struct {
						Expr string `json:"expr"`
					} `json:"targets"`
				} `json:"panels"`
			}
			require.NoError(t, json.Unmarshal(readFile(t, path), &d), path)
			require.NotEmpty(t, d.Panels, path)
			for _, p := range d.Panels {
				assert.Equal(t, ds.UID, p.Datasource.UID, "%s: panel %q uses the provisioned data source", path, p.Title)
				assert.NotEmpty(t, p.Targets, "%s: panel %q has a query", path, p.Title)
			}
		}
		// Metric names in the queries are checked against serve's live
		// registry by TestDashboardMetrics in cmd/tollgate.
	})
}
