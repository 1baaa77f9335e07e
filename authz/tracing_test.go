package authz_test

import (
	"context"
	"net/http"
	"testing"
	"time"

	rlcommon "github.com/envoyproxy/go-control-plane/envoy/extensions/common/ratelimit/v3"
	authv3 "github.com/envoyproxy/go-control-plane/envoy/service/auth/v3"
	extprocv3 "github.com/envoyproxy/go-control-plane/envoy/service/ext_proc/v3"
	rlsv3 "github.com/envoyproxy/go-control-plane/envoy/service/ratelimit/v3"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"google.golang.org/genproto/googleapis/rpc/code"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/metadata"

	"github.com/tollgate/tollgate/admission"
	"github.com/tollgate/tollgate/authz"
	"github.com/tollgate/tollgate/internal/fakeclock"
	"github.com/tollgate/tollgate/internal/otlptest"
	"github.com/tollgate/tollgate/internal/tracing"
)

// Envoy's span for a call, as its traceparent carries it.
const (
	envoyTrace = "4bf92f3577b34da6a3ce929d0e0e4736"
	envoySpan  = "00f067aa0ba902b7"
	envoyProc  = "b7ad6b7169203331" // Envoy's span for the ext_proc stream
)

func traceparent(span string) string { return "00-" + envoyTrace + "-" + span + "-01" }

// startTracer sends every trace to a fresh in-process collector; flush
// (the tracer's Shutdown) delivers what is buffered.
func startTracer(t *testing.T) (*tracing.Tracer, *otlptest.Collector, func()) {
	t.Helper()
	col := otlptest.Start(t)
	cfg := tracing.DefaultConfig()
	cfg.Endpoint, cfg.Insecure, cfg.SampleRatio = col.Addr(), true, 1
	tr, err := tracing.New(context.Background(), cfg)
	require.NoError(t, err)
	require.True(t, tr.On())
	flush := func() {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		require.NoError(t, tr.Shutdown(ctx))
	}
	t.Cleanup(func() { _ = tr.Shutdown(context.Background()) })
	return tr, col, flush
}

// only returns the single span named name.
func only(t *testing.T, col *otlptest.Collector, name string) otlptest.Span {
	t.Helper()
	got := col.Named(name)
	require.Len(t, got, 1, "spans named %s among %+v", name, col.Spans())
	return got[0]
}

// childrenOf returns the names of the spans whose parent is span.
func childrenOf(col *otlptest.Collector, span otlptest.Span) []string {
	var out []string
	for _, s := range col.Spans() {
		if s.ParentID == span.SpanID && s.TraceID == span.TraceID {
			out = append(out, s.Name)
		}
	}
	return out
}

