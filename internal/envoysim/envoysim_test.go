package envoysim_test

import (
	"bufio"
	"context"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	procfilterv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/http/ext_proc/v3"
	authv3 "github.com/envoyproxy/go-control-plane/envoy/service/auth/v3"
	extprocv3 "github.com/envoyproxy/go-control-plane/envoy/service/ext_proc/v3"
	typev3 "github.com/envoyproxy/go-control-plane/envoy/type/v3"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"google.golang.org/genproto/googleapis/rpc/code"
	rpcstatus "google.golang.org/genproto/googleapis/rpc/status"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"

	"github.com/tollgate/tollgate/internal/envoysim"
)

const sidecar = "../../envoy/sidecar.yaml"

func TestLoadSidecar(t *testing.T) {
	ls, err := envoysim.Load(sidecar)
	require.NoError(t, err)
	require.Len(t, ls, 5)
	for name, host := range map[string]string{"openai": "api.openai.com", "anthropic": "api.anthropic.com",
		"twilio": "api.twilio.com", "sendgrid": "api.sendgrid.com", "cloudflare": "api.cloudflare.com"} {
		l := ls[name]
		require.NotNil(t, l, name)
		assert.Equal(t, host, l.HostRewrite)
		assert.Equal(t, map[string]string{"upstream_host": host}, l.ContextExtensions)
		assert.Contains(t, l.RequestHeadersToRemove, "x-tollgate-client")
		require.NotNil(t, l.Authz)
		require.NotNil(t, l.Proc)
		assert.True(t, l.Proc.GetAllowModeOverride())
		assert.Equal(t, 200*time.Millisecond, l.Proc.GetMessageTimeout().AsDuration())
		assert.Equal(t, procfilterv3.ProcessingMode_STREAMED, l.Proc.GetProcessingMode().GetResponseBodyMode())
	}
}

// authzFake is a hand-written ext_authz server: it records each request
// and answers with decide.
type authzFake struct {
	authv3.UnimplementedAuthorizationServer
	decide func(*authv3.CheckRequest) *authv3.CheckResponse
	mu     sync.Mutex
	got    []*authv3.CheckRequest
}

func (a *authzFake) Check(_ context.Context, r *authv3.CheckRequest) (*authv3.CheckResponse, error) {
	a.mu.Lock()
	a.got = append(a.got, r)
	a.mu.Unlock()
	return a.decide(r), nil
}

// procFake is a hand-written ext_proc server: answer builds each answer;
// it records the kinds of messages it saw.
type procFake struct {
	extprocv3.UnimplementedExternalProcessorServer
	answer func(*extprocv3.ProcessingRequest) *extprocv3.ProcessingResponse
	mu     sync.Mutex
	kinds  []string
	reqHdr map[string]string
}

func (p *procFake) Process(st extprocv3.ExternalProcessor_ProcessServer) error {
	for {
		req, err := st.Recv()
		if err != nil {
			return nil
		}
		p.mu.Lock()
		switch r := req.GetRequest().(type) {
		case *extprocv3.ProcessingRequest_RequestHeaders:
			p.kinds = append(p.kinds, "request_headers")
			p.reqHdr = map[string]string{}
			for _, h := range r.RequestHeaders.GetHeaders().GetHeaders() {
				p.reqHdr[h.GetKey()] = string(h.GetRawValue())
			}
		case *extprocv3.ProcessingRequest_RequestBody:
			p.kinds = append(p.kinds, "request_body")
		case *extprocv3.ProcessingRequest_ResponseHeaders:
			p.kinds = append(p.kinds, "response_headers")
		case *extprocv3.ProcessingRequest_ResponseBody:
			p.kinds = append(p.kinds, "response_body")
		}
		p.mu.Unlock()
		if err := st.Send(p.answer(req)); err != nil {
			return nil
		}
	}
}

func (p *procFake) seen() []string {
	p.mu.Lock()
	defer p.mu.Unlock()
	return append([]string(nil), p.kinds...)
}

