package authz

import (
	"net/http"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/tollgate/tollgate/admission"
)

func TestFromHTTPCheck(t *testing.T) {
	chat := `{"model":"gpt-4","messages":[{"role":"user","content":"hi"}]}`
	base := func() http.Header {
		return http.Header{
			"Content-Type":              {"application/json"},
			"Content-Length":            {"57"}, // the check's own: ignored
			"X-Request-Id":              {"req-42"},
			"X-Tollgate-Client":         {"team-a"},
			"X-Tollgate-Upstream-Host":  {"api.openai.com"},
			"X-Tollgate-Content-Length": {"57"},
		}
	}
	with := func(edit func(http.Header)) http.Header { h := base(); edit(h); return h }
	wantHeaders := func(edit func(map[string]string)) map[string]string {
		m := map[string]string{":authority": "127.0.0.1:10001", "content-type": "application/json", "x-request-id": "req-42",
			"x-tollgate-client": "team-a", HeaderUpstreamHost: "api.openai.com", HeaderContentLength: "57", "content-length": "57"}
		if edit != nil {
			edit(m)
		}
		return m
	}

	tests := map[string]struct {
		uri, host string
		header    http.Header
		body      string
		pinned    string
		want      *admission.Request
	}{
		"an OpenAI chat call": {
			uri: "/ext_authz/v1/chat/completions", host: "127.0.0.1:10001", header: base(), body: chat,
			want: &admission.Request{ID: "req-42", Client: "team-a", Method: "POST", Host: "api.openai.com",
				Path: "/v1/chat/completions", Headers: wantHeaders(nil), Body: []byte(chat), BodySize: int64(len(chat))},
		},
		"query and fragment dropped, the path left raw for admission to canonicalize": {
			uri: "/ext_authz/v1/./chat//completions%2e?stream=true#x", host: "127.0.0.1:10001", header: base(), body: chat,
			want: &admission.Request{ID: "req-42", Client: "team-a", Method: "POST", Host: "api.openai.com",
				Path: "/v1/./chat//completions%2e", Headers: wantHeaders(nil), Body: []byte(chat), BodySize: int64(len(chat))},
		},
		"no upstream host header: the check's host": {
			uri: "/ext_authz/v1/chat/completions", host: "api.openai.com",
			header: with(func(h http.Header) { h.Del(HeaderUpstreamHost) }), body: chat,
			want: &admission.Request{ID: "req-42", Client: "team-a", Method: "POST", Host: "api.openai.com", Path: "/v1/chat/completions",
				Headers: wantHeaders(func(m map[string]string) { delete(m, HeaderUpstreamHost); m[":authority"] = "api.openai.com" }),
				Body:    []byte(chat), BodySize: int64(len(chat))},
		},
		"a partial body of known length": {
			uri: "/ext_authz/v1/chat/completions", host: "127.0.0.1:10001",
			header: with(func(h http.Header) { h.Set(HeaderContentLength, "900000"); h.Set(headerPartialBody, "true") }), body: chat,
			want: &admission.Request{ID: "req-42", Client: "team-a", Method: "POST", Host: "api.openai.com", Path: "/v1/chat/completions",
				Headers: wantHeaders(func(m map[string]string) {
					m[HeaderContentLength], m["content-length"], m[headerPartialBody] = "900000", "900000", "true"
				}),
				Body: []byte(chat), BodySize: 900000},
		},
		"a partial body of unknown length is marked partial": {
			uri: "/ext_authz/v1/chat/completions", host: "127.0.0.1:10001",
			header: with(func(h http.Header) { h.Del(HeaderContentLength); h.Set(headerPartialBody, "true") }), body: chat,
			want: &admission.Request{ID: "req-42", Client: "team-a", Method: "POST", Host: "api.openai.com", Path: "/v1/chat/completions",
				Headers: wantHeaders(func(m map[string]string) {
					delete(m, HeaderContentLength)
					delete(m, "content-length")
					m[headerPartialBody] = "true"
				}),
				Body: []byte(chat), BodySize: int64(len(chat)) + 1},
		},
		"credentials never kept, repeated headers joined": {
			uri: "/ext_authz/v1/chat/completions", host: "127.0.0.1:10001",
			header: with(func(h http.Header) {
				h.Set("Authorization", "Bearer sk-secret")
				h.Set("X-Api-Key", "k")
				h["X-Extra"] = []string{"a", "b"}
			}), body: chat,
			want: &admission.Request{ID: "req-42", Client: "team-a", Method: "POST", Host: "api.openai.com", Path: "/v1/chat/completions",
				Headers: wantHeaders(func(m map[string]string) { m["x-extra"] = "a,b" }), Body: []byte(chat), BodySize: int64(len(chat))},
		},
		"pinned client beats the header": {
			uri: "/ext_authz/v1/chat/completions", host: "127.0.0.1:10001", header: base(), body: chat, pinned: "billing",
			want: &admission.Request{ID: "req-42", Client: "billing", Method: "POST", Host: "api.openai.com",
				Path: "/v1/chat/completions", Headers: wantHeaders(nil), Body: []byte(chat), BodySize: int64(len(chat))},
		},
		"no prefix: not from a configured Envoy": {
			uri: "/v1/chat/completions", host: "127.0.0.1:10001", header: base(), body: chat,
			want: &admission.Request{ID: "req-42", Client: "team-a", Method: "POST", Host: "api.openai.com", Headers: wantHeaders(nil),
				Body: []byte(chat), BodySize: int64(len(chat)), Invalid: "the check's path lacks the /ext_authz prefix Envoy's http_service path_prefix adds"},
		},
		"a prefix that is not a whole segment": {
			uri: "/ext_authzv1/chat", host: "127.0.0.1:10001", header: base(),
			want: &admission.Request{ID: "req-42", Client: "team-a", Method: "POST", Host: "api.openai.com", Headers: wantHeaders(nil),
				Body: []byte{}, BodySize: 57, Invalid: "the check names no path"},
		},
		"no host at all": {
			uri: "/ext_authz/v1/chat", header: with(func(h http.Header) { h.Del(HeaderUpstreamHost) }),
			want: &admission.Request{ID: "req-42", Client: "team-a", Method: "POST", Path: "/v1/chat",
				Headers: wantHeaders(func(m map[string]string) { delete(m, HeaderUpstreamHost); delete(m, ":authority") }),
				Body:    []byte{}, BodySize: 57, Invalid: "the check names no host"},
		},
	}
	for name, tc := range tests {
		t.Run(name, func(t *testing.T) {
			got := fromHTTPCheck("POST", tc.uri, tc.host, tc.header, []byte(tc.body), clientSource{header: "x-tollgate-client", pinned: tc.pinned})
			assert.Equal(t, tc.want, got)
		})
	}
}

