package authz_test

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"io"
	"os"
	"path/filepath"
	"strconv"
	"testing"
	"time"

	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	authv3 "github.com/envoyproxy/go-control-plane/envoy/service/auth/v3"
	extprocv3 "github.com/envoyproxy/go-control-plane/envoy/service/ext_proc/v3"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"google.golang.org/genproto/googleapis/rpc/code"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"

	"github.com/tollgate/tollgate/admission"
	"github.com/tollgate/tollgate/authz"
	"github.com/tollgate/tollgate/internal/fakeclock"
	"github.com/tollgate/tollgate/internal/redistest"
	"github.com/tollgate/tollgate/limiter"
	"github.com/tollgate/tollgate/limiter/redisstore"
	"github.com/tollgate/tollgate/policy"
)

// settlePolicy: one OpenAI route on a roomy token pool, gpt-4o priced by
// model, and acme on a $100 month.
const settlePolicy = `
defaults:
  unknown_client: deny
  reservation_ttl: 1m
pools:
  gpt:
    unit: token
    capacity: 100000
    refill_per_second: 1000
    price: "10/1M"
models:
  "gpt-4o*": {input: "2.50/1M", output: "10/1M", cached_input: "1.25/1M"}
routes:
  openai:
    host: api.openai.com
    path_prefix: /v1/
    provider: openai
    pools: [gpt]
tiers:
  team:
    priority: 20
    max_concurrent: 10
    monthly_budget: "100"
clients:
  acme: {tier: team}
`

const responsesDir = "../testdata/responses"

func recorded(tb testing.TB, name string) []byte {
	tb.Helper()
	b, err := os.ReadFile(filepath.Join(responsesDir, name))
	require.NoError(tb, err)
	return b
}

// settleServer is a deferred-settlement Server with an ext_proc client.
type settleServer struct {
	*testServer
	proc  extprocv3.ExternalProcessorClient
	clk   *fakeclock.Clock
	store admission.Store
}

// storeKinds are the stores the settling tests run on: the memory store on
// the fake clock, and Redis (its own TIME; its own key prefix per test).
var storeKinds = map[string]func(tb testing.TB, clk *fakeclock.Clock) admission.Store{
	"memory": func(tb testing.TB, clk *fakeclock.Clock) admission.Store { return newMemStore(tb, clk) },
	"redis": func(tb testing.TB, _ *fakeclock.Clock) admission.Store {
		s, err := redisstore.New(redisSrv.Client(tb), redisstore.Config{Prefix: redistest.Prefix(tb)})
		require.NoError(tb, err)
		return s
	},
}

func startSettle(tb testing.TB, newStore func(testing.TB, *fakeclock.Clock) admission.Store, yaml string) *settleServer {
	tb.Helper()
	clk := fakeclock.New(epoch)
	store := newStore(tb, clk)
	ts := startServer(tb, serverOpts{policy: yaml, clk: clk, store: store, config: func(c *authz.Config) { c.Settlement = admission.SettleDeferred }})
	conn, err := grpc.NewClient(ts.srv.GRPCAddr().String(), grpc.WithTransportCredentials(insecure.NewCredentials()))
	require.NoError(tb, err)
	tb.Cleanup(func() { assert.NoError(tb, conn.Close()) })
	return &settleServer{testServer: ts, proc: extprocv3.NewExternalProcessorClient(conn), clk: clk, store: store}
}

// admitted is what Check told Envoy about an allowed call.
type admitted struct {
	reservation, route string
	worker             map[string]string // response headers for the worker
}

func (ss *settleServer) check(tb testing.TB, client string, body []byte) (*authv3.CheckResponse, admitted) {
	tb.Helper()
	resp, err := ss.auth.Check(context.Background(), chatCheck(client, body))
	require.NoError(tb, err)
	a := admitted{worker: responseHeaders(tb, resp)}
	for _, h := range resp.GetOkResponse().GetHeaders() {
		switch h.GetHeader().GetKey() {
		case authz.HeaderReservation:
			a.reservation = h.GetHeader().GetValue()
		case authz.HeaderRoute:
			a.route = h.GetHeader().GetValue()
		}
	}
	return resp, a
}

