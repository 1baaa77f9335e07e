package envoy_test

import (
	"net"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"sigs.k8s.io/yaml"
)

const (
	deployDir   = "../deploy"
	composePath = deployDir + "/docker-compose.yaml"

	envoyConfigInImage = "/etc/envoy/envoy.yaml"
	promConfigInImage  = "/etc/prometheus/prometheus.yml"
)

// The slice of the compose schema the checks need.
type composeFile struct {
	Services map[string]composeService `json:"services"`
}

type composeService struct {
	Image string `json:"image"`
	Build *struct {
		Context    string `json:"context"`
		Dockerfile string `json:"dockerfile"`
	} `json:"build"`
	Command     []string `json:"command"`
	Ports       []string `json:"ports"`
	Volumes     []string `json:"volumes"`
	NetworkMode string   `json:"network_mode"`
}

type prometheusConfig struct {
	RuleFiles     []string `json:"rule_files"`
	ScrapeConfigs []struct {
		JobName       string `json:"job_name"`
		StaticConfigs []struct {
			Targets []string `json:"targets"`
		} `json:"static_configs"`
	} `json:"scrape_configs"`
}

func loadCompose(t *testing.T) composeFile {
	t.Helper()
	var c composeFile
	require.NoError(t, yaml.Unmarshal(readFile(t, composePath), &c))
	for _, name := range []string{"tollgate", "envoy", "prometheus"} {
		require.Contains(t, c.Services, name, "service missing from %s", composePath)
	}
	return c
}

// mountSource returns the host side of the volume mounted at target,
// resolved against deploy/ as compose does.
func mountSource(t *testing.T, s composeService, target string) string {
	t.Helper()
	for _, v := range s.Volumes {
		parts := strings.Split(v, ":")
		if len(parts) >= 2 && parts[1] == target {
			return filepath.Join(deployDir, parts[0])
		}
	}
	require.FailNow(t, "nothing mounted", "at %s; volumes %v", target, s.Volumes)
	return ""
}

// flagAddr returns host and port of a --name=host:port flag in command.
func flagAddr(t *testing.T, command []string, name string) (string, int) {
	t.Helper()
	prefix := "--" + name + "="
	for _, arg := range command {
		if addr, ok := strings.CutPrefix(arg, prefix); ok {
			host, port, err := net.SplitHostPort(addr)
			require.NoError(t, err, "%s", arg)
			p, err := strconv.ParseUint(port, 10, 16)
			require.NoError(t, err, "%s", arg)
			return host, int(p)
		}
	}
	require.FailNow(t, "flag not set", "%s in %v", prefix, command)
	return "", 0
}

// publishedPorts returns the container-side ports of compose "ports"
// entries: "80", "8080:80", "127.0.0.1:8080:80", "80/tcp", "8000-8002:8000-8002".
func publishedPorts(t *testing.T, specs []string) []int {
	t.Helper()
	var out []int
	for _, spec := range specs {
		container := spec[strings.LastIndex(spec, ":")+1:]
		container, _, _ = strings.Cut(container, "/")
		lo, hi, isRange := strings.Cut(container, "-")
		if !isRange {
			hi = lo
		}
		from, err := strconv.ParseUint(lo, 10, 16)
		require.NoError(t, err, "port spec %q", spec)
		to, err := strconv.ParseUint(hi, 10, 16)
		require.NoError(t, err, "port spec %q", spec)
		for p := from; p <= to; p++ {
			out = append(out, int(p))
		}
	}
	return out
}

