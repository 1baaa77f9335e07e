package authz_test

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"os"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	authv3 "github.com/envoyproxy/go-control-plane/envoy/service/auth/v3"
	typev3 "github.com/envoyproxy/go-control-plane/envoy/type/v3"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"go.uber.org/goleak"
	"google.golang.org/genproto/googleapis/rpc/code"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
	"google.golang.org/grpc/status"

	"github.com/tollgate/tollgate/admission"
	"github.com/tollgate/tollgate/authz"
	"github.com/tollgate/tollgate/internal/fakeclock"
	"github.com/tollgate/tollgate/internal/redistest"
	"github.com/tollgate/tollgate/internal/tracing"
	"github.com/tollgate/tollgate/limiter/respcache"
	"github.com/tollgate/tollgate/policy"
)

// redisSrv is the package's redis-server, for the tests that run on both
// stores.
var redisSrv *redistest.Server

func TestMain(m *testing.M) {
	code := redistest.Main(m, &redisSrv)
	if code == 0 {
		if err := goleak.Find(); err != nil {
			fmt.Fprintln(os.Stderr, "goleak:", err)
			code = 1
		}
	}
	os.Exit(code)
}

// serverPolicy: one OpenAI route on a 300-token pool refilling 100 a second
// (one token per 10 ms).
const serverPolicy = `
defaults:
  unknown_client: basic
pools:
  gpt-4:
    unit: token
    capacity: 300
    refill_per_second: 100
    price: "0.03/1K"
routes:
  openai:
    host: api.openai.com
    path_prefix: /v1/
    provider: openai
    pools: [gpt-4]
    class: immediate # answers given at once; queue_test.go holds calls
tiers:
  basic:
    priority: 10
    max_concurrent: 5
`

// testServer is a Server on loopback with its clients.
type testServer struct {
	srv    *authz.Server
	reg    *prometheus.Registry
	auth   authv3.AuthorizationClient
	health healthpb.HealthClient
	http   *http.Client // sends /api/ and /debug/ paths to the API listener, with the token
	base   string       // http://host:port of the health and metrics server
	served chan error
}

// testToken is the API token test servers require.
const testToken = "test-token-0123456789abcdef"

// apiTransport sends requests for /api/..., /debug/..., /status,
// /internal/... and /admin/... to the API
// listener with the bearer token (unless the request carries its own
// Authorization), and everything else where it was addressed: the tests
// keep naming paths, as an operator's scripts do.
type apiTransport struct {
	api   string // host:port of the API listener
	token string
	next  http.RoundTripper
}

func (t apiTransport) RoundTrip(r *http.Request) (*http.Response, error) {
	if strings.HasPrefix(r.URL.Path, "/api/") || strings.HasPrefix(r.URL.Path, "/debug/") || r.URL.Path == "/status" ||
		strings.HasPrefix(r.URL.Path, "/internal/") || strings.HasPrefix(r.URL.Path, "/admin/") {
		r = r.Clone(r.Context())
		r.URL.Host, r.Host = t.api, t.api
		if r.Header.Get("Authorization") == "" && t.token != "" {
			r.Header.Set("Authorization", "Bearer "+t.token)
		}
	}
	return t.next.RoundTrip(r)
}

// apiClient is an HTTP client for srv (see apiTransport).
func apiClient(srv *authz.Server, token string) *http.Client {
	return &http.Client{Transport: apiTransport{api: srv.APIAddr().String(), token: token,
		next: &http.Transport{DisableKeepAlives: true}}}
}

type serverOpts struct {
	policy string // "": serverPolicy
	// policies, when set, is the policy source (policy is then unused):
	// a test that reloads the policy swaps it.
	policies admission.PolicySource
	cache    respcache.Cache     // nil: none
	store    admission.Store     // nil: a memory store on clk
	clk      *fakeclock.Clock    // nil: a fresh one at epoch
	config   func(*authz.Config) // adjusts the loopback config
	logger   *slog.Logger        // nil: discard
	tracer   *tracing.Tracer     // nil: tracing off
}