func (ss *settleServer) admit(tb testing.TB, client string, body []byte) admitted {
	tb.Helper()
	resp, a := ss.check(tb, client, body)
	require.Equal(tb, int32(code.Code_OK), resp.GetStatus().GetCode(), resp.GetDeniedResponse().GetBody())
	require.NotEmpty(tb, a.reservation)
	require.Equal(tb, "openai", a.route)
	return a
}

func headerMapOf(kv ...string) *corev3.HeaderMap {
	hm := &corev3.HeaderMap{}
	for i := 0; i+1 < len(kv); i += 2 {
		hm.Headers = append(hm.Headers, &corev3.HeaderValue{Key: kv[i], RawValue: []byte(kv[i+1])})
	}
	return hm
}

// upstream is one recorded upstream answer, as ext_proc sees it.
type upstream struct {
	status  int
	headers []string // name, value, ...
	body    []byte
	chunk   int // bytes per response_body message (0: one)
}

// exchange is what Tollgate's ext_proc answered for one call.
type exchange struct {
	requestBody []byte // the body sent upstream (rewritten or not)
	setHeaders  map[string]string
	// upstreamHeaders are the request headers set at the request headers
	// (e.g. accept-encoding).
	upstreamHeaders map[string]string
	forwarded       []byte // the response body the worker gets
	// workerHeaders are the response headers set for the worker.
	workerHeaders map[string]string
}

// process plays one call through ext_proc the way Envoy does (request
// headers, buffered request body, response headers, streamed response body)
// and waits for the stream to end, which is when the call has settled.
func (ss *settleServer) process(tb testing.TB, a admitted, reqBody []byte, up upstream) exchange {
	tb.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	st, err := ss.proc.Process(ctx)
	require.NoError(tb, err)
	send := func(r *extprocv3.ProcessingRequest) *extprocv3.ProcessingResponse {
		tb.Helper()
		require.NoError(tb, st.Send(r))
		resp, err := st.Recv()
		require.NoError(tb, err)
		return resp
	}
	var ex exchange
	resp := send(&extprocv3.ProcessingRequest{Request: &extprocv3.ProcessingRequest_RequestHeaders{RequestHeaders: &extprocv3.HttpHeaders{
		Headers: headerMapOf(":method", "POST", ":path", "/v1/chat/completions", ":authority", "127.0.0.1:10001",
			"content-type", "application/json", authz.HeaderReservation, a.reservation, authz.HeaderRoute, a.route),
	}}})
	require.NotNil(tb, resp.GetRequestHeaders())
	ex.upstreamHeaders = map[string]string{}
	for _, h := range resp.GetRequestHeaders().GetResponse().GetHeaderMutation().GetSetHeaders() {
		ex.upstreamHeaders[h.GetHeader().GetKey()] = string(h.GetHeader().GetRawValue())
	}
	ex.requestBody = reqBody
	if resp.GetModeOverride() == nil { // the request body is wanted
		resp = send(&extprocv3.ProcessingRequest{Request: &extprocv3.ProcessingRequest_RequestBody{RequestBody: &extprocv3.HttpBody{Body: reqBody, EndOfStream: true}}})
		cr := resp.GetRequestBody().GetResponse()
		if b := cr.GetBodyMutation().GetBody(); b != nil {
			ex.requestBody = b
		}
		ex.setHeaders = map[string]string{}
		for _, h := range cr.GetHeaderMutation().GetSetHeaders() {
			ex.setHeaders[h.GetHeader().GetKey()] = string(h.GetHeader().GetRawValue())
		}
	}
	hdrs := append([]string{":status", strconv.Itoa(up.status)}, up.headers...)
	resp = send(&extprocv3.ProcessingRequest{Request: &extprocv3.ProcessingRequest_ResponseHeaders{ResponseHeaders: &extprocv3.HttpHeaders{
		Headers: headerMapOf(hdrs...), EndOfStream: len(up.body) == 0,
	}}})
	require.NotNil(tb, resp.GetResponseHeaders())
	ex.workerHeaders = map[string]string{}
	for _, h := range resp.GetResponseHeaders().GetResponse().GetHeaderMutation().GetSetHeaders() {
		ex.workerHeaders[h.GetHeader().GetKey()] = string(h.GetHeader().GetRawValue())
	}
	body, n := up.body, up.chunk
	if n <= 0 {
		n = len(body)
	}
	for len(body) > 0 {
		k := min(n, len(body))
		resp = send(&extprocv3.ProcessingRequest{Request: &extprocv3.ProcessingRequest_ResponseBody{ResponseBody: &extprocv3.HttpBody{
			Body: body[:k], EndOfStream: k == len(body),
		}}})
		m := resp.GetResponseBody().GetResponse().GetBodyMutation()
		switch {
		case m == nil:
			ex.forwarded = append(ex.forwarded, body[:k]...)
		case m.GetClearBody():
		default:
			ex.forwarded = append(ex.forwarded, m.GetBody()...)
		}
		body = body[k:]
	}
	require.NoError(tb, st.CloseSend())
	_, err = st.Recv()
	require.ErrorIs(tb, err, io.EOF, "the server ends the stream once the call has settled")
	return ex
}