func TestComposeMatchesSidecar(t *testing.T) {
	compose := loadCompose(t)
	tollgate, envoy, prom := compose.Services["tollgate"], compose.Services["envoy"], compose.Services["prometheus"]
	b := sidecar(t)

	t.Run("envoy runs sidecar.yaml", func(t *testing.T) {
		src := mountSource(t, envoy, envoyConfigInImage)
		_, err := os.Stat(src)
		require.NoError(t, err, "mounted config must exist relative to deploy/")
		want, err := filepath.Abs(sidecarPath)
		require.NoError(t, err)
		got, err := filepath.Abs(src)
		require.NoError(t, err)
		assert.Equal(t, want, got, "compose must mount the sidecar.yaml these tests validate")

		i := slices.Index(envoy.Command, "-c")
		require.NotEqual(t, -1, i, "envoy command lacks -c: %v", envoy.Command)
		require.Less(t, i+1, len(envoy.Command))
		assert.Equal(t, envoyConfigInImage, envoy.Command[i+1], "envoy must load the mounted file")
	})

	t.Run("envoy shares tollgate's network namespace", func(t *testing.T) {
		assert.Equal(t, "service:tollgate", envoy.NetworkMode, "sidecar.yaml reaches Tollgate on 127.0.0.1")
		assert.Empty(t, envoy.Ports, "a container in another's namespace cannot publish ports")
	})

	t.Run("tollgate builds from the repo Dockerfile", func(t *testing.T) {
		require.NotNil(t, tollgate.Build)
		_, err := os.Stat(filepath.Join(deployDir, tollgate.Build.Context, tollgate.Build.Dockerfile))
		assert.NoError(t, err)
	})

	grpcHost, grpcPort := flagAddr(t, tollgate.Command, "grpc-addr")
	httpHost, httpPort := flagAddr(t, tollgate.Command, "http-addr")

	t.Run("tollgate gRPC port matches the sidecar's tollgate cluster", func(t *testing.T) {
		c, ok := clustersByName(t, b)[tollgateName]
		require.True(t, ok)
		sa := socketAddress(t, c)
		assert.Equal(t, int(sa.GetPortValue()), grpcPort)
		ip := net.ParseIP(grpcHost)
		assert.True(t, ip != nil && (ip.IsUnspecified() || ip.String() == sa.GetAddress()),
			"--grpc-addr host %q does not accept Envoy's connection to %s", grpcHost, sa.GetAddress())
	})

	published := publishedPorts(t, tollgate.Ports)

	t.Run("every envoy listener is published", func(t *testing.T) {
		for _, l := range b.GetStaticResources().GetListeners() {
			sa := l.GetAddress().GetSocketAddress()
			assert.Contains(t, published, int(sa.GetPortValue()), "listener %s", l.GetName())
			assert.Equal(t, "0.0.0.0", sa.GetAddress(), "listener %s must not bind loopback to be published", l.GetName())
		}
	})

	t.Run("tollgate's HTTP port is published", func(t *testing.T) {
		assert.Contains(t, published, httpPort)
	})

	t.Run("every published port has something behind it", func(t *testing.T) {
		// Docker forwards to the container's interface, so only a socket
		// bound to all interfaces receives published traffic.
		reachable := map[int]bool{}
		for _, l := range b.GetStaticResources().GetListeners() {
			if sa := l.GetAddress().GetSocketAddress(); sa.GetAddress() == "0.0.0.0" {
				reachable[int(sa.GetPortValue())] = true
			}
		}
		if admin := b.GetAdmin().GetAddress().GetSocketAddress(); admin.GetAddress() == "0.0.0.0" {
			reachable[int(admin.GetPortValue())] = true
		}
		if grpcHost == "0.0.0.0" || grpcHost == "" {
			reachable[grpcPort] = true
		}
		if httpHost == "0.0.0.0" || httpHost == "" {
			reachable[httpPort] = true
		}
		for _, p := range published {
			assert.True(t, reachable[p], "port %d is published but nothing listens on it outside loopback", p)
		}
	})

	t.Run("prometheus scrapes tollgate's HTTP port", func(t *testing.T) {
		require.Contains(t, []string{"0.0.0.0", ""}, httpHost, "--http-addr must accept connections from prometheus")

		src := mountSource(t, prom, promConfigInImage)
		var cfg prometheusConfig
		require.NoError(t, yaml.Unmarshal(readFile(t, src), &cfg))
		var targets []string
		for _, sc := range cfg.ScrapeConfigs {
			for _, st := range sc.StaticConfigs {
				targets = append(targets, st.Targets...)
			}
		}
		assert.Contains(t, targets, net.JoinHostPort("tollgate", strconv.Itoa(httpPort)))

		// Every rule file it loads is mounted from deploy/, where
		// deploy/rules_test.go checks it with promtool.
		require.NotEmpty(t, cfg.RuleFiles, "the alert rules are loaded")
		for _, rf := range cfg.RuleFiles {
			src := mountSource(t, prom, rf)
			_, err := os.Stat(src)
			assert.NoError(t, err, "rule file %s is mounted from %s", rf, src)
		}
	})
}