// startServer builds a Server on 127.0.0.1:0, serves it, and dials it. At
// cleanup it shuts the server down, requires Serve to return nil, and closes
// the clients.
func startServer(tb testing.TB, o serverOpts) *testServer {
	tb.Helper()
	if o.policy == "" {
		o.policy = serverPolicy
	}
	if o.clk == nil {
		o.clk = fakeclock.New(epoch)
	}
	if o.store == nil {
		o.store = newMemStore(tb, o.clk)
	}
	cfg := authz.DefaultConfig()
	cfg.GRPCAddr, cfg.HTTPAddr, cfg.APIAddr, cfg.DrainDelay = "127.0.0.1:0", "127.0.0.1:0", "127.0.0.1:0", 0
	cfg.APIToken = testToken
	if o.config != nil {
		o.config(&cfg)
	}
	reg := prometheus.NewRegistry()
	policies := o.policies
	if policies == nil {
		policies = admission.StaticPolicy{Set: compilePolicy(tb, o.policy)}
	}
	srv, err := authz.New(cfg, authz.Deps{
		Policies: policies,
		Store:    o.store,
		Registry: reg,
		Clock:    o.clk,
		Logger:   o.logger,
		Cache:    o.cache,
		Tracer:   o.tracer,
	})
	require.NoError(tb, err)

	ts := &testServer{srv: srv, reg: reg, served: make(chan error, 1),
		base: "http://" + srv.HTTPAddr().String(),
		http: apiClient(srv, string(cfg.APIToken)),
	}
	go func() { ts.served <- srv.Serve(context.Background()) }()

	conn, err := grpc.NewClient(srv.GRPCAddr().String(), grpc.WithTransportCredentials(insecure.NewCredentials()))
	require.NoError(tb, err)
	ts.auth = authv3.NewAuthorizationClient(conn)
	ts.health = healthpb.NewHealthClient(conn)

	tb.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		defer cancel()
		_ = srv.Shutdown(ctx) // tests that shut down themselves check the error
		assert.NoError(tb, recv(tb, ts.served), "Serve")
		assert.NoError(tb, conn.Close())
		ts.http.CloseIdleConnections()
	})
	return ts
}

// get fetches an admin path and returns status code and body.
func (ts *testServer) get(tb testing.TB, path string) (int, string) {
	tb.Helper()
	sc, body, err := ts.tryGet(path)
	require.NoError(tb, err)
	return sc, body
}