// usage returns acme's budget this period.
func (ss *settleServer) usage(tb testing.TB) limiter.BudgetState {
	tb.Helper()
	rep, err := ss.srv.Service().Usage(context.Background(), "acme")
	require.NoError(tb, err)
	require.Len(tb, rep.Budgets, 1)
	b := rep.Budgets[0]
	parse := func(s string) policy.Money {
		m, err := policy.ParseMoney(s)
		require.NoError(tb, err)
		return m
	}
	return limiter.BudgetState{Owner: b.Owner, Limit: parse(b.Limit), Spent: parse(b.Spent), Reserved: parse(b.Reserved)}
}

func money(tb testing.TB, s string) policy.Money {
	tb.Helper()
	m, err := policy.ParseMoney(s)
	require.NoError(tb, err, s)
	return m
}

// TestSettleEndToEnd: Check reserves; ext_proc reads a recorded OpenAI JSON
// response and a recorded stream, and the budget ends at exactly their
// actual cost; a reset stream ends committed at the estimate; an upstream
// 429 with Retry-After makes the next Check deny until then. Over real
// gRPC on loopback, on both stores.
func TestSettleEndToEnd(t *testing.T) {
	for name, newStore := range storeKinds {
		t.Run(name, func(t *testing.T) {
			ss := startSettle(t, newStore, settlePolicy)
			var spent policy.Money

			// 1. A JSON response: 1117 prompt tokens (1024 of them cached) and
			// 46 out, at gpt-4o's prices: 93 × $2.50/1M + 1024 × $1.25/1M +
			// 46 × $10/1M.
			body := chatBody("gpt-4o", 300, "Describe the picture.")
			a := ss.admit(t, "acme", body)
			est := money(t, a.worker[authz.HeaderEstimatedCost])
			require.Positive(t, est)
			u := ss.usage(t)
			assert.Equal(t, est*120/100, u.Reserved, "conservative: 120% of the estimate held")
			assert.Equal(t, (100*policy.NanosPerDollar - u.Reserved).String(), a.worker[authz.HeaderBudgetRemaining])

			ex := ss.process(t, a, body, upstream{status: 200, headers: []string{"content-type", "application/json"}, body: recorded(t, "openai-chat.json"), chunk: 200})
			assert.Equal(t, recorded(t, "openai-chat.json"), ex.forwarded, "a JSON response passes untouched")
			assert.Equal(t, string(body), string(ex.requestBody), "a call that does not stream is not rewritten")
			spent += 232_500 + 1_280_000 + 460_000
			u = ss.usage(t)
			assert.Equal(t, spent, u.Spent, "the budget holds exactly the actual cost")
			assert.Zero(t, u.Reserved, "nothing left held")
			assert.Zero(t, ss.srv.Service().Pending())

			// 2. A stream that did not ask for its usage: Tollgate asks for it,
			// reads it (19 in, 10 out), and strips it again for the worker.
			stream := []byte(`{"model":"gpt-4o-mini","stream":true,"max_tokens":50,"messages":[{"role":"user","content":"hi"}]}`)
			a = ss.admit(t, "acme", stream)
			sse := recorded(t, "openai-chat-stream.sse")
			ex = ss.process(t, a, stream, upstream{status: 200, headers: []string{"content-type", "text/event-stream; charset=utf-8"}, body: sse, chunk: 37})
			var opts struct {
				StreamOptions struct {
					IncludeUsage bool `json:"include_usage"`
				} `json:"stream_options"`
			}
			require.NoError(t, json.Unmarshal(ex.requestBody, &opts))
			assert.True(t, opts.StreamOptions.IncludeUsage, "the request asks for its usage")
			assert.Equal(t, strconv.Itoa(len(ex.requestBody)), ex.setHeaders["content-length"])
			wantStream := bytes.Replace(sse, sse[bytes.Index(sse, []byte(`data: {"id":"chatcmpl-BKj2pWqL3n","object":"chat.completion.chunk","created":1744213991,"model":"gpt-4o-mini-2024-07-18","service_tier":"default","system_fingerprint":"fp_44added55e","choices":[],`)):bytes.Index(sse, []byte("data: [DONE]"))], nil, 1)
			// OpenAI adds "usage":null once asked: removed from each event
			// that came whole in one chunk (of 37 bytes here, none did).
			noNull := func(b []byte) string { return string(bytes.ReplaceAll(b, []byte(`,"usage":null`), nil)) }
			assert.Equal(t, noNull(wantStream), noNull(ex.forwarded), "the worker gets the stream it asked for")
			spent += 19*2500 + 10*10_000
			u = ss.usage(t)
			assert.Equal(t, spent, u.Spent)
			assert.Zero(t, u.Reserved)

			// The next call's header reflects what was settled.
			next := chatBody("gpt-4o", 10, "hi")
			a = ss.admit(t, "acme", next)
			held := money(t, a.worker[authz.HeaderEstimatedCost]) * 120 / 100
			assert.Equal(t, (100*policy.NanosPerDollar - spent - held).String(), a.worker[authz.HeaderBudgetRemaining])

			// 3. The stream resets before any response: committed at the
			// estimate, its slot freed.
			est = money(t, a.worker[authz.HeaderEstimatedCost])
			ctx, cancel := context.WithCancel(context.Background())
			st, err := ss.proc.Process(ctx)
			require.NoError(t, err)
			require.NoError(t, st.Send(&extprocv3.ProcessingRequest{Request: &extprocv3.ProcessingRequest_RequestHeaders{RequestHeaders: &extprocv3.HttpHeaders{
				Headers: headerMapOf(":method", "POST", authz.HeaderReservation, a.reservation, authz.HeaderRoute, a.route)}}}))
			_, err = st.Recv()
			require.NoError(t, err)
			cancel()
			spent += est
			require.Eventually(t, func() bool { return ss.srv.Service().Pending() == 0 }, 10*time.Second, 5*time.Millisecond)
			u = ss.usage(t)
			assert.Equal(t, spent, u.Spent, "a reset stream is committed at its estimate")
			assert.Zero(t, u.Reserved)

			// 4. An upstream 429 with Retry-After: the call is released (the
			// provider did nothing), and the pool is paused until then.
			a = ss.admit(t, "acme", next)
			ss.process(t, a, next, upstream{status: 429, body: recorded(t, "openai-429.json"),
				headers: []string{"content-type", "application/json", "retry-after", "20", "x-ratelimit-remaining-tokens", "0", "x-ratelimit-reset-tokens", "1.442s"}})
			u = ss.usage(t)
			assert.Equal(t, spent, u.Spent, "a refused call costs nothing")
			resp, denied := ss.check(t, "acme", next)
			require.Equal(t, int32(code.Code_RESOURCE_EXHAUSTED), resp.GetStatus().GetCode(), "the pool is paused")
			retry, err := strconv.Atoi(denied.worker["retry-after"])
			require.NoError(t, err)
			// The refusal names the provider's pause, and says so in its
			// reason's sentence, not as a plain local rate limit.
			assert.Contains(t, resp.GetDeniedResponse().GetBody(), "The upstream provider answered 429 for pool gpt and asked for a pause")
			assert.NotEmpty(t, denied.worker["x-request-id"], "every local reply names a request id")
			assert.NotEmpty(t, denied.worker["retry-after-ms"])
			if name == "memory" {
				cost := tokens(10, next)
				// 20 s of pause, then the call's tokens at 1000 a second.
				assert.Equal(t, 20+int((cost+999)/1000), retry)
				ss.clk.Advance(time.Duration(retry) * time.Second)
				ss.admit(t, "acme", next)
			} else { // Redis decides on its own clock: the pause has barely begun
				assert.GreaterOrEqual(t, retry, 20)
				assert.LessOrEqual(t, retry, 21)
			}
			assert.Equal(t, 1.0, metricValue(t, ss.reg, "tollgate_upstream_signals_total", map[string]string{"pool": "gpt", "kind": "pause"}))
			for labels, want := range map[[2]string]float64{
				{"actual", "usage"}:            2,
				{"estimate", "no_response"}:    1,
				{"released", "upstream_error"}: 1,
			} {
				assert.Equal(t, want, metricValue(t, ss.reg, "tollgate_settle_calls_total", map[string]string{"outcome": labels[0], "reason": labels[1]}), labels)
			}
			assert.InDelta(t, float64(232_500+1_280_000+460_000+147_500)/1e9,
				metricValue(t, ss.reg, "tollgate_costing_actual_dollars_total", map[string]string{"model": "gpt-4o*"}), 1e-12)
			requireLint(t, ss.reg)
		})
	}
}