// TestTracingCheckAndSettle: a Check whose request carries Envoy's
// traceparent is a span under it, with the reservation's store call as its
// child; the ext_proc stream that settles the call, opened with Envoy's
// span in its gRPC metadata, is a settle span under that one, with the
// store's finish as its child. No attribute carries the body or a token.
func TestTracingCheckAndSettle(t *testing.T) {
	tr, col, flush := startTracer(t)
	ts := startServer(t, serverOpts{policy: settlePolicy, tracer: tr,
		config: func(c *authz.Config) { c.Settlement = admission.SettleDeferred }})
	// Envoy's gRPC client puts its span for the ext_proc stream in the
	// stream's metadata.
	conn, err := grpc.NewClient(ts.srv.GRPCAddr().String(), grpc.WithTransportCredentials(insecure.NewCredentials()),
		grpc.WithStreamInterceptor(func(ctx context.Context, desc *grpc.StreamDesc, cc *grpc.ClientConn, method string, streamer grpc.Streamer, opts ...grpc.CallOption) (grpc.ClientStream, error) {
			return streamer(metadata.AppendToOutgoingContext(ctx, "traceparent", traceparent(envoyProc)), desc, cc, method, opts...)
		}))
	require.NoError(t, err)
	t.Cleanup(func() { assert.NoError(t, conn.Close()) })
	ss := &settleServer{testServer: ts, proc: extprocv3.NewExternalProcessorClient(conn)}

	body := chatBody("gpt-4o", 100, "Say hello.")
	cr := chatCheck("acme", body)
	cr.Attributes.Request.Http.Headers["traceparent"] = traceparent(envoySpan)
	cr.Attributes.Request.Http.Headers["authorization"] = "Bearer sk-secret"
	resp, err := ss.auth.Check(context.Background(), cr)
	require.NoError(t, err)
	require.Equal(t, int32(code.Code_OK), resp.GetStatus().GetCode())
	a := admitted{}
	for _, h := range resp.GetOkResponse().GetHeaders() {
		switch h.GetHeader().GetKey() {
		case authz.HeaderReservation:
			a.reservation = h.GetHeader().GetValue()
		case authz.HeaderRoute:
			a.route = h.GetHeader().GetValue()
		}
	}
	require.NotEmpty(t, a.reservation)
	ss.process(t, a, body, upstream{status: 200, headers: []string{"content-type", "application/json"}, body: recorded(t, "openai-chat.json")})
	flush()

	check := only(t, col, "tollgate.check")
	assert.Equal(t, envoyTrace, check.TraceID)
	assert.Equal(t, envoySpan, check.ParentID, "the check is a child of Envoy's span")
	assert.Equal(t, "tollgate", check.Service)
	assert.Equal(t, "ext_authz", check.Attrs["tollgate.transport"])
	assert.Equal(t, "allowed", check.Attrs["tollgate.decision"])
	assert.Equal(t, "openai", check.Attrs["tollgate.route"])
	assert.Equal(t, "acme", check.Attrs["tollgate.client"])
	assert.Equal(t, "req-1", check.Attrs["tollgate.request_id"])
	assert.Contains(t, childrenOf(col, check), "tollgate.store.reserve")

	settle := only(t, col, "tollgate.settle")
	assert.Equal(t, envoyTrace, settle.TraceID)
	assert.Equal(t, envoyProc, settle.ParentID, "the settle is a child of Envoy's ext_proc span")
	assert.Equal(t, "actual", settle.Attrs["tollgate.settle.outcome"])
	assert.Equal(t, "200", settle.Attrs["http.response.status_code"])
	assert.Equal(t, []string{"tollgate.store.finish"}, childrenOf(col, settle))

	for _, s := range col.Spans() {
		for k, v := range s.Attrs {
			assert.NotContains(t, v, "sk-secret", "%s %s", s.Name, k)
			assert.NotContains(t, v, "Say hello", "%s %s", s.Name, k)
		}
	}
}

// TestTracingHeldCall: a call held in the queue has a wait span under its
// check, from hold to grant, and the queue's try on its behalf is a store
// call under the wait.
func TestTracingHeldCall(t *testing.T) {
	tr, col, flush := startTracer(t)
	clk := fakeclock.New(epoch)
	ts := startServer(t, serverOpts{policy: queuePolicy, clk: clk, tracer: tr})
	ctx := context.Background()
	checkOf := func(client string) *authv3.CheckRequest {
		cr := chatCheck(client, chatBody("gpt-4o", 5, "hi"))
		cr.Attributes.Request.Http.Headers["traceparent"] = traceparent(envoySpan)
		return cr
	}
	resp, err := ts.auth.Check(ctx, checkOf("warmup"))
	require.NoError(t, err)
	require.Equal(t, int32(code.Code_OK), resp.GetStatus().GetCode())

	answered := make(chan *authv3.CheckResponse, 1)
	go func() {
		resp, err := ts.auth.Check(ctx, checkOf("s"))
		assert.NoError(t, err)
		answered <- resp
	}()
	require.Eventually(t, func() bool { return ts.srv.Service().QueueStatus().Total == 1 && clk.Pending() > 0 },
		10*time.Second, time.Millisecond)
	clk.Advance(time.Second)
	resp = recv(t, answered)
	require.Equal(t, int32(code.Code_OK), resp.GetStatus().GetCode())
	flush()

	wait := only(t, col, "tollgate.queue.wait")
	assert.Equal(t, "granted", wait.Attrs["tollgate.queue.outcome"])
	assert.Equal(t, "normal", wait.Attrs["tollgate.class"])
	assert.Equal(t, "one", wait.Attrs["tollgate.queue.pool"])
	assert.Equal(t, "1000", wait.Attrs["tollgate.queue.waited_ms"])
	var heldCheck otlptest.Span
	for _, c := range col.Named("tollgate.check") {
		if c.SpanID == wait.ParentID {
			heldCheck = c
		}
	}
	require.NotEmpty(t, heldCheck.SpanID, "the wait is a child of its check")
	assert.Equal(t, "s", heldCheck.Attrs["tollgate.client"])
	assert.Equal(t, "1000", heldCheck.Attrs["tollgate.queue.waited_ms"])
	assert.Contains(t, childrenOf(col, wait), "tollgate.store.reserve", "the queue's try is under the wait")
}