// tryGet is get for use off the test's goroutine (in Eventually).
func (ts *testServer) tryGet(path string) (int, string, error) {
	resp, err := ts.http.Get(ts.base + path)
	if err != nil {
		return 0, "", err
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	return resp.StatusCode, string(b), err
}

// healthOf asks the gRPC health service about service.
func (ts *testServer) healthOf(ctx context.Context, service string) (healthpb.HealthCheckResponse_ServingStatus, error) {
	resp, err := ts.health.Check(ctx, &healthpb.HealthCheckRequest{Service: service})
	return resp.GetStatus(), err
}

// chatCheck is the CheckRequest Envoy sends for an OpenAI chat call made
// through the sidecar's listener: :authority is the sidecar's, the upstream
// comes from the route's context extension.
func chatCheck(client string, body []byte) *authv3.CheckRequest {
	return &authv3.CheckRequest{Attributes: &authv3.AttributeContext{
		Request: &authv3.AttributeContext_Request{Http: &authv3.AttributeContext_HttpRequest{
			Id: "envoy-1", Method: http.MethodPost, Host: "127.0.0.1:10000", Path: "/v1/chat/completions", Protocol: "HTTP/1.1",
			Headers: map[string]string{
				":authority": "127.0.0.1:10000", ":method": "POST", ":path": "/v1/chat/completions",
				"content-type": "application/json", "content-length": strconv.Itoa(len(body)),
				"x-request-id": "req-1", "x-tollgate-client": client,
			},
			RawBody: body, Size: int64(len(body)),
		}},
		ContextExtensions: map[string]string{authz.ContextUpstreamHost: "api.openai.com"},
	}}
}

// responseHeaders collects the headers a CheckResponse sends to the caller.
func responseHeaders(tb testing.TB, resp *authv3.CheckResponse) map[string]string {
	tb.Helper()
	hs := resp.GetOkResponse().GetResponseHeadersToAdd()
	if d := resp.GetDeniedResponse(); d != nil {
		hs = d.GetHeaders()
	}
	m := map[string]string{}
	for _, h := range hs {
		m[h.GetHeader().GetKey()] = h.GetHeader().GetValue()
	}
	return m
}

// TestCheckOverGRPC: a full round trip through go-control-plane's client on
// loopback TCP: allowed, drained to a 429 in OpenAI's shape, allowed again
// once the fake clock has refilled the pool.
func TestCheckOverGRPC(t *testing.T) {
	clk := fakeclock.New(epoch)
	ts := startServer(t, serverOpts{clk: clk})
	ctx := context.Background()

	body := chatBody("gpt-4", 100, "Say hello.")
	units := tokens(100, body)
	calls := 300 / units
	require.GreaterOrEqual(t, calls, int64(2), "the pool fits a few calls")
	for i := range calls {
		resp, err := ts.auth.Check(ctx, chatCheck("team-a", body))
		require.NoError(t, err)
		require.Equal(t, int32(code.Code_OK), resp.GetStatus().GetCode(), "call %d", i)
		hs := responseHeaders(t, resp)
		assert.Equal(t, "300", hs["x-ratelimit-limit"])
		assert.Equal(t, strconv.FormatInt(300-(i+1)*units, 10), hs["x-ratelimit-remaining"])
	}

	resp, err := ts.auth.Check(ctx, chatCheck("team-a", body))
	require.NoError(t, err, "a denial is an answer, not a gRPC error")
	assert.Equal(t, int32(code.Code_RESOURCE_EXHAUSTED), resp.GetStatus().GetCode())
	denied := resp.GetDeniedResponse()
	require.NotNil(t, denied)
	assert.Equal(t, typev3.StatusCode_TooManyRequests, denied.GetStatus().GetCode())
	// The pool holds 300 - calls·units; the rest comes back at 10 ms a token.
	wait := time.Duration(units-(300-calls*units)) * 10 * time.Millisecond
	hs := responseHeaders(t, resp)
	assert.Equal(t, strconv.FormatInt(int64((wait+time.Second-1)/time.Second), 10), hs["retry-after"])
	assert.Equal(t, "application/json", hs["content-type"])
	assert.Equal(t, "rate_limited", hs["x-tollgate-reason"])
	var oa struct {
		Error map[string]any `json:"error"`
	}
	require.NoError(t, json.Unmarshal([]byte(denied.GetBody()), &oa), denied.GetBody())
	assert.Equal(t, "tokens", oa.Error["type"])
	assert.Equal(t, "rate_limit_exceeded", oa.Error["code"])
	assert.Contains(t, oa.Error, "param")
	assert.Nil(t, oa.Error["param"])
	assert.NotEmpty(t, oa.Error["message"])
	assert.Len(t, oa.Error, 4)

	clk.Advance(wait - time.Microsecond)
	resp, err = ts.auth.Check(ctx, chatCheck("team-a", body))
	require.NoError(t, err)
	require.Equal(t, int32(code.Code_RESOURCE_EXHAUSTED), resp.GetStatus().GetCode(), "one microsecond short")

	clk.Advance(time.Microsecond)
	resp, err = ts.auth.Check(ctx, chatCheck("team-a", body))
	require.NoError(t, err)
	assert.Equal(t, int32(code.Code_OK), resp.GetStatus().GetCode())

	assert.Equal(t, float64(calls+1), metricValue(t, ts.reg, decisionsMetric, decisionLabels("gpt-4", "basic", admission.OutcomeAllowed, "")))
	assert.Equal(t, 2.0, metricValue(t, ts.reg, decisionsMetric, decisionLabels("gpt-4", "basic", admission.OutcomeDenied, "rate_limited")))
	requireLint(t, ts.reg)
}

// TestCheckMalformedOverGRPC: a check without HTTP attributes is answered
// with a 400, never a gRPC error.
func TestCheckMalformedOverGRPC(t *testing.T) {
	ts := startServer(t, serverOpts{})
	resp, err := ts.auth.Check(context.Background(), &authv3.CheckRequest{})
	require.NoError(t, err)
	assert.Equal(t, int32(code.Code_INVALID_ARGUMENT), resp.GetStatus().GetCode())
	assert.Equal(t, typev3.StatusCode_BadRequest, resp.GetDeniedResponse().GetStatus().GetCode())
	assert.True(t, json.Valid([]byte(resp.GetDeniedResponse().GetBody())))
}

// TestAdminEndpoints: health, readiness, metrics and the live policy.
func TestAdminEndpoints(t *testing.T) {
	ts := startServer(t, serverOpts{})
	// One check, so that the per-service series exist.
	_, err := ts.auth.Check(context.Background(), chatCheck("team-a", chatBody("gpt-4", 10, "hi")))
	require.NoError(t, err)

	sc, body := ts.get(t, "/healthz")
	assert.Equal(t, http.StatusOK, sc)
	assert.Equal(t, "ok\n", body)

	sc, body = ts.get(t, "/readyz")
	assert.Equal(t, http.StatusOK, sc)
	assert.JSONEq(t, `{"ready":true,"degraded":false,"components":{"policy":"ok","server":"ok"}}`, body)

	sc, body = ts.get(t, "/metrics")
	assert.Equal(t, http.StatusOK, sc)
	assert.Contains(t, body, "tollgate_authz_decisions_total{")
	assert.Contains(t, body, `tollgate_authz_check_duration_seconds_bucket{service="ext_authz",`)
	assert.Contains(t, body, `tollgate_authz_check_duration_seconds_count{service="ext_authz"} 1`)

	sc, body = ts.get(t, "/debug/policy")
	assert.Equal(t, http.StatusOK, sc)
	var sum policy.Summary
	require.NoError(t, json.Unmarshal([]byte(body), &sum), body)
	require.Len(t, sum.Pools, 1)
	assert.Equal(t, policy.SummaryPool{Name: "gpt-4", Unit: policy.UnitToken, Capacity: 300, Refill: "100/s", Price: "0.03/1K"}, sum.Pools[0])
	require.Len(t, sum.Routes, 1)
	assert.Equal(t, "openai", sum.Routes[0].Name)
	assert.Equal(t, "basic", sum.Defaults.UnknownClient)

	requireLint(t, ts.reg)
}

// TestHealthAndDraining: gRPC health says SERVING for the server and for
// the Authorization service; once Shutdown begins both say NOT_SERVING and
// /readyz turns 503 for the whole drain delay, while /healthz stays 200.
func TestHealthAndDraining(t *testing.T) {
	ts := startServer(t, serverOpts{config: func(c *authz.Config) {
		c.DrainDelay = time.Hour // ended below by cancelling Shutdown's context
	}})
	ctx := context.Background()
	services := []string{"", authv3.Authorization_ServiceDesc.ServiceName}
	for _, svc := range services {
		st, err := ts.healthOf(ctx, svc)
		require.NoError(t, err)
		assert.Equal(t, healthpb.HealthCheckResponse_SERVING, st, "service %q", svc)
	}
	_, err := ts.healthOf(ctx, "no.such.Service")
	assert.Equal(t, codes.NotFound, status.Code(err))

	drainCtx, endDrain := context.WithCancel(ctx)
	defer endDrain()
	shutdown := make(chan error, 1)
	go func() { shutdown <- ts.srv.Shutdown(drainCtx) }()

	require.EventuallyWithT(t, func(c *assert.CollectT) {
		sc, body, err := ts.tryGet("/readyz")
		if !assert.NoError(c, err) {
			return
		}
		assert.Equal(c, http.StatusServiceUnavailable, sc)
		assert.JSONEq(c, `{"ready":false,"degraded":false,"components":{"policy":"ok","server":"draining"}}`, body)
	}, 10*time.Second, 5*time.Millisecond)
	// Draining has begun and lasts an hour: everything below holds now.
	for _, svc := range services {
		st, err := ts.healthOf(ctx, svc)
		require.NoError(t, err)
		assert.Equal(t, healthpb.HealthCheckResponse_NOT_SERVING, st, "service %q", svc)
	}
	sc, _ := ts.get(t, "/healthz")
	assert.Equal(t, http.StatusOK, sc, "alive while draining")
	resp, err := ts.auth.Check(ctx, chatCheck("team-a", chatBody("gpt-4", 10, "hi")))
	require.NoError(t, err, "checks are still answered while draining")
	assert.Equal(t, int32(code.Code_OK), resp.GetStatus().GetCode())
	select {
	case err := <-shutdown:
		t.Fatalf("Shutdown returned during the drain delay: %v", err)
	default:
	}

	endDrain()
	err = recv(t, shutdown)
	if err != nil { // ctx ended: the server may have been stopped hard
		assert.ErrorIs(t, err, context.Canceled)
	}
	assert.Equal(t, err, ts.srv.Shutdown(context.Background()), "Shutdown is idempotent and keeps its answer")
}

// TestShutdownIdempotent: concurrent and repeated Shutdowns all succeed and
// Serve returns nil.
func TestShutdownIdempotent(t *testing.T) {
	ts := startServer(t, serverOpts{})
	var wg sync.WaitGroup
	errs := make([]error, 4)
	for i := range errs {
		wg.Go(func() { errs[i] = ts.srv.Shutdown(context.Background()) })
	}
	wg.Wait()
	for _, err := range errs {
		assert.NoError(t, err)
	}
	assert.NoError(t, ts.srv.Shutdown(context.Background()))
	assert.NoError(t, recv(t, ts.served), "Serve returns nil after a clean Shutdown")
	ts.served <- nil // for the cleanup
}

// TestShutdownWaitsForInFlightCheck: a check that is inside the store when
// Shutdown begins still gets its answer, and Shutdown returns nil after it.
func TestShutdownWaitsForInFlightCheck(t *testing.T) {
	clk := fakeclock.New(epoch)
	store := newBlockingStore(newMemStore(t, clk))
	ts := startServer(t, serverOpts{clk: clk, store: store})
	t.Cleanup(store.Unblock) // never leave a handler blocked, even on failure

	type answer struct {
		resp *authv3.CheckResponse
		err  error
	}
	answered := make(chan answer, 1)
	go func() {
		resp, err := ts.auth.Check(context.Background(), chatCheck("team-a", chatBody("gpt-4", 10, "hi")))
		answered <- answer{resp, err}
	}()
	recv(t, store.entered)

	shutdown := make(chan error, 1)
	go func() { shutdown <- ts.srv.Shutdown(context.Background()) }()

	// Shutdown has stopped accepting: new connections are refused.
	grpcAddr := ts.srv.GRPCAddr().String()
	require.Eventually(t, func() bool {
		c, err := net.Dial("tcp", grpcAddr)
		if err == nil {
			_ = c.Close()
			return false
		}
		return errors.Is(err, syscall.ECONNREFUSED)
	}, 10*time.Second, 5*time.Millisecond)
	select {
	case err := <-shutdown:
		t.Fatalf("Shutdown returned with a check in flight: %v", err)
	case a := <-answered:
		t.Fatalf("the check returned before the store let it: %v", a.err)
	default:
	}

	store.Unblock()
	a := recv(t, answered)
	require.NoError(t, a.err)
	assert.Equal(t, int32(code.Code_OK), a.resp.GetStatus().GetCode())
	assert.NoError(t, recv(t, shutdown))
}

func TestNewRejectsBadConfig(t *testing.T) {
	good := authz.DefaultConfig()
	good.GRPCAddr, good.HTTPAddr, good.APIAddr = "127.0.0.1:0", "127.0.0.1:0", "127.0.0.1:0"
	deps := func(tb testing.TB) authz.Deps {
		return authz.Deps{
			Policies: admission.StaticPolicy{Set: compilePolicy(tb, serverPolicy)},
			Store:    failingStore{err: errStoreDown},
			Registry: prometheus.NewRegistry(),
		}
	}
	tests := map[string]struct {
		cfg     func(*authz.Config)
		deps    func(*authz.Deps)
		wantErr string
	}{
		"empty gRPC address":       {cfg: func(c *authz.Config) { c.GRPCAddr = "" }, wantErr: "gRPC address is empty"},
		"empty HTTP address":       {cfg: func(c *authz.Config) { c.HTTPAddr = "" }, wantErr: "HTTP address is empty"},
		"empty API address":        {cfg: func(c *authz.Config) { c.APIAddr = "" }, wantErr: "API address is empty"},
		"short API token":          {cfg: func(c *authz.Config) { c.APIToken = "secret" }, wantErr: "API token must be at least 16 characters"},
		"API token with a space":   {cfg: func(c *authz.Config) { c.APIToken = "0123456789 abcdef" }, wantErr: "printable ASCII without spaces"},
		"upper-case header":        {cfg: func(c *authz.Config) { c.ClientHeader = "X-Client" }, wantErr: `client header "X-Client" must be a lower-case header name`},
		"negative drain delay":     {cfg: func(c *authz.Config) { c.DrainDelay = -time.Second }, wantErr: "drain delay -1s is negative"},
		"no store":                 {deps: func(d *authz.Deps) { d.Store = nil }, wantErr: "Deps needs Policies, Store and Registry"},
		"no registry":              {deps: func(d *authz.Deps) { d.Registry = nil }, wantErr: "Deps needs Policies, Store and Registry"},
		"unparseable gRPC address": {cfg: func(c *authz.Config) { c.GRPCAddr = "127.0.0.1:http-alt-nope" }, wantErr: "authz: gRPC listener"},
	}
	for name, tc := range tests {
		t.Run(name, func(t *testing.T) {
			cfg, d := good, deps(t)
			if tc.cfg != nil {
				tc.cfg(&cfg)
			}
			if tc.deps != nil {
				tc.deps(&d)
			}
			srv, err := authz.New(cfg, d)
			require.ErrorContains(t, err, tc.wantErr)
			assert.Nil(t, srv)
		})
	}
}

// TestNewPortInUse: New binds both listeners, so an address in use fails at
// once with a clear error; a failed New leaves nothing bound and nothing in
// the registry, so a retry with the same registry succeeds.
func TestNewPortInUse(t *testing.T) {
	taken, err := net.Listen("tcp", "127.0.0.1:0")
	require.NoError(t, err)
	defer taken.Close()

	tests := map[string]struct {
		grpcAddr, httpAddr, apiAddr string
		wantErr                     string
	}{
		"gRPC": {grpcAddr: taken.Addr().String(), httpAddr: "127.0.0.1:0", apiAddr: "127.0.0.1:0", wantErr: "authz: gRPC listener: "},
		// The gRPC listener is a unix socket here, so that its release
		// shows: closing it removes the file.
		"HTTP": {grpcAddr: "unix://" + t.TempDir() + "/grpc.sock", httpAddr: taken.Addr().String(), apiAddr: "127.0.0.1:0", wantErr: "authz: HTTP listener: "},
		"API":  {grpcAddr: "unix://" + t.TempDir() + "/grpc.sock", httpAddr: "127.0.0.1:0", apiAddr: taken.Addr().String(), wantErr: "authz: API listener: "},
	}
	for name, tc := range tests {
		t.Run(name, func(t *testing.T) {
			deps := authz.Deps{
				Policies: admission.StaticPolicy{Set: compilePolicy(t, serverPolicy)},
				Store:    failingStore{err: errStoreDown},
				Registry: prometheus.NewRegistry(),
			}
			cfg := authz.DefaultConfig()
			cfg.GRPCAddr, cfg.HTTPAddr, cfg.APIAddr = tc.grpcAddr, tc.httpAddr, tc.apiAddr
			srv, err := authz.New(cfg, deps)
			require.ErrorContains(t, err, tc.wantErr)
			assert.ErrorIs(t, err, syscall.EADDRINUSE)
			assert.Contains(t, err.Error(), taken.Addr().String())
			assert.Nil(t, srv)
			if sock, ok := strings.CutPrefix(tc.grpcAddr, "unix://"); ok {
				_, err := os.Stat(sock)
				assert.ErrorIs(t, err, os.ErrNotExist, "the gRPC listener was closed")
			}
			n, err := testutil.GatherAndCount(deps.Registry)
			require.NoError(t, err)
			assert.Zero(t, n, "a failed New registers no metrics")

			// A retry on free addresses, with the same registry, works.
			if tc.grpcAddr == taken.Addr().String() {
				cfg.GRPCAddr = "127.0.0.1:0"
			}
			cfg.HTTPAddr, cfg.APIAddr = "127.0.0.1:0", "127.0.0.1:0"
			srv, err = authz.New(cfg, deps)
			require.NoError(t, err)
			served := make(chan error, 1)
			go func() { served <- srv.Serve(context.Background()) }()
			assert.NoError(t, srv.Shutdown(context.Background()))
			assert.NoError(t, recv(t, served))
		})
	}
}

// TestNewUnixSocket: the gRPC listener also takes unix:// addresses, and
// replaces a stale socket file.
func TestNewUnixSocket(t *testing.T) {
	sock := t.TempDir() + "/tollgate.sock"
	stale, err := net.Listen("unix", sock)
	require.NoError(t, err)
	stale.(*net.UnixListener).SetUnlinkOnClose(false)
	require.NoError(t, stale.Close()) // leaves the file behind, as a crash would

	ts := startServer(t, serverOpts{config: func(c *authz.Config) { c.GRPCAddr = "unix://" + sock }})
	assert.Equal(t, sock, ts.srv.GRPCAddr().String())
	conn, err := grpc.NewClient("unix://"+sock, grpc.WithTransportCredentials(insecure.NewCredentials()))
	require.NoError(t, err)
	defer conn.Close()
	resp, err := authv3.NewAuthorizationClient(conn).Check(context.Background(), chatCheck("team-a", chatBody("gpt-4", 10, "hi")))
	require.NoError(t, err)
	assert.Equal(t, int32(code.Code_OK), resp.GetStatus().GetCode())
	assert.True(t, strings.HasPrefix(ts.base, "http://127.0.0.1:"))
}
