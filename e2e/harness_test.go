// Package e2e drives the official provider SDKs (npm openai and
// @anthropic-ai/sdk, run by Node) through the Envoy stand-in
// (internal/envoysim running envoy/sidecar.yaml) to the fake provider
// (internal/fakeapi), with Tollgate deciding and settling over real gRPC
// on loopback, and checks what the SDK saw and what Tollgate booked.
//
// `make test` installs the SDKs (npm ci into e2e/node_modules, git-ignored);
// run alone with `make e2e`.
package e2e

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"log/slog"
	"net"
	"net/http"
	"os"
	"os/exec"
	"strings"
	"testing"
	"time"

	authv3 "github.com/envoyproxy/go-control-plane/envoy/service/auth/v3"
	extprocv3 "github.com/envoyproxy/go-control-plane/envoy/service/ext_proc/v3"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/stretchr/testify/require"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"

	"github.com/tollgate/tollgate/admission"
	"github.com/tollgate/tollgate/authz"
	"github.com/tollgate/tollgate/internal/envoysim"
	"github.com/tollgate/tollgate/internal/fakeapi"
	"github.com/tollgate/tollgate/limiter/memstore"
	"github.com/tollgate/tollgate/policy"
)

// upstreamRetryAfter is the Retry-After of the fake provider's 429s.
const upstreamRetryAfter = 2 * time.Second

// rig is one whole path: Tollgate, the stand-in's openai and anthropic
// listeners, and the fake provider, each on its own loopback port.
type rig struct {
	fake       *fakeapi.Server
	tollgate   *authz.Server
	openai     string // base URL of the openai listener
	anthropic  string
	twilio     string
	sendgrid   string
	cloudflare string
}

func serveHTTP(t *testing.T, h http.Handler) string {
	t.Helper()
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	require.NoError(t, err)
	srv := &http.Server{Handler: h, ReadHeaderTimeout: 5 * time.Second}
	done := make(chan error, 1)
	go func() { done <- srv.Serve(lis) }()
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		require.NoError(t, srv.Shutdown(ctx))
		require.ErrorIs(t, <-done, http.ErrServerClosed)
	})
	return "http://" + lis.Addr().String()
}

// rigOption changes how the stand-in reaches Tollgate's ext_proc.
type rigOption func(extprocv3.ExternalProcessorClient) extprocv3.ExternalProcessorClient

func newRig(t *testing.T, opts ...rigOption) *rig {
	t.Helper()
	requireSDKs(t)
	r := &rig{}
	cfg := fakeapi.DefaultConfig()
	cfg.RetryAfter = upstreamRetryAfter
	cfg.SlowDelay = 40 * time.Millisecond
	r.fake = fakeapi.New(cfg)
	upstream := strings.TrimPrefix(serveHTTP(t, r.fake), "http://")

	f, err := os.Open("testdata/policy.yaml")
	require.NoError(t, err)
	set, err := policy.Parse("testdata/policy.yaml", f)
	require.NoError(t, f.Close())
	require.NoError(t, err)
	store, err := memstore.New(memstore.DefaultConfig())
	require.NoError(t, err)
	t.Cleanup(func() { require.NoError(t, store.Close()) })
	acfg := authz.DefaultConfig()
	acfg.GRPCAddr, acfg.HTTPAddr, acfg.APIAddr, acfg.DrainDelay = "127.0.0.1:0", "127.0.0.1:0", "127.0.0.1:0", 0
	acfg.APIToken = apiToken
	acfg.Settlement = admission.SettleDeferred
	r.tollgate, err = authz.New(acfg, authz.Deps{Policies: admission.StaticPolicy{Set: set}, Store: store, Registry: prometheus.NewRegistry()})
	require.NoError(t, err)
	ctx, cancel := context.WithCancel(context.Background())
	served := make(chan error, 1)
	go func() { served <- r.tollgate.Serve(ctx) }()
	t.Cleanup(func() {
		sctx, scancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer scancel()
		require.NoError(t, r.tollgate.Shutdown(sctx))
		cancel()
		require.NoError(t, <-served)
	})

	// The stand-in dials Tollgate as Envoy's tollgate cluster does: HTTP/2
	// (gRPC) on loopback.
	conn, err := grpc.NewClient(r.tollgate.GRPCAddr().String(), grpc.WithTransportCredentials(insecure.NewCredentials()))
	require.NoError(t, err)
	t.Cleanup(func() { require.NoError(t, conn.Close()) })
	listeners, err := envoysim.Load("../envoy/sidecar.yaml")
	require.NoError(t, err)
	proc := extprocv3.NewExternalProcessorClient(conn)
	for _, o := range opts {
		proc = o(proc)
	}
	for name, base := range map[string]*string{"openai": &r.openai, "anthropic": &r.anthropic,
		"twilio": &r.twilio, "sendgrid": &r.sendgrid, "cloudflare": &r.cloudflare} {
		// What the stand-in logs (an ext_proc message timeout, a failed
		// check) shows in the test's output: under a loaded machine the
		// config's 200 ms message timeout can fire, and the call then fails
		// open as it would with Envoy.
		p, err := envoysim.New(envoysim.Config{Listener: listeners[name], Authz: authv3.NewAuthorizationClient(conn),
			Proc: proc, Upstream: upstream, Logger: slog.New(slog.NewTextHandler(testWriter{t}, nil))})
		require.NoError(t, err)
		t.Cleanup(p.Close)
		*base = serveHTTP(t, p)
	}
	return r
}

// testWriter sends log lines to the test's log.
type testWriter struct{ t *testing.T }

func (w testWriter) Write(b []byte) (int, error) {
	w.t.Helper()
	w.t.Log(strings.TrimSpace(string(b)))
	return len(b), nil
}

