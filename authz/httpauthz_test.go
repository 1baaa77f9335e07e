package authz_test

import (
	"bytes"
	"context"
	"io"
	"net/http"
	"slices"
	"strconv"
	"strings"
	"testing"

	authv3 "github.com/envoyproxy/go-control-plane/envoy/service/auth/v3"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"google.golang.org/genproto/googleapis/rpc/code"

	"github.com/tollgate/tollgate/authz"
	"github.com/tollgate/tollgate/internal/fakeclock"
)

// transportPolicy covers every kind of answer both transports must render
// alike: OpenAI, Anthropic, Twilio and SendGrid routes, small pools to
// drain, a shadow pool, budgets to exhaust, unknown clients and unmatched
// routes refused.
const transportPolicy = `
defaults:
  unknown_client: deny
  unmatched_route: deny
pools:
  gpt-4:
    unit: token
    capacity: 300
    refill_per_second: 100
    price: "0.03/1K"
  claude:
    unit: token
    capacity: 100000
    refill_per_second: 1000
    price: "3/1M"
  sms:
    unit: segment
    capacity: 2
    refill_per_second: 1
    price: "0.0075"
  email:
    unit: email
    capacity: 1
    refill_per_second: 1
    shadow: true
routes:
  openai:
    host: api.openai.com
    path_prefix: /v1/
    provider: openai
    pools: [gpt-4]
    class: immediate
  anthropic:
    host: api.anthropic.com
    path_prefix: /v1/messages
    provider: anthropic
    pools: [claude]
    class: immediate
  twilio:
    host: api.twilio.com
    path_prefix: /2010-04-01/Accounts/
    provider: twilio
    pools: [sms]
    class: immediate
  sendgrid:
    host: api.sendgrid.com
    path_prefix: /v3/mail/send
    provider: sendgrid
    pools: [email]
    class: immediate
tiers:
  team:
    priority: 10
    max_concurrent: 50
    monthly_budget: "1000"
clients:
  a:
    tier: team
  broke:
    tier: team
    monthly_budget: "0.000001"
`

// checkCall is one worker call through the sidecar, as each transport carries
// it to Tollgate.
type checkCall struct {
	host, path, client, contentType, requestID string
	body                                       []byte
}

// grpcCheck is the CheckRequest Envoy's gRPC form sends for c.
func (c checkCall) grpcCheck() *authv3.CheckRequest {
	h := map[string]string{":authority": "127.0.0.1:10001", ":method": "POST", ":path": c.path,
		"content-type": c.contentType, "content-length": strconv.Itoa(len(c.body))}
	if c.client != "" {
		h["x-tollgate-client"] = c.client
	}
	if c.requestID != "" {
		h["x-request-id"] = c.requestID
	}
	return &authv3.CheckRequest{Attributes: &authv3.AttributeContext{
		Request: &authv3.AttributeContext_Request{Http: &authv3.AttributeContext_HttpRequest{
			Method: http.MethodPost, Host: "127.0.0.1:10001", Path: c.path, Headers: h, RawBody: c.body, Size: int64(len(c.body)),
		}},
		ContextExtensions: map[string]string{authz.ContextUpstreamHost: c.host},
	}}
}

// httpCheck is the request Envoy's HTTP form sends for c, to base
// (http://host:port): envoy/sidecar-http.yaml's path_prefix, allowed
// headers and headers_to_add.
func (c checkCall) httpCheck(t *testing.T, base string) *http.Request {
	t.Helper()
	r, err := http.NewRequest(http.MethodPost, base+authz.HTTPCheckPathPrefix+c.path, bytes.NewReader(c.body))
	require.NoError(t, err)
	r.Host = "127.0.0.1:10001"
	r.Header.Set("content-type", c.contentType)
	if c.client != "" {
		r.Header.Set("x-tollgate-client", c.client)
	}
	if c.requestID != "" {
		r.Header.Set("x-request-id", c.requestID)
	}
	r.Header.Set(authz.HeaderUpstreamHost, c.host)
	r.Header.Set(authz.HeaderContentLength, strconv.Itoa(len(c.body)))
	return r
}

// seen is what the worker and the upstream get from one check, whichever
// the transport: the status the worker sees (200 when the call goes), the
// headers it gets, those added to the call upstream and removed from it,
// and a refusal's body.
type seen struct {
	Status   int
	Client   map[string]string
	Upstream map[string]string
	Removed  []string
	Body     string
}

// stable replaces what differs between two servers by design (reservation
// ids are random) with a placeholder.
func (s seen) stable() seen {
	if _, ok := s.Upstream[authz.HeaderReservation]; ok {
		s.Upstream[authz.HeaderReservation] = "<id>"
	}
	slices.Sort(s.Removed)
	return s
}

