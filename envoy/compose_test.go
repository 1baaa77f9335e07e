package envoy_test

import (
	"fmt"
	"net"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"testing"

	bootstrapv3 "github.com/envoyproxy/go-control-plane/envoy/config/bootstrap/v3"
	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	listenerv3 "github.com/envoyproxy/go-control-plane/envoy/config/listener/v3"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"google.golang.org/protobuf/proto"
	"sigs.k8s.io/yaml"
)

const (
	deployDir   = "../deploy"
	composePath = deployDir + "/docker-compose.yaml"
	fleetPath   = deployDir + "/docker-compose.fleet.yaml"

	envoyConfigInImage = "/etc/envoy/envoy.yaml"
	statsConfigInImage = "/etc/envoy/stats.yaml"
	statsPath          = deployDir + "/envoy-stats.yaml"
	promConfigInImage  = "/etc/prometheus/prometheus.yml"

	// The fake provider every provider cluster points at in the demo.
	fakeAPIHost = "fakeapi"
	fakeAPIPort = 8090
	// statsListener is envoy-stats.yaml's listener: Envoy's metrics only.
	statsListener = "envoy_stats"
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
		Target     string `json:"target"`
	} `json:"build"`
	Command     []string          `json:"command"`
	Ports       []string          `json:"ports"`
	Volumes     []string          `json:"volumes"`
	NetworkMode string            `json:"network_mode"`
	Environment map[string]string `json:"environment"`
	User        string            `json:"user"`
	Entrypoint  []string          `json:"entrypoint"`
	CapAdd      []string          `json:"cap_add"`
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
	for _, name := range []string{"tollgate", "envoy", "prometheus", "fakeapi", "worker", "grafana"} {
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

	t.Run("envoy runs sidecar.yaml", func(t *testing.T) {
		src := mountSource(t, envoy, envoyConfigInImage)
		_, err := os.Stat(src)
		require.NoError(t, err, "mounted config must exist relative to deploy/")
		want, err := filepath.Abs(sidecarPath)
		require.NoError(t, err)
		got, err := filepath.Abs(src)
		require.NoError(t, err)
		assert.Equal(t, want, got, "compose must mount the sidecar.yaml these tests validate")
	})

	// What Envoy really runs in the demo: sidecar.yaml with its listeners
	// rewritten to 0.0.0.0 by the command's sed expression.
	b := composeEnvoy(t, envoy)

	t.Run("the demo rewrite opens the listeners, sends the providers to fakeapi, adds the stats listener, and nothing else", func(t *testing.T) {
		for _, l := range sidecar(t).GetStaticResources().GetListeners() {
			assert.Equal(t, "127.0.0.1", l.GetAddress().GetSocketAddress().GetAddress(), "sidecar.yaml listener %s binds loopback", l.GetName())
		}
		assert.Equal(t, "127.0.0.1", b.GetAdmin().GetAddress().GetSocketAddress().GetAddress(), "the admin API stays on loopback")
		assert.True(t, proto.Equal(demoSidecar(t), b), "the rewrite changes only the listener addresses and the provider clusters")
	})

	t.Run("the stats listener reaches only the admin API's metrics", func(t *testing.T) {
		checkStatsListener(t, b)
	})

	t.Run("fakeapi is built from the repo Dockerfile and listens where the clusters point", func(t *testing.T) {
		checkFakeAPI(t, compose.Services["fakeapi"])
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
			if l.GetName() == statsListener {
				continue // for Prometheus on the compose network, not the host
			}
			sa := l.GetAddress().GetSocketAddress()
			assert.Contains(t, published, int(sa.GetPortValue()), "listener %s", l.GetName())
			assert.Equal(t, "0.0.0.0", sa.GetAddress(), "listener %s must not bind loopback to be published", l.GetName())
		}
	})

	t.Run("tollgate's HTTP port is published", func(t *testing.T) {
		assert.Contains(t, published, httpPort)
	})

	t.Run("tollgate's API is on loopback and never published", func(t *testing.T) {
		apiHost, apiPort := flagAddr(t, tollgate.Command, "api-addr")
		assert.Equal(t, "127.0.0.1", apiHost)
		assert.NotContains(t, published, apiPort)
	})

	t.Run("tollgate's ports are published on the host's loopback only", func(t *testing.T) {
		for _, spec := range tollgate.Ports {
			assert.True(t, strings.HasPrefix(spec, "127.0.0.1:"), "port %q would be open to the host's network", spec)
		}
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

// demoRewrite is the envoy services' command in the compose files: sed
// expressions applied to the mounted sidecar.yaml, then Envoy on the
// result with envoy-stats.yaml merged in by --config-yaml.
var (
	demoRewrite = regexp.MustCompile(`^sed -E((?: -e '[^']*')+) (\S+) > (\S+) && exec envoy -c (\S+) --config-yaml "\$\(cat (\S+)\)"$`)
	sedArg      = regexp.MustCompile(` -e '([^']*)'`)
	sedSubst    = regexp.MustCompile(`^s/([^/]*)/([^/]*)/$`)
	sedDelete   = regexp.MustCompile(`^/([^/]*)/,/([^/]*)/d$`)
)

// sedCommand is one of the two kinds of sed command the compose files use:
// s/re/repl/ (first match on each line) and /start/,/end/d.
type sedCommand struct {
	re         *regexp.Regexp
	repl       string
	start, end *regexp.Regexp
	inRange    bool
}

// runSed applies sed -E commands to data line by line as sed does (Go's
// RE2 reads the POSIX EREs used here the same way): on each line the
// commands run in order, a deleted line ends its cycle, and a range's end
// is looked for from the line after its start.
func runSed(t *testing.T, exprs []string, data []byte) []byte {
	t.Helper()
	var cmds []*sedCommand
	for _, e := range exprs {
		if m := sedSubst.FindStringSubmatch(e); m != nil {
			repl := regexp.MustCompile(`\\([0-9])`).ReplaceAllString(m[2], "$${$1}")
			cmds = append(cmds, &sedCommand{re: regexp.MustCompile(m[1]), repl: repl})
			continue
		}
		m := sedDelete.FindStringSubmatch(e)
		require.NotNil(t, m, "sed expression %q is neither s/// nor /a/,/b/d", e)
		cmds = append(cmds, &sedCommand{start: regexp.MustCompile(m[1]), end: regexp.MustCompile(m[2])})
	}
	var out []string
	for _, line := range strings.Split(string(data), "\n") {
		deleted := false
		for _, c := range cmds {
			if c.re != nil {
				if loc := c.re.FindStringSubmatchIndex(line); loc != nil {
					var dst []byte
					dst = c.re.ExpandString(dst, c.repl, line, loc)
					line = line[:loc[0]] + string(dst) + line[loc[1]:]
				}
				continue
			}
			switch {
			case c.inRange:
				if c.end.MatchString(line) {
					c.inRange = false
				}
				deleted = true
			case c.start.MatchString(line):
				c.inRange, deleted = true, true
			}
			if deleted {
				break
			}
		}
		if !deleted {
			out = append(out, line)
		}
	}
	return []byte(strings.Join(out, "\n"))
}

// composeEnvoy returns the bootstrap an envoy service of the compose files
// runs: its command must be ["/bin/sh", "-c", <demoRewrite>]; the test
// applies the same sed expressions to sidecar.yaml, merges envoy-stats.yaml
// into it as Envoy merges --config-yaml (proto merge: repeated fields
// appended), then validates the result deeply.
func composeEnvoy(t *testing.T, s composeService) *bootstrapv3.Bootstrap {
	t.Helper()
	return composeEnvoyFrom(t, s, sidecarPath)
}

// composeEnvoyFrom is composeEnvoy for a service that mounts config (an
// Envoy config of this directory) in place of sidecar.yaml.
func composeEnvoyFrom(t *testing.T, s composeService, config string) *bootstrapv3.Bootstrap {
	t.Helper()
	require.Len(t, s.Command, 3, "envoy command: %v", s.Command)
	require.Equal(t, []string{"/bin/sh", "-c"}, s.Command[:2])
	m := demoRewrite.FindStringSubmatch(s.Command[2])
	require.NotNil(t, m, "envoy script %q is not the demo rewrite", s.Command[2])
	var exprs []string
	for _, e := range sedArg.FindAllStringSubmatch(m[1], -1) {
		exprs = append(exprs, e[1])
	}
	in, out, runs, stats := m[2], m[3], m[4], m[5]
	assert.Equal(t, envoyConfigInImage, in, "the rewrite reads the mounted config")
	assert.Equal(t, out, runs, "envoy runs the rewritten file")
	assert.Equal(t, statsConfigInImage, stats, "envoy merges the mounted envoy-stats.yaml")
	abs := func(p string) string {
		a, err := filepath.Abs(p)
		require.NoError(t, err)
		return a
	}
	assert.Equal(t, abs(statsPath), abs(mountSource(t, s, statsConfigInImage)))

	assert.Equal(t, abs(config), abs(mountSource(t, s, envoyConfigInImage)), "the config mounted is %s", config)
	data := runSed(t, exprs, readFile(t, config))
	b, err := loadBootstrap(data)
	require.NoError(t, err)
	extra, err := loadBootstrap(readFile(t, statsPath))
	require.NoError(t, err)
	proto.Merge(b, extra)
	require.NoError(t, validateDeep(b, "bootstrap"))
	return b
}

// demoSidecar is what the demo's Envoy must run, built from sidecar.yaml
// in Go: every listener on 0.0.0.0, every provider cluster at fakeapi in
// plain HTTP, and envoy-stats.yaml merged in.
func demoSidecar(t *testing.T) *bootstrapv3.Bootstrap {
	t.Helper()
	want := sidecar(t)
	for _, l := range want.GetStaticResources().GetListeners() {
		l.GetAddress().GetSocketAddress().Address = "0.0.0.0"
	}
	for _, c := range want.GetStaticResources().GetClusters() {
		if c.GetName() == tollgateName {
			continue
		}
		sa := socketAddress(t, c)
		sa.Address = fakeAPIHost
		sa.PortSpecifier = &corev3.SocketAddress_PortValue{PortValue: fakeAPIPort}
		c.TransportSocket = nil
	}
	extra, err := loadBootstrap(readFile(t, statsPath))
	require.NoError(t, err)
	proto.Merge(want, extra)
	return want
}

// checkStatsListener: envoy-stats.yaml adds one listener, which routes
// only GET /stats/prometheus and GET /ready, to one cluster: the admin
// address.
func checkStatsListener(t *testing.T, b *bootstrapv3.Bootstrap) {
	t.Helper()
	var stats *listenerv3.Listener
	for _, l := range b.GetStaticResources().GetListeners() {
		if l.GetName() == statsListener {
			stats = l
		}
	}
	require.NotNil(t, stats, "the %s listener", statsListener)
	hcm := connectionManager(t, stats)
	for _, f := range hcm.GetHttpFilters() {
		assert.Equal(t, routerFilter, f.GetName(), "no filter but the router")
	}
	admin := b.GetAdmin().GetAddress().GetSocketAddress()
	vhs := hcm.GetRouteConfig().GetVirtualHosts()
	require.Len(t, vhs, 1)
	var paths []string
	for _, r := range vhs[0].GetRoutes() {
		paths = append(paths, r.GetMatch().GetPath())
		require.Len(t, r.GetMatch().GetHeaders(), 1, "route %s", r.GetMatch().GetPath())
		assert.Equal(t, ":method", r.GetMatch().GetHeaders()[0].GetName())
		assert.Equal(t, "GET", r.GetMatch().GetHeaders()[0].GetStringMatch().GetExact())
		c, ok := clustersByName(t, b)[r.GetRoute().GetCluster()]
		require.True(t, ok)
		sa := socketAddress(t, c)
		assert.Equal(t, admin.GetAddress(), sa.GetAddress(), "the route leads to the admin API")
		assert.Equal(t, admin.GetPortValue(), sa.GetPortValue())
	}
	assert.Equal(t, []string{"/stats/prometheus", "/ready"}, paths, "exact paths, nothing else of the admin API")
}

// checkFakeAPI: the fakeapi service is the Dockerfile's fakeapi stage,
// listening on the port the rewritten clusters use.
func checkFakeAPI(t *testing.T, s composeService) {
	t.Helper()
	require.NotNil(t, s.Build)
	assert.Equal(t, "fakeapi", s.Build.Target)
	df := string(readFile(t, filepath.Join(deployDir, s.Build.Context, s.Build.Dockerfile)))
	i := strings.Index(df, " AS fakeapi\n")
	require.NotEqual(t, -1, i, "the Dockerfile has a fakeapi stage")
	stage := df[i:]
	if j := strings.Index(stage, "\nFROM "); j >= 0 {
		stage = stage[:j]
	}
	assert.Contains(t, stage, fmt.Sprintf(`"--addr", "0.0.0.0:%d"`, fakeAPIPort))
	assert.Empty(t, s.Ports, "fakeapi is for the compose network only")
}

// isTollgate: the service runs the Tollgate image (the Dockerfile's
// default target).
func isTollgate(s composeService) bool {
	return s.Build != nil && s.Build.Dockerfile == "deploy/Dockerfile" && s.Build.Target == ""
}

// mergeCompose layers override on base as `docker compose -f base -f
// override` does for the keys used here: a command and a network mode
// replace, ports add up, volumes and environment merge by target and name.
func mergeCompose(base, override composeFile) composeFile {
	out := composeFile{Services: map[string]composeService{}}
	for name, s := range base.Services {
		out.Services[name] = s
	}
	for name, o := range override.Services {
		s, ok := out.Services[name]
		if !ok {
			out.Services[name] = o
			continue
		}
		if o.Image != "" {
			s.Image = o.Image
		}
		if o.Build != nil {
			s.Build = o.Build
		}
		if o.Command != nil {
			s.Command = o.Command
		}
		if o.NetworkMode != "" {
			s.NetworkMode = o.NetworkMode
		}
		if o.User != "" {
			s.User = o.User
		}
		if o.Entrypoint != nil {
			s.Entrypoint = o.Entrypoint
		}
		s.CapAdd = append(slices.Clone(s.CapAdd), o.CapAdd...)
		s.Ports = append(slices.Clone(s.Ports), o.Ports...)
		vols := map[string]string{}
		var order []string
		for _, v := range append(slices.Clone(s.Volumes), o.Volumes...) {
			target := strings.Split(v, ":")[1]
			if _, seen := vols[target]; !seen {
				order = append(order, target)
			}
			vols[target] = v
		}
		s.Volumes = nil
		for _, target := range order {
			s.Volumes = append(s.Volumes, vols[target])
		}
		env := map[string]string{}
		for k, v := range s.Environment {
			env[k] = v
		}
		for k, v := range o.Environment {
			env[k] = v
		}
		s.Environment = env
		out.Services[name] = s
	}
	return out
}

// flagValues returns the values of every --name=value in command.
func flagValues(command []string, name string) []string {
	var out []string
	for _, arg := range command {
		if v, ok := strings.CutPrefix(arg, "--"+name+"="); ok {
			out = append(out, v)
		}
	}
	return out
}

// TestComposeFleet: the fleet override makes two pods of the demo members
// of one fleet on one Redis: each Tollgate runs --cluster on the redis
// service, joins the other by its service name on the gossip port, has a
// name of its own and the key from the environment; each has its own
// Envoy in its namespace on sidecar.yaml; no host port is published twice;
// Prometheus scrapes both.
func TestComposeFleet(t *testing.T) {
	var override composeFile
	require.NoError(t, yaml.Unmarshal(readFile(t, fleetPath), &override))
	c := mergeCompose(loadCompose(t), override)
	b := sidecar(t)
	sidecarPort := int(socketAddress(t, clustersByName(t, b)[tollgateName]).GetPortValue())

	var members []string
	for name, s := range c.Services {
		if isTollgate(s) {
			members = append(members, name)
		}
	}
	slices.Sort(members)
	require.Equal(t, []string{"tollgate", "tollgate-b"}, members)

	const gossipPort = "7946" // serve's default: no --gossip-port is given
	names := map[string]bool{}
	for _, name := range members {
		s := c.Services[name]
		t.Run(name, func(t *testing.T) {
			cmd := s.Command
			assert.Equal(t, []string{"redis"}, flagValues(cmd, "store"))
			assert.Contains(t, cmd, "--cluster")
			assert.Empty(t, flagValues(cmd, "gossip-port"))
			addrs := flagValues(cmd, "redis-addr")
			require.Len(t, addrs, 1)
			host, port, err := net.SplitHostPort(addrs[0])
			require.NoError(t, err)
			assert.Equal(t, "6379", port)
			require.Contains(t, c.Services, host, "--redis-addr names a service")
			assert.True(t, strings.HasPrefix(c.Services[host].Image, "redis:"), "%s runs Redis", host)

			_, grpcPort := flagAddr(t, cmd, "grpc-addr")
			assert.Equal(t, sidecarPort, grpcPort, "Envoy reaches this Tollgate")
			_, httpPort := flagAddr(t, cmd, "http-addr")

			node := flagValues(cmd, "node-name")
			require.Len(t, node, 1)
			assert.False(t, names[node[0]], "node name %s is unique", node[0])
			names[node[0]] = true

			seeds := flagValues(cmd, "cluster-seeds")
			require.NotEmpty(t, seeds)
			for _, seed := range seeds {
				h, p, err := net.SplitHostPort(seed)
				require.NoError(t, err)
				assert.Contains(t, members, h, "seed %s is a fleet member", seed)
				assert.NotEqual(t, name, h, "a member seeds from another")
				assert.Equal(t, gossipPort, p)
			}
			assert.Contains(t, s.Environment["TOLLGATE_GOSSIP_KEY"], "${TOLLGATE_GOSSIP_KEY", "the key comes from the environment, never the file")

			var envoys []string
			for en, e := range c.Services {
				if e.NetworkMode == "service:"+name && strings.HasPrefix(e.Image, "envoyproxy/envoy:") {
					envoys = append(envoys, en)
					src, err := filepath.Abs(mountSource(t, e, envoyConfigInImage))
					require.NoError(t, err)
					want, err := filepath.Abs(sidecarPath)
					require.NoError(t, err)
					assert.Equal(t, want, src, "%s runs sidecar.yaml", en)
					rewritten := composeEnvoy(t, e)
					for _, l := range rewritten.GetStaticResources().GetListeners() {
						assert.Equal(t, "0.0.0.0", l.GetAddress().GetSocketAddress().GetAddress(), "%s: listener %s is reachable through the published port", en, l.GetName())
					}
				}
			}
			assert.Len(t, envoys, 1, "one Envoy in %s's namespace", name)

			apiHost, _ := flagAddr(t, cmd, "api-addr")
			assert.Equal(t, "127.0.0.1", apiHost, "the API is never published")
			for _, spec := range s.Ports {
				assert.True(t, strings.HasPrefix(spec, "127.0.0.1:"), "port %q would be open to the host's network", spec)
			}

			published := publishedPorts(t, s.Ports)
			for _, l := range b.GetStaticResources().GetListeners() {
				assert.Contains(t, published, int(l.GetAddress().GetSocketAddress().GetPortValue()), "listener %s", l.GetName())
			}
			assert.Contains(t, published, httpPort)
		})
	}

	t.Run("no host port is published twice", func(t *testing.T) {
		seen := map[string]string{}
		for name, s := range c.Services {
			for _, p := range s.Ports {
				host := p[:strings.LastIndex(p, ":")]
				assert.NotContains(t, seen, host, "%s and %s", seen[host], name)
				seen[host] = name
			}
		}
	})

	t.Run("prometheus scrapes every member", func(t *testing.T) {
		var cfg prometheusConfig
		require.NoError(t, yaml.Unmarshal(readFile(t, mountSource(t, c.Services["prometheus"], promConfigInImage)), &cfg))
		var targets []string
		for _, sc := range cfg.ScrapeConfigs {
			for _, st := range sc.StaticConfigs {
				targets = append(targets, st.Targets...)
			}
		}
		for _, name := range members {
			_, httpPort := flagAddr(t, c.Services[name].Command, "http-addr")
			assert.Contains(t, targets, net.JoinHostPort(name, strconv.Itoa(httpPort)))
			assert.Contains(t, targets, net.JoinHostPort(name, strconv.Itoa(statsPort(t))), "%s's Envoy", name)
		}
		require.NotEmpty(t, cfg.RuleFiles)
		for _, rf := range cfg.RuleFiles {
			_, err := os.Stat(mountSource(t, c.Services["prometheus"], rf))
			assert.NoError(t, err, "rule file %s is mounted", rf)
		}
	})
}
