package main

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
	"go.uber.org/goleak"

	"github.com/tollgate/tollgate/internal/redistest"
)

// redisSrv is the package's redis-server, shared by every test; each test
// keeps to a key prefix of its own (redistest.Prefix).
var redisSrv *redistest.Server

func TestMain(m *testing.M) {
	goleak.VerifyTestMain(withRedis{m})
}

// withRedis runs the tests with redisSrv up and stops it before goleak
// looks for leftover goroutines.
type withRedis struct{ m *testing.M }

func (w withRedis) Run() int { return redistest.Main(w.m, &redisSrv) }

const (
	tourPolicy = "../../testdata/good/tour.yaml"
	tourURL    = "https://api.openai.com/v1/chat/completions"
)

// noEnv is a getenv with nothing set.
func noEnv(string) string { return "" }

// env is a getenv that reads m.
func env(m map[string]string) func(string) string {
	return func(k string) string { return m[k] }
}

// freePort returns a loopback address whose port was free a moment ago.
func freePort(t *testing.T) string {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	require.NoError(t, err)
	addr := l.Addr().(*net.TCPAddr)
	require.NoError(t, l.Close())
	return net.JoinHostPort("127.0.0.1", strconv.Itoa(addr.Port))
}

// syncBuffer is a bytes.Buffer safe for a writer and a reader in different
// goroutines (a server's logger and the test).
type syncBuffer struct {
	mu  sync.Mutex
	buf bytes.Buffer
}

func (b *syncBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.Write(p)
}

func (b *syncBuffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.String()
}

// httpClient keeps no idle connections, so that no transport goroutine
// outlives a test.
// It sends /api/ and /debug/ paths addressed to a test server's health
// listener to its API listener, with the token (see apiTransport).
var httpClient = &http.Client{Transport: apiTransport{next: &http.Transport{DisableKeepAlives: true}}, Timeout: 5 * time.Second}

// testAPIToken is the API token serve runs started by tests require,
// unless the test sets TOLLGATE_API_TOKEN itself.
const testAPIToken = "cmd-test-token-0123456789abcdef"

// apiAddrs maps the --http-addr of each serve started by startRun to the
// --api-addr it was given, so that tests keep naming one address per
// server.
var apiAddrs sync.Map

// apiAddrOf returns the API address of the server whose health address is
// addr, or addr itself.
func apiAddrOf(addr string) string {
	if a, ok := apiAddrs.Load(addr); ok {
		return a.(string)
	}
	return addr
}

// apiTransport routes /api/ and /debug/ requests to the API listener of
// the server addressed, adding the test token.
type apiTransport struct{ next http.RoundTripper }

func (t apiTransport) RoundTrip(r *http.Request) (*http.Response, error) {
	if api := apiAddrOf(r.URL.Host); api != r.URL.Host && (strings.HasPrefix(r.URL.Path, "/api/") || strings.HasPrefix(r.URL.Path, "/debug/")) {
		r = r.Clone(r.Context())
		r.URL.Host, r.Host = api, api
		if r.Header.Get("Authorization") == "" {
			r.Header.Set("Authorization", "Bearer "+testAPIToken)
		}
	}
	return t.next.RoundTrip(r)
}

// withTestToken is getenv with TOLLGATE_API_TOKEN defaulting to
// testAPIToken.
func withTestToken(getenv func(string) string) func(string) string {
	return func(k string) string {
		if v := getenv(k); v != "" || k != apiTokenEnv {
			return v
		}
		return testAPIToken
	}
}

// cliArgs is args for a CLI command that talks to the API: an --addr that
// names a test server's health address names its API address instead.
func cliArgs(args []string) []string {
	out := slices.Clone(args)
	for i := range out {
		if out[i] == "--addr" && i+1 < len(out) {
			out[i+1] = apiAddrOf(out[i+1])
		}
	}
	return out
}

// httpStatus GETs url and returns the status code, or 0 if the server did not
// answer.
func httpStatus(url string) int {
	resp, err := httpClient.Get(url)
	if err != nil {
		return 0
	}
	_, _ = io.Copy(io.Discard, resp.Body)
	_ = resp.Body.Close()
	return resp.StatusCode
}

// running is a `tollgate serve` started through run in a goroutine.
type running struct {
	stderr   *syncBuffer
	cancel   context.CancelFunc
	done     chan struct{}
	err      error // set before done closes
	stopOnce sync.Once
}

// startRun calls run(args) in a goroutine and waits until httpAddr answers
// /readyz with 200. The run is stopped when the test ends.
func startRun(t *testing.T, getenv func(string) string, httpAddr string, args ...string) *running {
	t.Helper()
	return startRunReady(t, getenv, httpAddr, http.StatusOK, args...)
}