func seenOverGRPC(resp *authv3.CheckResponse) seen {
	s := seen{Client: map[string]string{}, Upstream: map[string]string{}}
	if ok := resp.GetOkResponse(); ok != nil && resp.GetStatus().GetCode() == int32(code.Code_OK) {
		s.Status = http.StatusOK
		for _, h := range ok.GetResponseHeadersToAdd() {
			s.Client[h.GetHeader().GetKey()] = h.GetHeader().GetValue()
		}
		for _, h := range ok.GetHeaders() {
			s.Upstream[h.GetHeader().GetKey()] = h.GetHeader().GetValue()
		}
		s.Removed = ok.GetHeadersToRemove()
		return s.stable()
	}
	d := resp.GetDeniedResponse()
	s.Status = int(d.GetStatus().GetCode())
	for _, h := range d.GetHeaders() {
		s.Client[h.GetHeader().GetKey()] = h.GetHeader().GetValue()
	}
	s.Body = d.GetBody()
	return s.stable()
}

// seenOverHTTP reads an HTTP check's answer as Envoy does with the lists
// of envoy/sidecar-http.yaml (which envoy/config_test.go holds to
// authz.HTTP*Headers): on 200, allowed_upstream_headers go upstream,
// allowed_client_headers_on_success to the worker and
// x-envoy-auth-headers-to-remove is obeyed; otherwise the status, body and
// allowed_client_headers go to the worker.
func seenOverHTTP(t *testing.T, resp *http.Response) seen {
	t.Helper()
	body, err := io.ReadAll(resp.Body)
	require.NoError(t, err)
	require.NoError(t, resp.Body.Close())
	s := seen{Status: resp.StatusCode, Client: map[string]string{}, Upstream: map[string]string{}}
	clientList := authz.HTTPClientHeaders()
	if resp.StatusCode == http.StatusOK {
		clientList = authz.HTTPClientHeadersOnSuccess()
		require.Empty(t, body, "an allowed check has no body")
	} else {
		s.Body = string(body)
	}
	for k, vs := range resp.Header {
		name := strings.ToLower(k)
		require.Len(t, vs, 1, "header %s", name)
		matched := false
		if slices.Contains(clientList, name) {
			s.Client[name], matched = vs[0], true
		}
		if resp.StatusCode == http.StatusOK && slices.Contains(authz.HTTPUpstreamHeaders(), name) {
			s.Upstream[name], matched = vs[0], true
		}
		if resp.StatusCode == http.StatusOK && name == "x-envoy-auth-headers-to-remove" {
			s.Removed, matched = strings.Split(vs[0], ","), true
		}
		// Every header Tollgate sends reaches someone: a name missing from
		// the lists would be dropped by Envoy.
		assert.True(t, matched || name == "date" || name == "content-length",
			"header %s (status %d) is in none of the Envoy config's lists", name, resp.StatusCode)
	}
	return s.stable()
}

// startHTTPAuthzServer is startServer with ext_authz over HTTP on.
func startHTTPAuthzServer(t *testing.T, policy string, clk *fakeclock.Clock) *testServer {
	t.Helper()
	return startServer(t, serverOpts{policy: policy, clk: clk, config: func(c *authz.Config) { c.AuthzHTTPAddr = "127.0.0.1:0" }})
}

