package authz

import (
	"context"
	"encoding/json"
	"net/http"
	"slices"
	"strings"
	"testing"
	"time"

	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	authv3 "github.com/envoyproxy/go-control-plane/envoy/service/auth/v3"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/stretchr/testify/require"
	"google.golang.org/genproto/googleapis/rpc/code"
	"google.golang.org/protobuf/proto"

	"github.com/tollgate/tollgate/admission"
	"github.com/tollgate/tollgate/internal/fakeclock"
	"github.com/tollgate/tollgate/limiter/memstore"
	"github.com/tollgate/tollgate/limiter/respcache"
	"github.com/tollgate/tollgate/policy"
)

// fuzzStrictPolicy turns every default the other way from the bundled
// policy, and has a shadow pool, two pools on one route and per-client
// limits, so that fuzzed checks reach every branch of Decide.
const fuzzStrictPolicy = `
defaults:
  unknown_client: deny
  unmatched_route: deny
  invalid_request: allow
pools:
  tokens:
    unit: token
    capacity: 2000
    refill_per_second: 10
    shadow: true
  calls:
    unit: request
    capacity: 5
    refill_per_second: 1
routes:
  openai:
    host: "*.openai.com"
    path_prefix: /v1/
    models: ["gpt-4*"]
    provider: openai
    pools: [tokens, calls]
  anthropic:
    host: api.anthropic.com
    path_prefix: /v1/messages
    provider: anthropic
    pools: [tokens]
  twilio:
    host: api.twilio.com
    provider: twilio
    pools: [calls]
  sendgrid:
    host: api.sendgrid.com
    provider: sendgrid
    pools: [calls]
tiers:
  small:
    priority: 1
    max_concurrent: 1
    client_limits:
      calls:
        capacity: 2
        refill_per_second: 1
clients:
  team-a:
    tier: small
`

