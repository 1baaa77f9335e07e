package authz

import (
	"encoding/json"
	"net/http"
	"testing"
	"time"

	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	authv3 "github.com/envoyproxy/go-control-plane/envoy/service/auth/v3"
	typev3 "github.com/envoyproxy/go-control-plane/envoy/type/v3"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"google.golang.org/genproto/googleapis/rpc/code"
	rpcstatus "google.golang.org/genproto/googleapis/rpc/status"
	"google.golang.org/protobuf/encoding/protojson"
	"google.golang.org/protobuf/proto"

	"github.com/tollgate/tollgate/admission"
	"github.com/tollgate/tollgate/costing"
	"github.com/tollgate/tollgate/limiter"
	"github.com/tollgate/tollgate/policy"
)

const testClientHeader = "x-tollgate-client"

// checkOf wraps an HTTP request attribute into a CheckRequest, with ext as
// its context extensions.
func checkOf(h *authv3.AttributeContext_HttpRequest, ext map[string]string) *authv3.CheckRequest {
	return &authv3.CheckRequest{Attributes: &authv3.AttributeContext{
		Request:           &authv3.AttributeContext_Request{Http: h},
		ContextExtensions: ext,
	}}
}

func TestFromCheckRequest(t *testing.T) {
	const noAttrs = "the check carries no HTTP request attributes"
	chat := `{"model":"gpt-4","messages":[{"role":"user","content":"hi"}]}`

	tests := map[string]struct {
		cr           *authv3.CheckRequest
		clientHeader string // "": testClientHeader
		pinned       string // serve --client
		want         *admission.Request
	}{
		"nil request": {
			cr:   nil,
			want: &admission.Request{Invalid: noAttrs},
		},
		"nil attributes": {
			cr:   &authv3.CheckRequest{},
			want: &admission.Request{Invalid: noAttrs},
		},
		"nil request attribute": {
			cr:   &authv3.CheckRequest{Attributes: &authv3.AttributeContext{}},
			want: &admission.Request{Invalid: noAttrs},
		},
		"nil http": {
			cr:   &authv3.CheckRequest{Attributes: &authv3.AttributeContext{Request: &authv3.AttributeContext_Request{}}},
			want: &admission.Request{Invalid: noAttrs},
		},
		"an OpenAI chat call": {
			cr: checkOf(&authv3.AttributeContext_HttpRequest{
				Id: "envoy-id", Method: "POST", Host: "api.openai.com", Path: "/v1/chat/completions",
				Headers: map[string]string{
					":authority": "api.openai.com", "content-type": "application/json",
					"x-request-id": "req-42", "x-tollgate-client": "team-a",
				},
				RawBody: []byte(chat),
			}, nil),
			want: &admission.Request{
				ID: "req-42", Client: "team-a", Method: "POST", Host: "api.openai.com", Path: "/v1/chat/completions",
				Headers: map[string]string{
					":authority": "api.openai.com", "content-type": "application/json",
					"x-request-id": "req-42", "x-tollgate-client": "team-a",
				},
				Body: []byte(chat), BodySize: int64(len(chat)),
			},
		},
		"the request's id when there is no x-request-id header": {
			cr:   checkOf(&authv3.AttributeContext_HttpRequest{Id: "envoy-id", Host: "h", Path: "/"}, nil),
			want: &admission.Request{ID: "envoy-id", Host: "h", Path: "/", Headers: map[string]string{}},
		},
		"upstream_host extension overrides the authority": {
			cr: checkOf(&authv3.AttributeContext_HttpRequest{
				Host: "127.0.0.1:10000", Path: "/v1/chat/completions",
				Headers: map[string]string{":authority": "127.0.0.1:10000"},
			}, map[string]string{ContextUpstreamHost: "api.openai.com"}),
			want: &admission.Request{Host: "api.openai.com", Path: "/v1/chat/completions", Headers: map[string]string{":authority": "127.0.0.1:10000"}},
		},
		"an empty upstream_host extension is ignored": {
			cr: checkOf(&authv3.AttributeContext_HttpRequest{Host: "api.twilio.com", Path: "/"},
				map[string]string{ContextUpstreamHost: ""}),
			want: &admission.Request{Host: "api.twilio.com", Path: "/", Headers: map[string]string{}},
		},
		"host falls back to the :authority header": {
			cr: checkOf(&authv3.AttributeContext_HttpRequest{
				Path: "/v1/models", Headers: map[string]string{":authority": "api.openai.com"},
			}, nil),
			want: &admission.Request{Host: "api.openai.com", Path: "/v1/models", Headers: map[string]string{":authority": "api.openai.com"}},
		},
		"query string and fragment are stripped from the path": {
			cr:   checkOf(&authv3.AttributeContext_HttpRequest{Host: "h", Path: "/v1/files?purpose=batch&limit=10#top"}, nil),
			want: &admission.Request{Host: "h", Path: "/v1/files", Headers: map[string]string{}},
		},
		"header names are lower-cased": {
			cr: checkOf(&authv3.AttributeContext_HttpRequest{
				Host: "h", Path: "/",
				Headers: map[string]string{"X-Tollgate-Client": "Team-A", "Content-Type": "text/plain", "X-Request-ID": "R1"},
			}, nil),
			want: &admission.Request{ID: "R1", Client: "Team-A", Host: "h", Path: "/",
				Headers: map[string]string{"x-tollgate-client": "Team-A", "content-type": "text/plain", "x-request-id": "R1"}},
		},
		"header_map from encode_raw_headers, raw_value and value": {
			cr: checkOf(&authv3.AttributeContext_HttpRequest{
				Host: "h", Path: "/",
				HeaderMap: &corev3.HeaderMap{Headers: []*corev3.HeaderValue{
					{Key: "X-Tollgate-Client", RawValue: []byte("team-raw")},
					{Key: "x-request-id", RawValue: []byte("raw-id")},
					{Key: "Content-Length", Value: "12"},
				}},
			}, nil),
			want: &admission.Request{ID: "raw-id", Client: "team-raw", Host: "h", Path: "/", BodySize: 12,
				Headers: map[string]string{"x-tollgate-client": "team-raw", "x-request-id": "raw-id", "content-length": "12"}},
		},
		"raw_body is preferred over body": {
			cr:   checkOf(&authv3.AttributeContext_HttpRequest{Host: "h", Path: "/", RawBody: []byte("raw bytes"), Body: "text"}, nil),
			want: &admission.Request{Host: "h", Path: "/", Headers: map[string]string{}, Body: []byte("raw bytes"), BodySize: 9},
		},
		"body is read when raw_body is empty": {
			cr:   checkOf(&authv3.AttributeContext_HttpRequest{Host: "h", Path: "/", Body: "To=%2B1555&Body=hi"}, nil),
			want: &admission.Request{Host: "h", Path: "/", Headers: map[string]string{}, Body: []byte("To=%2B1555&Body=hi"), BodySize: 18},
		},
		"content-length larger than the body Envoy sent is the body size": {
			cr: checkOf(&authv3.AttributeContext_HttpRequest{
				Host: "h", Path: "/", RawBody: []byte(`{"model":`), Headers: map[string]string{"content-length": "5000"},
			}, nil),
			want: &admission.Request{Host: "h", Path: "/", Headers: map[string]string{"content-length": "5000"}, Body: []byte(`{"model":`), BodySize: 5000},
		},
		"content-length smaller than the body, or unreadable, is ignored": {
			cr: checkOf(&authv3.AttributeContext_HttpRequest{
				Host: "h", Path: "/", RawBody: []byte("0123456789"),
				HeaderMap: &corev3.HeaderMap{Headers: []*corev3.HeaderValue{{Key: "content-length", RawValue: []byte("3")}}},
			}, nil),
			want: &admission.Request{Host: "h", Path: "/", Headers: map[string]string{"content-length": "3"}, Body: []byte("0123456789"), BodySize: 10},
		},
		"junk content-length is ignored": {
			cr: checkOf(&authv3.AttributeContext_HttpRequest{
				Host: "h", Path: "/", RawBody: []byte("0123"), Headers: map[string]string{"content-length": "lots"},
			}, nil),
			want: &admission.Request{Host: "h", Path: "/", Headers: map[string]string{"content-length": "lots"}, Body: []byte("0123"), BodySize: 4},
		},
		"the context extension beats the header": {
			cr: checkOf(&authv3.AttributeContext_HttpRequest{
				Host: "h", Path: "/", Headers: map[string]string{"x-tollgate-client": "claimed"},
			}, map[string]string{ContextClient: "pinned-by-envoy"}),
			want: &admission.Request{Client: "pinned-by-envoy", Host: "h", Path: "/", Headers: map[string]string{"x-tollgate-client": "claimed"}},
		},
		"serve --client beats both": {
			pinned: "the-worker",
			cr: checkOf(&authv3.AttributeContext_HttpRequest{
				Host: "h", Path: "/", Headers: map[string]string{"x-tollgate-client": "claimed"},
			}, map[string]string{ContextClient: "pinned-by-envoy"}),
			want: &admission.Request{Client: "the-worker", Host: "h", Path: "/", Headers: map[string]string{"x-tollgate-client": "claimed"}},
		},
		"client from the configured header": {
			clientHeader: "x-team",
			cr: checkOf(&authv3.AttributeContext_HttpRequest{
				Host: "h", Path: "/", Headers: map[string]string{"x-team": "billing", "x-tollgate-client": "other"},
			}, nil),
			want: &admission.Request{Client: "billing", Host: "h", Path: "/", Headers: map[string]string{"x-team": "billing", "x-tollgate-client": "other"}},
		},
		"no host is invalid": {
			cr:   checkOf(&authv3.AttributeContext_HttpRequest{Method: "GET", Path: "/v1/models"}, nil),
			want: &admission.Request{Method: "GET", Path: "/v1/models", Headers: map[string]string{}, Invalid: "the check names no host"},
		},
		"a path that is not absolute is invalid": {
			cr:   checkOf(&authv3.AttributeContext_HttpRequest{Method: "OPTIONS", Host: "h", Path: "*"}, nil),
			want: &admission.Request{Method: "OPTIONS", Host: "h", Path: "*", Headers: map[string]string{}, Invalid: "the check names no path"},
		},
		"no path is invalid": {
			cr:   checkOf(&authv3.AttributeContext_HttpRequest{Host: "h", Path: "?q=1"}, nil),
			want: &admission.Request{Host: "h", Path: "", Headers: map[string]string{}, Invalid: "the check names no path"},
		},
	}
	for name, tc := range tests {
		t.Run(name, func(t *testing.T) {
			ch := tc.clientHeader
			if ch == "" {
				ch = testClientHeader
			}
			assert.Equal(t, tc.want, fromCheckRequest(tc.cr, clientSource{header: ch, pinned: tc.pinned}))
		})
	}
}