// passThrough answers every message with no change.
func passThrough(req *extprocv3.ProcessingRequest) *extprocv3.ProcessingResponse {
	switch req.GetRequest().(type) {
	case *extprocv3.ProcessingRequest_RequestHeaders:
		return &extprocv3.ProcessingResponse{Response: &extprocv3.ProcessingResponse_RequestHeaders{RequestHeaders: &extprocv3.HeadersResponse{}}}
	case *extprocv3.ProcessingRequest_RequestBody:
		return &extprocv3.ProcessingResponse{Response: &extprocv3.ProcessingResponse_RequestBody{RequestBody: &extprocv3.BodyResponse{}}}
	case *extprocv3.ProcessingRequest_ResponseHeaders:
		return &extprocv3.ProcessingResponse{Response: &extprocv3.ProcessingResponse_ResponseHeaders{ResponseHeaders: &extprocv3.HeadersResponse{}}}
	default:
		return &extprocv3.ProcessingResponse{Response: &extprocv3.ProcessingResponse_ResponseBody{ResponseBody: &extprocv3.BodyResponse{}}}
	}
}

func allow(*authv3.CheckRequest) *authv3.CheckResponse {
	return &authv3.CheckResponse{Status: &rpcstatus.Status{Code: int32(code.Code_OK)},
		HttpResponse: &authv3.CheckResponse_OkResponse{OkResponse: &authv3.OkHttpResponse{}}}
}

func hv(k, v string) *corev3.HeaderValueOption {
	return &corev3.HeaderValueOption{Header: &corev3.HeaderValue{Key: k, Value: v}}
}

// rig is a stand-in for the openai listener wired to the fakes and to
// upstream, each on loopback.
type rig struct {
	url   string
	authz *authzFake
	proc  *procFake
}

func newRig(t *testing.T, authz *authzFake, proc *procFake, upstream http.Handler, edit func(*envoysim.Listener)) *rig {
	t.Helper()
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	require.NoError(t, err)
	gs := grpc.NewServer()
	authv3.RegisterAuthorizationServer(gs, authz)
	extprocv3.RegisterExternalProcessorServer(gs, proc)
	go func() { _ = gs.Serve(lis) }()
	t.Cleanup(gs.Stop)
	conn, err := grpc.NewClient(lis.Addr().String(), grpc.WithTransportCredentials(insecure.NewCredentials()))
	require.NoError(t, err)
	t.Cleanup(func() { _ = conn.Close() })

	up := httptest.NewServer(upstream)
	t.Cleanup(up.Close)
	ls, err := envoysim.Load(sidecar)
	require.NoError(t, err)
	l := ls["openai"]
	if edit != nil {
		edit(l)
	}
	p, err := envoysim.New(envoysim.Config{Listener: l, Authz: authv3.NewAuthorizationClient(conn),
		Proc: extprocv3.NewExternalProcessorClient(conn), Upstream: strings.TrimPrefix(up.URL, "http://")})
	require.NoError(t, err)
	t.Cleanup(p.Close)
	front := httptest.NewServer(p)
	t.Cleanup(front.Close)
	return &rig{url: front.URL, authz: authz, proc: proc}
}

func call(t *testing.T, url, body string) *http.Response {
	t.Helper()
	req, err := http.NewRequest(http.MethodPost, url+"/v1/chat/completions", strings.NewReader(body))
	require.NoError(t, err)
	req.Header.Set("authorization", "Bearer sk-secret")
	req.Header.Set("x-tollgate-client", "acme")
	req.Header.Set("content-type", "application/json")
	resp, err := http.DefaultClient.Do(req)
	require.NoError(t, err)
	t.Cleanup(func() { _ = resp.Body.Close() })
	return resp
}