func TestToHTTPCheckResponse(t *testing.T) {
	tests := map[string]struct {
		a          Answer
		wantStatus int
		want       map[string]string
		wantBody   bool
	}{
		"allowed with a reservation and a route": {
			a:          Answer{Verdict: admission.Verdict{Allowed: true, Reservation: "r1", Route: "openai"}},
			wantStatus: 200,
			want:       map[string]string{HeaderReservation: "r1", HeaderRoute: "openai"},
		},
		"allowed, nothing reserved: a worker's own headers are removed": {
			a:          Answer{Verdict: admission.Verdict{Allowed: true}},
			wantStatus: 200,
			want:       map[string]string{headerAuthHeadersToRemove: HeaderReservation + "," + HeaderRoute},
		},
		"denied": {
			a:          Answer{Verdict: admission.Verdict{Reason: "unknown_client"}, Status: 403, Message: "no"},
			wantStatus: 403, wantBody: true,
			want: map[string]string{"content-type": "application/json", "x-should-retry": "false", "x-tollgate-reason": "unknown_client"},
		},
		"denied without a status is never an allow": {
			a:          Answer{Verdict: admission.Verdict{Reason: "x"}},
			wantStatus: 403, wantBody: true,
			want: map[string]string{"content-type": "application/json", "x-tollgate-reason": "x"},
		},
	}
	for name, tc := range tests {
		t.Run(name, func(t *testing.T) {
			got := toHTTPCheckResponse(&tc.a)
			require.Equal(t, tc.wantStatus, got.Status)
			m := map[string]string{}
			for _, h := range got.Headers {
				m[h.Name] = h.Value
			}
			assert.Equal(t, tc.want, m)
			assert.Equal(t, tc.wantBody, len(got.Body) > 0)
		})
	}
}

// FuzzFromHTTPCheck: whatever Envoy's HTTP ext_authz form sends (path,
// host, headers, body), reading it never panics, and a request it cannot
// read says why instead of passing as something else.
func FuzzFromHTTPCheck(f *testing.F) {
	f.Add("POST", "/ext_authz/v1/chat/completions", "api.openai.com", "acme", "1296", `{"model":"gpt-4o"}`)
	f.Add("GET", "/ext_authz", "", "", "", "")
	f.Add("POST", "/ext_authz//v1/../%2e%2e/x?y=1", "h:1", "a b", "-5", "\x00")
	f.Add("POST", "/other", "api.anthropic.com", "", "99999999999999999999999", "{")
	f.Fuzz(func(t *testing.T, method, uri, host, client, length, body string) {
		h := http.Header{}
		h.Set("x-tollgate-client", client)
		h.Set("x-tollgate-content-length", length)
		h.Set("x-tollgate-upstream-host", host)
		r := fromHTTPCheck(method, uri, host, h, []byte(body), clientSource{header: "x-tollgate-client"})
		if r == nil {
			t.Fatal("nil request")
		}
		if r.Invalid == "" && r.BodySize < int64(len(r.Body)) {
			t.Fatalf("body size %d below the %d bytes read", r.BodySize, len(r.Body))
		}
	})
}