// TestSettleRefundsUnusedTokens: the pool gets back what a call reserved and
// did not use, so a pool sized for real usage is not starved by max_tokens.
func TestSettleRefundsUnusedTokens(t *testing.T) {
	for name, newStore := range storeKinds {
		t.Run(name, func(t *testing.T) {
			ss := startSettle(t, newStore, settlePolicy)
			body := chatBody("gpt-4o", 5000, "Describe the picture.")
			a := ss.admit(t, "acme", body)
			charged := tokens(5000, body)
			ss.process(t, a, body, upstream{status: 200, headers: []string{"content-type", "application/json"}, body: recorded(t, "openai-chat.json")})
			st, err := ss.store.Throttle(context.Background(), []limiter.Throttle{{Key: limiter.Key{Pool: "gpt"}, Limit: limiter.Limit{Capacity: 100000, Refill: 1000}, Cap: limiter.NoCap}}, time.Time{})
			require.NoError(t, err)
			// 1163 used of the charge; Redis may have refilled a little since.
			assert.GreaterOrEqual(t, st[0].Remaining, int64(100000-1163))
			assert.Less(t, st[0].Remaining, int64(100000-1163)+charged-1163, "refilled less than the unused part")
			if name == "memory" {
				assert.Equal(t, int64(100000-1163), st[0].Remaining)
			}
		})
	}
}