// TestAllowedCall follows one call: the check gets the body and the
// route's context extension but not the credentials; its header
// mutations reach ext_proc and the upstream; the router strips
// Tollgate's headers; the request body is replaced with the
// content-length ext_proc set; the response streams chunk by chunk through
// ext_proc's rewrite.
func TestAllowedCall(t *testing.T) {
	authz := &authzFake{decide: func(*authv3.CheckRequest) *authv3.CheckResponse {
		return &authv3.CheckResponse{Status: &rpcstatus.Status{Code: int32(code.Code_OK)},
			HttpResponse: &authv3.CheckResponse_OkResponse{OkResponse: &authv3.OkHttpResponse{
				Headers:              []*corev3.HeaderValueOption{hv("x-tollgate-reservation", "r1")},
				HeadersToRemove:      []string{"x-drop"},
				ResponseHeadersToAdd: []*corev3.HeaderValueOption{hv("x-tollgate-cost", "0.01")},
			}}}
	}}
	newBody := `{"model":"cheaper"}`
	proc := &procFake{answer: func(req *extprocv3.ProcessingRequest) *extprocv3.ProcessingResponse {
		switch r := req.GetRequest().(type) {
		case *extprocv3.ProcessingRequest_RequestBody:
			return &extprocv3.ProcessingResponse{Response: &extprocv3.ProcessingResponse_RequestBody{RequestBody: &extprocv3.BodyResponse{
				Response: &extprocv3.CommonResponse{
					HeaderMutation: &extprocv3.HeaderMutation{SetHeaders: []*corev3.HeaderValueOption{hv("content-length", "19")}},
					BodyMutation:   &extprocv3.BodyMutation{Mutation: &extprocv3.BodyMutation_Body{Body: []byte(newBody)}},
				}}}}
		case *extprocv3.ProcessingRequest_ResponseBody:
			return &extprocv3.ProcessingResponse{Response: &extprocv3.ProcessingResponse_ResponseBody{ResponseBody: &extprocv3.BodyResponse{
				Response: &extprocv3.CommonResponse{BodyMutation: &extprocv3.BodyMutation{Mutation: &extprocv3.BodyMutation_Body{
					Body: []byte(strings.ToUpper(string(r.ResponseBody.GetBody())))}}}}}}
		}
		return passThrough(req)
	}}
	release := make(chan struct{})
	var upHdr http.Header
	var upHost, upBody string
	upstream := http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		b, _ := io.ReadAll(r.Body)
		upHdr, upHost, upBody = r.Header.Clone(), r.Host, string(b)
		w.Header().Set("content-type", "text/event-stream")
		w.WriteHeader(http.StatusOK)
		_, _ = io.WriteString(w, "data: one\n\n")
		w.(http.Flusher).Flush()
		<-release // the second event waits until the worker has the first
		_, _ = io.WriteString(w, "data: two\n\n")
	})
	rg := newRig(t, authz, proc, upstream, nil)
	resp := call(t, rg.url, `{"model":"gpt-4.1"}`)
	require.Equal(t, http.StatusOK, resp.StatusCode)
	assert.Equal(t, "0.01", resp.Header.Get("x-tollgate-cost"))
	br := bufio.NewReader(resp.Body)
	line, err := br.ReadString('\n')
	require.NoError(t, err)
	assert.Equal(t, "DATA: ONE\n", line, "the first event arrives before the upstream sends the second")
	close(release)
	rest, err := io.ReadAll(br)
	require.NoError(t, err)
	assert.Equal(t, "\nDATA: TWO\n\n", string(rest))

	require.Len(t, authz.got, 1)
	h := authz.got[0].GetAttributes().GetRequest().GetHttp()
	assert.Equal(t, `{"model":"gpt-4.1"}`, string(h.GetRawBody()))
	assert.Equal(t, map[string]string{"upstream_host": "api.openai.com"}, authz.got[0].GetAttributes().GetContextExtensions())
	assert.NotContains(t, h.GetHeaders(), "authorization")
	assert.Equal(t, "acme", h.GetHeaders()["x-tollgate-client"])
	assert.NotEmpty(t, h.GetId())

	assert.Equal(t, []string{"request_headers", "request_body", "response_headers", "response_body", "response_body", "response_body"}, proc.seen())
	assert.Equal(t, "r1", proc.reqHdr["x-tollgate-reservation"])
	assert.NotContains(t, proc.reqHdr, "authorization")

	assert.Equal(t, "api.openai.com", upHost)
	assert.Equal(t, newBody, upBody)
	assert.Equal(t, "Bearer sk-secret", upHdr.Get("authorization"))
	assert.Empty(t, upHdr.Get("x-tollgate-client"), "the router removes Tollgate's headers")
	assert.Empty(t, upHdr.Get("x-tollgate-reservation"))
}