// fuzzSeeds are realistic checks as Envoy sends them, and a few it should
// not.
func fuzzSeeds() []*authv3.CheckRequest {
	chat := `{"model":"gpt-4","max_tokens":256,"messages":[{"role":"system","content":"Be brief."},{"role":"user","content":"Hello"}]}`
	twilio := "To=%2B15558675310&From=%2B15017122661&Body=Hi+there+%F0%9F%91%8B"
	claude := `{"model":"claude-3-5-sonnet","max_tokens":1024,"messages":[{"role":"user","content":"Hi"}]}`
	http1 := func(h *authv3.AttributeContext_HttpRequest, ext map[string]string) *authv3.CheckRequest {
		return &authv3.CheckRequest{Attributes: &authv3.AttributeContext{
			Request: &authv3.AttributeContext_Request{Http: h}, ContextExtensions: ext,
		}}
	}
	return []*authv3.CheckRequest{
		http1(&authv3.AttributeContext_HttpRequest{
			Id: "1", Method: "POST", Host: "127.0.0.1:10000", Path: "/v1/chat/completions", Protocol: "HTTP/1.1",
			Headers: map[string]string{"content-type": "application/json", "content-length": "113", "x-tollgate-client": "team-a", "x-request-id": "r1"},
			RawBody: []byte(chat),
		}, map[string]string{ContextUpstreamHost: "api.openai.com"}),
		http1(&authv3.AttributeContext_HttpRequest{
			Method: "POST", Host: "api.twilio.com", Path: "/2010-04-01/Accounts/AC123/Messages.json",
			Headers: map[string]string{"content-type": "application/x-www-form-urlencoded", "x-tollgate-client": "team-b"},
			Body:    twilio,
		}, nil),
		http1(&authv3.AttributeContext_HttpRequest{
			Method: "POST", Host: "api.anthropic.com", Path: "/v1/messages?beta=true",
			HeaderMap: &corev3.HeaderMap{Headers: []*corev3.HeaderValue{
				{Key: "X-Tollgate-Client", RawValue: []byte("team-a")},
				{Key: "content-length", RawValue: []byte("90")},
			}},
			RawBody: []byte(claude),
		}, nil),
		{}, // empty
		{Attributes: &authv3.AttributeContext{Request: &authv3.AttributeContext_Request{}}}, // missing http
		http1(&authv3.AttributeContext_HttpRequest{ // huge content-length
			Method: "POST", Host: "api.openai.com", Path: "/v1/chat/completions",
			Headers: map[string]string{"content-length": "9223372036854775807", "x-tollgate-client": "team-a"},
			RawBody: []byte(`{"model":"gpt-4"`),
		}, nil),
		http1(&authv3.AttributeContext_HttpRequest{ // content-length beyond int64
			Method: "POST", Host: "api.openai.com", Path: "/v1/completions",
			Headers: map[string]string{"content-length": "99999999999999999999"},
		}, nil),
		http1(&authv3.AttributeContext_HttpRequest{ // non-UTF-8 header values (raw_value is bytes)
			Method: "POST", Path: "/v1/chat/completions",
			HeaderMap: &corev3.HeaderMap{Headers: []*corev3.HeaderValue{
				{Key: ":authority", RawValue: []byte("api.\xffopenai.com")},
				{Key: "x-tollgate-client", RawValue: []byte("\xfe\xff\x00team")},
				{Key: "x-request-id", RawValue: []byte{0x80, 0x81}},
			}},
			RawBody: []byte{0xff, 0xfe, '{'},
		}, nil),
		http1(&authv3.AttributeContext_HttpRequest{ // the cache's controls
			Id: "2", Method: "POST", Host: "api.openai.com", Path: "/v1/chat/completions",
			Headers: map[string]string{"x-tollgate-client": "team-a", "idempotency-key": "k1", "cache-control": "no-cache, no-store",
				"x-tollgate-cache": "skip"},
			RawBody: []byte(`{"model":"gpt-4","temperature":0,"seed":1,"messages":[{"role":"user","content":"\ud83d\ude00"}]}`),
		}, nil),
		http1(&authv3.AttributeContext_HttpRequest{ // a huge max_tokens
			Method: "POST", Host: "api.openai.com", Path: "/v1/chat/completions",
			RawBody: []byte(`{"model":"gpt-4-turbo","max_tokens":9223372036854775807}`),
		}, nil),
		http1(&authv3.AttributeContext_HttpRequest{ // max_tokens beyond int64
			Method: "POST", Host: "api.openai.com", Path: "/v1/chat/completions",
			Headers: map[string]string{"x-tollgate-client": "team-a"},
			RawBody: []byte(`{"model":"gpt-4o","max_tokens":99999999999999999999,"messages":[{"role":"user","content":"hi"}]}`),
		}, nil),
		http1(&authv3.AttributeContext_HttpRequest{ // max_tokens as a float
			Method: "POST", Host: "api.anthropic.com", Path: "/v1/messages",
			Headers: map[string]string{"x-tollgate-client": "team-a"},
			RawBody: []byte(`{"model":"claude-3-5-sonnet","max_tokens":1e300,"messages":[{"role":"user","content":"hi"}]}`),
		}, nil),
	}
}

// fuzzCachePolicy is fuzzStrictPolicy with every route under cache rules
// (responses at any temperature, idempotency keys, the SMS body window)
// and no class that waits, so that fuzzed checks run the cache step and a
// flight nobody completes never holds one up.
const fuzzCachePolicy = fuzzStrictPolicy + `
queue:
  classes:
    fast: {max_wait: 0s}
    normal: {max_wait: 0s}
    batch: {max_wait: 0s}
    deferred: {max_wait: 0s}
cache:
  rules:
    - name: sms
      when: {routes: [twilio]}
      idempotency: {body_window: 1m}
    - name: rest
      cacheable: any_temperature
      scope: parent
`

type fuzzDecider struct {
	name string
	d    *admission.Service
}