// TestCheckSameOverGRPCAndHTTP sends one decision table, in order, through
// both transports on loopback (two servers on one fake clock, each with its
// own store) and requires the same answer: status, the headers the worker
// and the upstream get, and the body.
func TestCheckSameOverGRPCAndHTTP(t *testing.T) {
	clk := fakeclock.New(epoch)
	overGRPC := startHTTPAuthzServer(t, transportPolicy, clk)
	overHTTP := startHTTPAuthzServer(t, transportPolicy, clk)
	base := "http://" + overHTTP.srv.AuthzHTTPAddr().String()
	hc := &http.Client{Transport: &http.Transport{}}
	t.Cleanup(hc.CloseIdleConnections)

	chat := checkCall{host: "api.openai.com", path: "/v1/chat/completions", client: "a", contentType: "application/json",
		requestID: "req-chat", body: chatBody("gpt-4", 100, "Say hello.")}
	sms := checkCall{host: "api.twilio.com", path: "/2010-04-01/Accounts/AC1/Messages.json", client: "a",
		contentType: "application/x-www-form-urlencoded", requestID: "req-sms", body: []byte("To=%2B15558675310&From=%2B15017122661&Body=Hello")}
	mail := checkCall{host: "api.sendgrid.com", path: "/v3/mail/send", client: "a", contentType: "application/json", requestID: "req-mail",
		body: []byte(`{"personalizations":[{"to":[{"email":"a@example.com"}]}],"subject":"hi"}`)}
	claude := checkCall{host: "api.anthropic.com", path: "/v1/messages", client: "a", contentType: "application/json", requestID: "req-claude",
		body: []byte(`{"model":"claude-sonnet-4-5","max_tokens":100,"messages":[{"role":"user","content":"Hi"}]}`)}
	with := func(c checkCall, edit func(*checkCall)) checkCall { edit(&c); return c }

	steps := []struct {
		name       string
		call       checkCall
		wantStatus int
		wantReason string
	}{
		{"chat allowed", chat, 200, ""},
		{"chat too large for its pool", with(chat, func(c *checkCall) { c.body = chatBody("gpt-4", 5000, "Hi") }), 429, "exceeds_capacity"},
		{"chat with a query string and dot segments", with(chat, func(c *checkCall) { c.path = "/v1/x/../chat/completions?stream=false" }), 200, ""},
		{"chat drains the pool", chat, 429, "rate_limited"},
		{"chat without a request id", with(chat, func(c *checkCall) { c.requestID = "" }), 429, "rate_limited"},
		{"sms allowed", sms, 200, ""},
		{"sms allowed again", sms, 200, ""},
		{"sms rate limited, Twilio's shape", sms, 429, "rate_limited"},
		{"mail allowed", mail, 200, ""},
		{"mail over its shadow pool goes, marked", mail, 200, ""},
		{"anthropic allowed", claude, 200, ""},
		{"anthropic budget exhausted", with(claude, func(c *checkCall) { c.client = "broke" }), 400, "budget_exceeded"},
		{"twilio budget exhausted", with(sms, func(c *checkCall) { c.client = "broke" }), 403, "budget_exceeded"},
		{"unknown client", with(claude, func(c *checkCall) { c.client = "stranger" }), 403, "unknown_client"},
		{"unmatched route", with(claude, func(c *checkCall) { c.host = "api.example.com" }), 403, "unmatched_route"},
	}
	for _, st := range steps {
		t.Run(st.name, func(t *testing.T) {
			gresp, err := overGRPC.auth.Check(context.Background(), st.call.grpcCheck())
			require.NoError(t, err)
			want := seenOverGRPC(gresp)
			require.Equal(t, st.wantStatus, want.Status, "gRPC: %+v", want)
			if st.wantReason != "" {
				require.Equal(t, st.wantReason, want.Client["x-tollgate-reason"])
			}
			if strings.Contains(st.name, "shadow") {
				require.NotEmpty(t, want.Upstream["x-tollgate-shadow-decision"], "the case is what it says")
			}

			hresp, err := hc.Do(st.call.httpCheck(t, base))
			require.NoError(t, err)
			got := seenOverHTTP(t, hresp)
			if st.call.requestID == "" { // each server names the call itself
				require.True(t, strings.HasPrefix(got.Client["x-request-id"], "tg-"))
				got.Client["x-request-id"], want.Client["x-request-id"] = "", ""
				for _, s := range []seen{got, want} {
					delete(s.Client, "retry-after-ms") // jittered by the id
				}
				got.Body, want.Body = "", ""
			}
			assert.Equal(t, want, got)
		})
	}
}

// TestHTTPCheckOverH2C: Envoy's cluster for Tollgate speaks cleartext
// HTTP/2 with prior knowledge (many checks, held ones among them, on one
// connection); the listener answers it.
func TestHTTPCheckOverH2C(t *testing.T) {
	ts := startHTTPAuthzServer(t, serverPolicy, nil)
	var p http.Protocols
	p.SetUnencryptedHTTP2(true)
	tr := &http.Transport{Protocols: &p}
	hc := &http.Client{Transport: tr}
	t.Cleanup(tr.CloseIdleConnections)

	c := checkCall{host: "api.openai.com", path: "/v1/chat/completions", client: "team-a", contentType: "application/json",
		requestID: "req-1", body: chatBody("gpt-4", 10, "Hi")}
	resp, err := hc.Do(c.httpCheck(t, "http://"+ts.srv.AuthzHTTPAddr().String()))
	require.NoError(t, err)
	defer resp.Body.Close()
	assert.Equal(t, 2, resp.ProtoMajor)
	assert.Equal(t, http.StatusOK, resp.StatusCode)
	assert.Equal(t, "300", resp.Header.Get("x-ratelimit-limit"))
	assert.NotEmpty(t, resp.Header.Get(authz.HeaderReservation))
	assert.Equal(t, 1, int(histogramCount(t, ts, "ext_authz_http")))
}

// histogramCount is how many checks service answered.
func histogramCount(t *testing.T, ts *testServer, service string) uint64 {
	t.Helper()
	mfs, err := ts.reg.Gather()
	require.NoError(t, err)
	for _, mf := range mfs {
		if mf.GetName() != "tollgate_authz_check_duration_seconds" {
			continue
		}
		for _, m := range mf.GetMetric() {
			if labelsEqual(m.GetLabel(), map[string]string{"service": service}) {
				return m.GetHistogram().GetSampleCount()
			}
		}
	}
	return 0
}

// TestHTTPCheckOff: without AuthzHTTPAddr there is no such listener.
func TestHTTPCheckOff(t *testing.T) {
	ts := startServer(t, serverOpts{})
	assert.Nil(t, ts.srv.AuthzHTTPAddr())
}