func TestDenied(t *testing.T) {
	authz := &authzFake{decide: func(*authv3.CheckRequest) *authv3.CheckResponse {
		return &authv3.CheckResponse{Status: &rpcstatus.Status{Code: int32(code.Code_RESOURCE_EXHAUSTED)},
			HttpResponse: &authv3.CheckResponse_DeniedResponse{DeniedResponse: &authv3.DeniedHttpResponse{
				Status:  &typev3.HttpStatus{Code: typev3.StatusCode_TooManyRequests},
				Headers: []*corev3.HeaderValueOption{hv("retry-after", "7"), hv("content-type", "application/json")},
				Body:    `{"error":{"code":"rate_limit_exceeded"}}`,
			}}}
	}}
	calls := 0
	rg := newRig(t, authz, &procFake{answer: passThrough}, http.HandlerFunc(func(http.ResponseWriter, *http.Request) { calls++ }), nil)
	resp := call(t, rg.url, `{}`)
	assert.Equal(t, http.StatusTooManyRequests, resp.StatusCode)
	assert.Equal(t, "7", resp.Header.Get("retry-after"))
	b, _ := io.ReadAll(resp.Body)
	assert.JSONEq(t, `{"error":{"code":"rate_limit_exceeded"}}`, string(b))
	assert.Zero(t, calls)
	assert.Empty(t, rg.proc.seen())
}

// TestDeniedWithStatus200: a denied check may carry any status, 200
// included (Envoy takes denied_response.status whenever it is set, and
// 403 only when it is not): the worker gets that status, the headers and
// the body as Envoy's local reply, which sets content-length itself. This
// is how Tollgate replays a cached answer; nothing goes upstream and
// ext_proc never runs.
func TestDeniedWithStatus200(t *testing.T) {
	const stream = "data: {\"choices\":[{\"delta\":{\"content\":\"Hi\"}}]}\n\ndata: [DONE]\n\n"
	authz := &authzFake{decide: func(*authv3.CheckRequest) *authv3.CheckResponse {
		return &authv3.CheckResponse{Status: &rpcstatus.Status{Code: int32(code.Code_PERMISSION_DENIED)},
			HttpResponse: &authv3.CheckResponse_DeniedResponse{DeniedResponse: &authv3.DeniedHttpResponse{
				Status: &typev3.HttpStatus{Code: typev3.StatusCode_OK},
				Headers: []*corev3.HeaderValueOption{hv("content-type", "text/event-stream"), hv("x-tollgate-cache", "hit"),
					hv("age", "12"), hv("openai-processing-ms", "321")},
				Body: stream,
			}}}
	}}
	calls := 0
	rg := newRig(t, authz, &procFake{answer: passThrough}, http.HandlerFunc(func(http.ResponseWriter, *http.Request) { calls++ }), nil)
	resp := call(t, rg.url, `{}`)
	assert.Equal(t, http.StatusOK, resp.StatusCode)
	for k, v := range map[string]string{"content-type": "text/event-stream", "x-tollgate-cache": "hit", "age": "12",
		"openai-processing-ms": "321", "content-length": strconv.Itoa(len(stream)), "server": "envoy"} {
		assert.Equal(t, v, resp.Header.Get(k), k)
	}
	b, err := io.ReadAll(resp.Body)
	require.NoError(t, err)
	assert.Equal(t, stream, string(b))
	assert.Zero(t, calls)
	assert.Empty(t, rg.proc.seen())
}

