package authz

import (
	"fmt"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/tollgate/tollgate/admission"
	"github.com/tollgate/tollgate/limiter"
	"github.com/tollgate/tollgate/policy"
)

// TestRefusalRetryHeaders: what the official SDKs read to decide whether
// and when to retry. Refusals that can never pass carry x-should-retry:
// false; rate-limit refusals carry retry-after-ms with a jitter of at most
// 10% (and 250 ms) picked by the request id; every local reply names a
// request id (Anthropic's request-id too); an exhausted budget reads as
// the provider's own billing error.
func TestRefusalRetryHeaders(t *testing.T) {
	budget := func(p policy.Provider) admission.Verdict {
		return admission.Verdict{Outcome: admission.OutcomeDenied, Reason: string(limiter.ReasonBudgetExceeded), Provider: p, RequestID: "req-1"}
	}
	tests := map[string]struct {
		v          admission.Verdict
		status     int
		headers    map[string]string // subset; "" means absent
		bodyFields []string          // substrings of the body
	}{
		"rate limited: retry-after-ms with req-1's jitter, no x-should-retry": {
			v:       admission.Verdict{Outcome: admission.OutcomeDenied, Reason: string(limiter.ReasonRateLimited), Provider: policy.ProviderOpenAI, RetryAfter: 10 * time.Second, RequestID: "req-1"},
			status:  http.StatusTooManyRequests,
			headers: map[string]string{"retry-after": "10", "retry-after-ms": "10041", "x-should-retry": "", "x-request-id": "req-1", "request-id": ""},
		},
		"concurrency: jittered too": {
			v:       admission.Verdict{Outcome: admission.OutcomeDenied, Reason: string(limiter.ReasonConcurrency), Provider: policy.ProviderOpenAI, RetryAfter: time.Second, RequestID: "req-2"},
			status:  http.StatusTooManyRequests,
			headers: map[string]string{"retry-after": "1", "retry-after-ms": "1052", "x-should-retry": ""},
		},
		"openai budget: 429 insufficient_quota, never retried": {
			v: budget(policy.ProviderOpenAI), status: http.StatusTooManyRequests,
			headers:    map[string]string{"x-should-retry": "false", "retry-after-ms": "", "x-request-id": "req-1"},
			bodyFields: []string{`"code":"insufficient_quota"`},
		},
		"anthropic budget: 400 invalid_request_error, as its spend limit answers; request-id": {
			v: budget(policy.ProviderAnthropic), status: http.StatusBadRequest,
			headers:    map[string]string{"x-should-retry": "false", "x-request-id": "req-1", "request-id": "req-1"},
			bodyFields: []string{`"type":"invalid_request_error"`, `"request_id":"req-1"`},
		},
		"twilio budget: 403 code 20005, not the retryable 20429": {
			v: budget(policy.ProviderTwilio), status: http.StatusForbidden,
			headers:    map[string]string{"x-should-retry": "false"},
			bodyFields: []string{`"code":20005`, `"status":403`},
		},
		"exceeds capacity": {
			v:       admission.Verdict{Outcome: admission.OutcomeDenied, Reason: string(limiter.ReasonExceedsCapacity), Provider: policy.ProviderOpenAI},
			status:  http.StatusTooManyRequests,
			headers: map[string]string{"x-should-retry": "false"},
		},
		"unknown client": {
			v:       admission.Verdict{Outcome: admission.OutcomeDenied, Reason: admission.ReasonUnknownClient, Provider: policy.ProviderOpenAI},
			status:  http.StatusForbidden,
			headers: map[string]string{"x-should-retry": "false"},
		},
		"invalid request": {
			v:       admission.Verdict{Outcome: admission.OutcomeInvalid, Reason: admission.ReasonInvalidRequest, Provider: policy.ProviderGeneric},
			status:  http.StatusBadRequest,
			headers: map[string]string{"x-should-retry": "false"},
		},
		"store error: the SDK's own retry rules apply": {
			v:       admission.Verdict{Outcome: admission.OutcomeError, Reason: admission.ReasonStoreError, Provider: policy.ProviderOpenAI},
			status:  http.StatusServiceUnavailable,
			headers: map[string]string{"x-should-retry": "", "retry-after-ms": ""},
		},
	}
	for name, tc := range tests {
		t.Run(name, func(t *testing.T) {
			a := Render(tc.v)
			require.Equal(t, tc.status, a.Status)
			hs := map[string]string{}
			for _, h := range ResponseHeaders(&a) {
				hs[h.Name] = h.Value
			}
			for k, want := range tc.headers {
				if want == "" {
					assert.NotContains(t, hs, k)
				} else {
					assert.Equal(t, want, hs[k], k)
				}
			}
			assert.NotEmpty(t, hs["x-request-id"], "every local reply names a request id")
			_, body := DenialBody(&a)
			for _, f := range tc.bodyFields {
				assert.Contains(t, string(body), f)
			}
		})
	}
}

// TestJitter: bounded by 10% of the wait and 250 ms, the same for one
// request id, spread across ids.
func TestJitter(t *testing.T) {
	seen := map[time.Duration]bool{}
	for i := range 200 {
		id := fmt.Sprintf("req-%d", i)
		for _, wait := range []time.Duration{0, time.Millisecond, 500 * time.Millisecond, time.Second, time.Hour} {
			j := jitter(id, wait)
			require.GreaterOrEqual(t, j, time.Duration(0))
			require.LessOrEqual(t, j, min(wait/10, maxJitter), "%s %v", id, wait)
			require.Equal(t, j, jitter(id, wait), "deterministic")
		}
		seen[jitter(id, time.Hour)] = true
	}
	assert.Greater(t, len(seen), 150, "callers refused together are spread")
}

// TestRequestIDEcho: the worker's x-request-id comes back; a missing or
// unsafe one is replaced by a generated id.
func TestRequestIDEcho(t *testing.T) {
	deny := admission.Verdict{Outcome: admission.OutcomeDenied, Reason: admission.ReasonUnknownClient}
	for name, tc := range map[string]struct{ id, want string }{
		"echoed":         {id: "abc-123", want: "abc-123"},
		"missing":        {id: ""},
		"not ASCII":      {id: "caf\xc3\xa9"},
		"control":        {id: "a\r\nset-cookie: x"},
		"too long":       {id: strings.Repeat("a", 201)},
		"longest echoed": {id: strings.Repeat("a", 200), want: strings.Repeat("a", 200)},
	} {
		t.Run(name, func(t *testing.T) {
			v := deny
			v.RequestID = tc.id
			a := Render(v)
			if tc.want != "" {
				assert.Equal(t, tc.want, a.RequestID)
			} else {
				assert.Regexp(t, `^tg-[0-9a-f]{24}$`, a.RequestID)
			}
		})
	}
}