func newFuzzDeciders(f *testing.F) []fuzzDecider {
	strict, err := policy.Compile(policy.Source{Name: "strict.yaml", Data: []byte(fuzzStrictPolicy)})
	require.NoError(f, err)
	var out []fuzzDecider
	for name, set := range map[string]*policy.Set{"default": policy.Default(), "strict": strict} {
		store, err := memstore.New(memstore.Config{Clock: fakeclock.New(time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC))})
		require.NoError(f, err)
		f.Cleanup(func() { require.NoError(f, store.Close()) })
		svc, err := admission.New(admission.Config{}, admission.Deps{Policies: admission.StaticPolicy{Set: set}, Store: store, Registerer: prometheus.NewRegistry()})
		require.NoError(f, err)
		f.Cleanup(func() { require.NoError(f, svc.Close()) })
		out = append(out, fuzzDecider{name, svc})
	}
	cached, err := policy.Compile(policy.Source{Name: "cache.yaml", Data: []byte(fuzzCachePolicy)})
	require.NoError(f, err)
	clk := fakeclock.New(time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC))
	store, err := memstore.New(memstore.Config{Clock: clk})
	require.NoError(f, err)
	f.Cleanup(func() { require.NoError(f, store.Close()) })
	cache, err := respcache.NewMemory(respcache.MemoryConfig{Clock: clk})
	require.NoError(f, err)
	f.Cleanup(func() { require.NoError(f, cache.Close()) })
	svc, err := admission.New(admission.Config{Settlement: admission.SettleDeferred},
		admission.Deps{Policies: admission.StaticPolicy{Set: cached}, Store: store, Registerer: prometheus.NewRegistry(), Clock: clk, Cache: cache})
	require.NoError(f, err)
	f.Cleanup(func() { require.NoError(f, svc.Close()) })
	return append(out, fuzzDecider{"cache", svc})
}

var denialStatuses = []int{http.StatusBadRequest, http.StatusForbidden, http.StatusConflict, http.StatusTooManyRequests, http.StatusServiceUnavailable}

// FuzzCheckRequest feeds wire-format CheckRequests through the whole
// translation and admission path: nothing may panic, every denial carries
// one of the denial statuses, and every response can be sent to Envoy with a
// JSON body.
func FuzzCheckRequest(f *testing.F) {
	for _, cr := range fuzzSeeds() {
		b, err := proto.Marshal(cr)
		require.NoError(f, err)
		f.Add(b)
	}
	deciders := newFuzzDeciders(f)

	f.Fuzz(func(t *testing.T, data []byte) {
		var cr authv3.CheckRequest
		if err := proto.Unmarshal(data, &cr); err != nil {
			t.Skip()
		}
		r := fromCheckRequest(&cr, clientSource{header: "x-tollgate-client"})
		if r.Invalid == "" {
			require.NotEmpty(t, r.Host)
			require.True(t, strings.HasPrefix(r.Path, "/"), "path %q", r.Path)
		}
		require.NotContains(t, r.Path, "?")
		require.GreaterOrEqual(t, r.BodySize, int64(len(r.Body)))
		for k := range r.Headers {
			require.Equal(t, strings.ToLower(k), k)
		}

		for _, fd := range deciders {
			v := Render(fd.d.Decide(context.Background(), r))
			if v.Allowed {
				require.Zero(t, v.Status, "%s: allowed with a status", fd.name)
			} else {
				require.True(t, slices.Contains(denialStatuses, v.Status), "%s: denied with status %d", fd.name, v.Status)
				require.NotEmpty(t, v.Reason, fd.name)
			}
			require.GreaterOrEqual(t, v.RetryAfter, time.Duration(0))
			// The memory store always answers: a store error here is a
			// request mistaken for a store failure (a huge max_tokens).
			require.NotEqual(t, admission.ReasonStoreError, v.Reason, "%s: %s", fd.name, v.Message)
			require.NotEqual(t, admission.OutcomeFailOpen, v.Outcome, fd.name)

			resp := toCheckResponse(&v)
			if v.Allowed {
				require.Equal(t, int32(code.Code_OK), resp.GetStatus().GetCode())
				require.NotNil(t, resp.GetOkResponse())
			} else {
				require.NotEqual(t, int32(code.Code_OK), resp.GetStatus().GetCode())
				d := resp.GetDeniedResponse()
				require.NotNil(t, d)
				require.Equal(t, v.Status, int(d.GetStatus().GetCode()))
				require.True(t, json.Valid([]byte(d.GetBody())), "%s: body %q", fd.name, d.GetBody())
			}
			_, err := proto.Marshal(resp)
			require.NoError(t, err, "%s: the response cannot be sent", fd.name)
		}
	})
}