// TestTracingHTTPCheckAndRLS: ext_authz over HTTP takes its parent from
// the check's headers, the rate limit service from the call's metadata.
func TestTracingHTTPCheckAndRLS(t *testing.T) {
	tr, col, flush := startTracer(t)
	ts := startServer(t, serverOpts{policy: transportPolicy, tracer: tr,
		config: func(c *authz.Config) { c.AuthzHTTPAddr = "127.0.0.1:0" }})
	chat := checkCall{host: "api.openai.com", path: "/v1/chat/completions", client: "a", contentType: "application/json",
		requestID: "req-chat", body: chatBody("gpt-4", 100, "Say hello.")}
	req := chat.httpCheck(t, "http://"+ts.srv.AuthzHTTPAddr().String())
	req.Header.Set("traceparent", traceparent(envoySpan))
	hc := &http.Client{Transport: &http.Transport{}}
	t.Cleanup(hc.CloseIdleConnections)
	resp, err := hc.Do(req)
	require.NoError(t, err)
	require.NoError(t, resp.Body.Close())
	require.Equal(t, http.StatusOK, resp.StatusCode)

	conn, err := grpc.NewClient(ts.srv.GRPCAddr().String(), grpc.WithTransportCredentials(insecure.NewCredentials()))
	require.NoError(t, err)
	t.Cleanup(func() { assert.NoError(t, conn.Close()) })
	rctx := metadata.AppendToOutgoingContext(context.Background(), "traceparent", traceparent(envoyProc))
	_, err = rlsv3.NewRateLimitServiceClient(conn).ShouldRateLimit(rctx, &rlsv3.RateLimitRequest{Domain: "internal",
		Descriptors: []*rlcommon.RateLimitDescriptor{{Entries: []*rlcommon.RateLimitDescriptor_Entry{{Key: "path", Value: "/x"}}}}})
	require.NoError(t, err)
	flush()

	check := only(t, col, "tollgate.check")
	assert.Equal(t, envoyTrace, check.TraceID)
	assert.Equal(t, envoySpan, check.ParentID)
	assert.Equal(t, "ext_authz_http", check.Attrs["tollgate.transport"])
	assert.Equal(t, "req-chat", check.Attrs["tollgate.request_id"])

	rl := only(t, col, "tollgate.rls")
	assert.Equal(t, envoyProc, rl.ParentID)
	assert.Equal(t, "internal", rl.Attrs["tollgate.rls.domain"])
	assert.Equal(t, "1", rl.Attrs["tollgate.rls.descriptors"])
	assert.Equal(t, "false", rl.Attrs["tollgate.rls.over"])
}

// TestTracingOff: without an endpoint there is no tracer, and a server
// without one traces nothing (the nil tracer is safe everywhere).
func TestTracingOff(t *testing.T) {
	tr, err := tracing.New(context.Background(), tracing.DefaultConfig())
	require.NoError(t, err)
	require.False(t, tr.On())
	ts := startServer(t, serverOpts{policy: settlePolicy, tracer: tr})
	cr := chatCheck("acme", chatBody("gpt-4o", 100, "Say hello."))
	cr.Attributes.Request.Http.Headers["traceparent"] = traceparent(envoySpan)
	resp, err := ts.auth.Check(context.Background(), cr)
	require.NoError(t, err)
	require.Equal(t, int32(code.Code_OK), resp.GetStatus().GetCode())
	require.NoError(t, tr.Shutdown(context.Background()))
}