// hvo is a header Envoy sets, replacing any it has.
func hvo(name, value string) *corev3.HeaderValueOption {
	return &corev3.HeaderValueOption{
		Header:       &corev3.HeaderValue{Key: name, Value: value},
		AppendAction: corev3.HeaderValueOption_OVERWRITE_IF_EXISTS_OR_ADD,
	}
}

// requireProtoEqual compares two messages, showing both on a mismatch.
func requireProtoEqual(t *testing.T, want, got proto.Message) {
	t.Helper()
	if !proto.Equal(want, got) {
		opt := protojson.MarshalOptions{Multiline: true}
		require.Fail(t, "messages differ", "want:\n%s\ngot:\n%s", opt.Format(want), opt.Format(got))
	}
}

func TestToCheckResponse(t *testing.T) {
	rl := &admission.RateLimit{Pool: "gpt-4", Unit: policy.UnitToken, Limit: 1000, Remaining: 900, Reset: 1500 * time.Millisecond}
	limitHeaders := []*corev3.HeaderValueOption{
		hvo("x-ratelimit-limit", "1000"), hvo("x-ratelimit-remaining", "900"), hvo("x-ratelimit-reset", "2"),
	}
	const shadow = "denied; reason=rate_limited; pool=gpt-4; retry_after=2"
	openAI429 := `{"error":{"code":"rate_limit_exceeded","message":"slow down","param":null,"type":"tokens"}}`

	denied := func(c code.Code, reason string, status typev3.StatusCode, body string, hs ...*corev3.HeaderValueOption) *authv3.CheckResponse {
		return &authv3.CheckResponse{
			Status: &rpcstatus.Status{Code: int32(c), Message: reason},
			HttpResponse: &authv3.CheckResponse_DeniedResponse{DeniedResponse: &authv3.DeniedHttpResponse{
				Status: &typev3.HttpStatus{Code: status}, Headers: hs, Body: body,
			}},
		}
	}

	tests := map[string]struct {
		v    Answer
		want *authv3.CheckResponse
	}{
		"allowed: OK, rate-limit and spend headers on the response, the route upstream": {
			v: Answer{Verdict: admission.Verdict{Allowed: true, Outcome: admission.OutcomeAllowed, Provider: policy.ProviderOpenAI, Route: "openai", RateLimit: rl, Estimate: costing.Estimate{Cost: 1_250_000}, Budget: &limiter.BudgetState{Limit: 100 * policy.NanosPerDollar, Spent: 2_500_000_000, Reserved: 1_500_000}}},
			want: &authv3.CheckResponse{
				Status: &rpcstatus.Status{Code: int32(code.Code_OK)},
				HttpResponse: &authv3.CheckResponse_OkResponse{OkResponse: &authv3.OkHttpResponse{
					Headers: []*corev3.HeaderValueOption{hvo(HeaderRoute, "openai")},
					ResponseHeadersToAdd: append(append([]*corev3.HeaderValueOption{}, limitHeaders...),
						hvo(HeaderEstimatedCost, "0.00125"), hvo(HeaderBudgetRemaining, "97.4985")),
					HeadersToRemove: []string{HeaderReservation},
				}},
			},
		},
		"allowed with a reservation: its id upstream too": {
			v: Answer{Verdict: admission.Verdict{Allowed: true, Outcome: admission.OutcomeAllowed, Provider: policy.ProviderOpenAI, Route: "openai", Reservation: "r1"}},
			want: &authv3.CheckResponse{
				Status: &rpcstatus.Status{Code: int32(code.Code_OK)},
				HttpResponse: &authv3.CheckResponse_OkResponse{OkResponse: &authv3.OkHttpResponse{
					Headers:              []*corev3.HeaderValueOption{hvo(HeaderReservation, "r1"), hvo(HeaderRoute, "openai")},
					ResponseHeadersToAdd: []*corev3.HeaderValueOption{hvo(HeaderEstimatedCost, "0"), hvo(HeaderBudgetRemaining, "unlimited")},
				}},
			},
		},
		"allowed without a route: OK and nothing to add": {
			v: Answer{Verdict: admission.Verdict{Allowed: true, Outcome: admission.OutcomeUnmatched, Reason: admission.ReasonUnmatchedRoute}},
			want: &authv3.CheckResponse{
				Status:       &rpcstatus.Status{Code: int32(code.Code_OK)},
				HttpResponse: &authv3.CheckResponse_OkResponse{OkResponse: &authv3.OkHttpResponse{ResponseHeadersToAdd: []*corev3.HeaderValueOption{}, HeadersToRemove: []string{HeaderReservation, HeaderRoute}}},
			},
		},
		"shadow denial: OK, the decision on the request and the response": {
			v: Answer{Verdict: admission.Verdict{Allowed: true, Outcome: admission.OutcomeShadowDenied, Reason: "rate_limited", RateLimit: rl}, ShadowDecision: shadow},
			want: &authv3.CheckResponse{
				Status: &rpcstatus.Status{Code: int32(code.Code_OK)},
				HttpResponse: &authv3.CheckResponse_OkResponse{OkResponse: &authv3.OkHttpResponse{
					Headers:              []*corev3.HeaderValueOption{hvo("x-tollgate-shadow-decision", shadow)},
					ResponseHeadersToAdd: append(append([]*corev3.HeaderValueOption{}, limitHeaders...), hvo("x-tollgate-shadow-decision", shadow)),
					HeadersToRemove:      []string{HeaderReservation, HeaderRoute},
				}},
			},
		},
		"429: RESOURCE_EXHAUSTED, Retry-After in whole seconds rounded up, provider body": {
			v: Answer{Verdict: admission.Verdict{Outcome: admission.OutcomeDenied, Reason: "rate_limited", Provider: policy.ProviderOpenAI, RateLimit: rl, RetryAfter: 1200 * time.Millisecond, RequestID: "req-1"}, Status: http.StatusTooManyRequests, Message: "slow down"},
			want: denied(code.Code_RESOURCE_EXHAUSTED, "rate_limited", typev3.StatusCode_TooManyRequests, openAI429,
				append(append([]*corev3.HeaderValueOption{}, limitHeaders...),
					// retry-after-ms: 1200 ms + the jitter of req-1 (34 ms, at most 10%)
					hvo("retry-after", "2"), hvo("retry-after-ms", "1234"), hvo("x-tollgate-reason", "rate_limited"),
					hvo("x-request-id", "req-1"), hvo("content-type", "application/json"))...),
		},
		"429 that can never pass: no Retry-After, x-should-retry: false": {
			v: Answer{Verdict: admission.Verdict{Outcome: admission.OutcomeDenied, Reason: "exceeds_capacity", Provider: policy.ProviderGeneric}, Status: http.StatusTooManyRequests, Message: "too big"},
			want: denied(code.Code_RESOURCE_EXHAUSTED, "exceeds_capacity", typev3.StatusCode_TooManyRequests,
				`{"error":{"code":"exceeds_capacity","message":"too big"}}`,
				hvo("x-should-retry", "false"), hvo("x-tollgate-reason", "exceeds_capacity"), hvo("content-type", "application/json")),
		},
		"403: PERMISSION_DENIED": {
			v: Answer{Verdict: admission.Verdict{Outcome: admission.OutcomeDenied, Reason: admission.ReasonUnknownClient, Provider: policy.ProviderAnthropic}, Status: http.StatusForbidden, Message: "who?"},
			want: denied(code.Code_PERMISSION_DENIED, admission.ReasonUnknownClient, typev3.StatusCode_Forbidden,
				`{"error":{"message":"who?","type":"permission_error"},"type":"error"}`,
				hvo("x-should-retry", "false"), hvo("x-tollgate-reason", admission.ReasonUnknownClient), hvo("content-type", "application/json")),
		},
		"400: INVALID_ARGUMENT": {
			v: Answer{Verdict: admission.Verdict{Outcome: admission.OutcomeInvalid, Reason: admission.ReasonInvalidRequest, Provider: policy.ProviderGeneric}, Status: http.StatusBadRequest, Message: "unreadable"},
			want: denied(code.Code_INVALID_ARGUMENT, admission.ReasonInvalidRequest, typev3.StatusCode_BadRequest,
				`{"error":{"code":"invalid_request","message":"unreadable"}}`,
				hvo("x-should-retry", "false"), hvo("x-tollgate-reason", admission.ReasonInvalidRequest), hvo("content-type", "application/json")),
		},
		"503: UNAVAILABLE": {
			v: Answer{Verdict: admission.Verdict{Outcome: admission.OutcomeError, Reason: admission.ReasonStoreError, Provider: policy.ProviderSendGrid}, Status: http.StatusServiceUnavailable, Message: "store down"},
			want: denied(code.Code_UNAVAILABLE, admission.ReasonStoreError, typev3.StatusCode_ServiceUnavailable,
				`{"errors":[{"field":null,"message":"store down"}]}`,
				hvo("x-tollgate-reason", admission.ReasonStoreError), hvo("content-type", "application/json")),
		},
	}
	for name, tc := range tests {
		t.Run(name, func(t *testing.T) {
			got := toCheckResponse(&tc.v)
			requireProtoEqual(t, tc.want, got)
			if d := got.GetDeniedResponse(); d != nil {
				require.True(t, json.Valid([]byte(d.GetBody())), d.GetBody())
			}
			_, err := proto.Marshal(got)
			require.NoError(t, err, "the response must go over the wire")
		})
	}
}