// TestProcessUntracked: a call Check did not route passes through ext_proc
// with a mode that asks Envoy for nothing more.
func TestProcessUntracked(t *testing.T) {
	ss := startSettle(t, storeKinds["memory"], settlePolicy)
	st, err := ss.proc.Process(context.Background())
	require.NoError(t, err)
	require.NoError(t, st.Send(&extprocv3.ProcessingRequest{Request: &extprocv3.ProcessingRequest_RequestHeaders{RequestHeaders: &extprocv3.HttpHeaders{
		Headers: headerMapOf(":method", "GET", ":path", "/health")}}}))
	resp, err := st.Recv()
	require.NoError(t, err)
	mo := resp.GetModeOverride()
	require.NotNil(t, mo)
	assert.Equal(t, "SKIP", mo.GetResponseHeaderMode().String())
	assert.Equal(t, "NONE", mo.GetResponseBodyMode().String())
	// Envoy without allow_mode_override sends the rest anyway: each gets its
	// empty answer.
	require.NoError(t, st.Send(&extprocv3.ProcessingRequest{Request: &extprocv3.ProcessingRequest_ResponseHeaders{ResponseHeaders: &extprocv3.HttpHeaders{
		Headers: headerMapOf(":status", "200")}}}))
	resp, err = st.Recv()
	require.NoError(t, err)
	assert.NotNil(t, resp.GetResponseHeaders())
	require.NoError(t, st.CloseSend())
	_, err = st.Recv()
	assert.True(t, errors.Is(err, io.EOF))
	assert.Equal(t, 1.0, metricValue(t, ss.reg, "tollgate_settle_calls_total", map[string]string{"outcome": "untracked", "reason": "none"}))
}