func TestAuthzUnreachableFailsClosed(t *testing.T) {
	rg := newRig(t, &authzFake{decide: allow}, &procFake{answer: passThrough}, http.NotFoundHandler(), func(l *envoysim.Listener) {
		l.Authz.GetGrpcService().Timeout = nil // 200 ms
	})
	// A check that never answers in time: the filter gives up.
	rg.authz.decide = func(*authv3.CheckRequest) *authv3.CheckResponse {
		time.Sleep(400 * time.Millisecond)
		return allow(nil)
	}
	resp := call(t, rg.url, `{}`)
	assert.Equal(t, http.StatusServiceUnavailable, resp.StatusCode, "status_on_error, failure_mode_allow false")
}

// TestProcTimeoutFailsOpen: an ext_proc answer slower than the message
// timeout leaves the call to go on untouched, from that message on.
func TestProcTimeoutFailsOpen(t *testing.T) {
	proc := &procFake{answer: func(req *extprocv3.ProcessingRequest) *extprocv3.ProcessingResponse {
		if _, ok := req.GetRequest().(*extprocv3.ProcessingRequest_ResponseBody); ok {
			time.Sleep(300 * time.Millisecond)
			return &extprocv3.ProcessingResponse{Response: &extprocv3.ProcessingResponse_ResponseBody{ResponseBody: &extprocv3.BodyResponse{
				Response: &extprocv3.CommonResponse{BodyMutation: &extprocv3.BodyMutation{Mutation: &extprocv3.BodyMutation_Body{Body: []byte("late")}}}}}}
		}
		return passThrough(req)
	}}
	rg := newRig(t, &authzFake{decide: allow}, proc, http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) {
		_, _ = io.WriteString(w, "whole body")
	}), nil)
	resp := call(t, rg.url, `{}`)
	b, err := io.ReadAll(resp.Body)
	require.NoError(t, err)
	assert.Equal(t, "whole body", string(b), "the late answer (\"late\") was not waited for")
	assert.Equal(t, []string{"request_headers", "request_body", "response_headers", "response_body"}, proc.seen())
}

// TestModeOverride: a mode override in the answer to the request headers
// replaces the mode for the rest of the call.
func TestModeOverride(t *testing.T) {
	proc := &procFake{answer: func(req *extprocv3.ProcessingRequest) *extprocv3.ProcessingResponse {
		r := passThrough(req)
		if _, ok := req.GetRequest().(*extprocv3.ProcessingRequest_RequestHeaders); ok {
			r.ModeOverride = &procfilterv3.ProcessingMode{RequestBodyMode: procfilterv3.ProcessingMode_NONE,
				ResponseHeaderMode: procfilterv3.ProcessingMode_SEND, ResponseBodyMode: procfilterv3.ProcessingMode_NONE}
		}
		return r
	}}
	rg := newRig(t, &authzFake{decide: allow}, proc, http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) {
		w.Header().Set("content-length", "2")
		_, _ = io.WriteString(w, "ok")
	}), nil)
	resp := call(t, rg.url, `{}`)
	b, _ := io.ReadAll(resp.Body)
	assert.Equal(t, "ok", string(b))
	assert.Equal(t, "2", resp.Header.Get("content-length"), "a body ext_proc does not see keeps its length")
	assert.Equal(t, []string{"request_headers", "response_headers"}, proc.seen())

	t.Run("ignored without allow_mode_override", func(t *testing.T) {
		proc.kinds = nil
		rg := newRig(t, &authzFake{decide: allow}, proc, http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) {
			_, _ = io.WriteString(w, "ok")
		}), func(l *envoysim.Listener) { l.Proc.AllowModeOverride = false })
		resp := call(t, rg.url, `{}`)
		_, _ = io.ReadAll(resp.Body)
		assert.Equal(t, []string{"request_headers", "request_body", "response_headers", "response_body", "response_body"}, proc.seen())
	})
}