// requireSDKs fails (never skips) when the SDKs are not installed.
func requireSDKs(t *testing.T) {
	t.Helper()
	_, err := exec.LookPath("node")
	require.NoError(t, err, "node is needed to run the provider SDKs")
	for _, m := range []string{"node_modules/openai/package.json", "node_modules/@anthropic-ai/sdk/package.json"} {
		_, err := os.Stat(m)
		require.NoError(t, err, "the SDKs are not installed: run `make e2e-deps` (make test does)")
	}
}

// sdkCall is what sdk.mjs is asked to do.
type sdkCall struct {
	SDK        string            `json:"sdk"`
	Op         string            `json:"op"`
	BaseURL    string            `json:"baseURL"`
	Client     string            `json:"client"`
	Params     any               `json:"params"`
	Headers    map[string]string `json:"headers,omitempty"`
	MaxRetries *int              `json:"maxRetries,omitempty"`
}

// attempt is one HTTP attempt the SDK made.
type attempt struct {
	At         float64 `json:"at"`
	RetryCount string  `json:"retryCount"`
	Status     int     `json:"status"`
}

type chunk struct {
	At   float64         `json:"at"`
	Data json.RawMessage `json:"data"`
}

// sdkError is an SDK's error as sdk.mjs reports it.
type sdkError struct {
	Class     string            `json:"class"`
	Message   string            `json:"message"`
	Status    int               `json:"status"`
	RequestID *string           `json:"requestID"`
	Type      *string           `json:"type"`
	Body      json.RawMessage   `json:"body"`
	Headers   map[string]string `json:"headers"`
}

// sdkResult is what the SDK saw.
type sdkResult struct {
	OK                bool            `json:"ok"`
	Attempts          []attempt       `json:"attempts"`
	Result            json.RawMessage `json:"result"`
	Text              string          `json:"text"`
	Chunks            []chunk         `json:"chunks"`
	TypicalCodeErrors int             `json:"typicalCodeErrors"`
	Error             *sdkError       `json:"error"`
	ElapsedMs         float64         `json:"elapsedMs"`
}

// run runs sdk.mjs on one call, bounded in time.
func run(t *testing.T, c sdkCall) sdkResult {
	t.Helper()
	spec, err := json.Marshal(c)
	require.NoError(t, err)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	cmd := exec.CommandContext(ctx, "node", "sdk.mjs", string(spec))
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	require.NoError(t, cmd.Run(), "node sdk.mjs: %s", stderr.String())
	var res sdkResult
	require.NoError(t, json.Unmarshal(stdout.Bytes(), &res), "stdout: %s", stdout.String())
	t.Logf("%s %s (%s): ok=%v attempts=%d elapsed=%.0fms", c.SDK, c.Op, c.Client, res.OK, len(res.Attempts), res.ElapsedMs)
	if res.Error != nil {
		t.Logf("  error %s %d: %s", res.Error.Class, res.Error.Status, res.Error.Message)
	}
	return res
}

// apiToken is the bearer token the rig's Tollgate API answers.
const apiToken = "e2e-api-token-0123456789"

// usage asks Tollgate's JSON API for the client's usage.
func (r *rig) usage(client string) (*http.Response, error) {
	req, err := http.NewRequest(http.MethodGet, "http://"+r.tollgate.APIAddr().String()+"/api/usage/"+client+"/current", nil)
	if err != nil {
		return nil, err
	}
	req.Header.Set("Authorization", "Bearer "+apiToken)
	return http.DefaultClient.Do(req)
}

// spent is what Tollgate booked to the client's own budget.
func (r *rig) spent(t *testing.T, client string) policy.Money {
	t.Helper()
	resp, err := r.usage(client)
	require.NoError(t, err)
	defer resp.Body.Close()
	require.Equal(t, http.StatusOK, resp.StatusCode)
	var rep admission.UsageReport
	require.NoError(t, json.NewDecoder(resp.Body).Decode(&rep))
	for _, b := range rep.Budgets {
		if b.Owner == client {
			m, err := policy.ParseMoney(b.Spent)
			require.NoError(t, err)
			require.Equal(t, int64(0), rep.InFlight, "a call still in flight for %s", client)
			return m
		}
	}
	require.Fail(t, "no budget", "client %s: %+v", client, rep)
	return 0
}

// settled waits until the client has nothing in flight (ext_proc settles
// once the response has ended, a moment after the SDK has it) and returns
// its spend.
func (r *rig) settled(t *testing.T, client string) policy.Money {
	t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for {
		resp, err := r.usage(client)
		require.NoError(t, err)
		var rep admission.UsageReport
		err = json.NewDecoder(resp.Body).Decode(&rep)
		require.NoError(t, errors.Join(err, resp.Body.Close()))
		if rep.InFlight == 0 {
			return r.spent(t, client)
		}
		require.True(t, time.Now().Before(deadline), "client %s still has %d call(s) in flight", client, rep.InFlight)
		time.Sleep(10 * time.Millisecond)
	}
}

// calls is how many calls reached the fake provider.
func (r *rig) calls() int { return r.fake.Calls().Total }

// last is the last call that reached the fake provider.
func (r *rig) last(t *testing.T) fakeapi.Seen {
	t.Helper()
	c := r.fake.Calls()
	require.NotEmpty(t, c.Recent)
	return c.Recent[len(c.Recent)-1]
}

// nanos is an exact cost: tokens times a price in nano-dollars per token.
func nanos(parts ...int64) policy.Money {
	var m int64
	for i := 0; i+1 < len(parts); i += 2 {
		m += parts[i] * parts[i+1]
	}
	return policy.Money(m)
}

func intp(n int) *int { return &n }

func describe(v any) string {
	b, _ := json.Marshal(v)
	return string(b)
}