// startRunReady is startRun waiting for /readyz to answer with status
// ready: 503 for a server that is up but whose store is not. A serve
// without --api-addr gets a free one (remembered in apiAddrs), and the
// test token unless getenv sets one or args name a token file.
func startRunReady(t *testing.T, getenv func(string) string, httpAddr string, ready int, args ...string) *running {
	t.Helper()
	if len(args) > 0 && args[0] == "serve" && !slices.Contains(args, "--api-addr") && getenv("TOLLGATE_API_ADDR") == "" {
		api := freePort(t)
		args = append(slices.Clone(args), "--api-addr", api)
		apiAddrs.Store(httpAddr, api)
		t.Cleanup(func() { apiAddrs.Delete(httpAddr) })
	}
	if !slices.Contains(args, "--api-token-file") {
		getenv = withTestToken(getenv)
	}
	ctx, cancel := context.WithCancel(context.Background())
	r := &running{stderr: &syncBuffer{}, cancel: cancel, done: make(chan struct{})}
	go func() {
		defer close(r.done)
		r.err = run(ctx, args, getenv, io.Discard, r.stderr)
	}()
	t.Cleanup(func() { _ = r.stop(t) })

	exited := func() bool {
		select {
		case <-r.done:
			return true
		default:
			return false
		}
	}
	require.Eventually(t, func() bool {
		return exited() || httpStatus("http://"+httpAddr+"/readyz") == ready
	}, 10*time.Second, 10*time.Millisecond, "serve never became ready; log:\n%s", r.stderr)
	if exited() {
		t.Fatalf("run returned before the server was ready: %v; log:\n%s", r.err, r.stderr)
	}
	return r
}

// stop cancels the run's context, as SIGTERM does, and returns what run
// returned.
func (r *running) stop(t *testing.T) error {
	t.Helper()
	r.stopOnce.Do(r.cancel)
	select {
	case <-r.done:
		return r.err
	case <-time.After(30 * time.Second):
		t.Fatalf("run did not return after cancel; log:\n%s", r.stderr)
		return nil
	}
}

// serveArgs is `serve` on the given addresses with no drain delay.
func serveArgs(grpcAddr, httpAddr string, extra ...string) []string {
	return append([]string{"serve", "--grpc-addr", grpcAddr, "--http-addr", httpAddr, "--drain-delay", "0"}, extra...)
}

// probeTour runs `probe` for client acme against the tour route, with
// extra flags.
func probeTour(grpcAddr string, extra ...string) (string, error) {
	var out bytes.Buffer
	err := run(context.Background(),
		append([]string{"probe", "--addr", grpcAddr, "--client", "acme", "--url", tourURL}, extra...),
		noEnv, &out, io.Discard)
	return out.String(), err
}

// probeHold is probeTour leaving the call in flight (its reservation held),
// as Envoy does until the upstream answers.
func probeHold(grpcAddr string) (string, error) { return probeTour(grpcAddr, "--respond=false") }

// spendPolicy is a policy with money in it: $0.01 a call to the tour's
// route (a pool of 100 requests, so only budgets and slots deny), acme may
// spend $0.036 a month (three deferred holds of $0.012: 120% of $0.01)
// with ten calls in flight, under acme-group whose
// spend is tracked but not capped. Unknown clients are denied. defaults is
// extra lines for the defaults block (indented by two spaces).
func spendPolicy(defaults string) string {
	return fmt.Sprintf(`
defaults:
  unknown_client: deny
%s
pools:
  demo:
    unit: request
    capacity: 100
    refill_per_second: 1
    price: "0.01"
routes:
  demo:
    host: api.openai.com
    path_prefix: /v1/
    provider: openai
    pools: [demo]
tiers:
  team:
    priority: 10
    max_concurrent: 10
  holding:
    priority: 0
    max_concurrent: 1
clients:
  acme-group:
    tier: holding
  acme:
    tier: team
    parent: acme-group
    monthly_budget: "0.036"
`, defaults)
}

// writePolicy writes yaml to a policy file in a temporary directory and
// returns its path.
func writePolicy(t *testing.T, yaml string) string {
	t.Helper()
	path := filepath.Join(t.TempDir(), "policy.yaml")
	require.NoError(t, os.WriteFile(path, []byte(yaml), 0o600))
	return path
}

// runUsage runs `usage args...` and returns what it printed.
func runUsage(args ...string) (string, error) {
	var out bytes.Buffer
	err := run(context.Background(), append([]string{"usage"}, cliArgs(args)...), withTestToken(noEnv), &out, io.Discard)
	return out.String(), err
}
