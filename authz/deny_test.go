package authz_test

import (
	"encoding/json"
	"net/http"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/tollgate/tollgate/admission"
	"github.com/tollgate/tollgate/authz"
	"github.com/tollgate/tollgate/policy"
)

// TestDenialBody checks that each provider's denial parses as JSON in
// exactly the upstream API's own error shape (every key, nothing extra), so
// that the provider's SDK classifies and retries it as the real thing.
func TestDenialBody(t *testing.T) {
	const msg = "Rate limit reached for pool gpt-4: please try again in 2s."
	tokens := &admission.RateLimit{Pool: "gpt-4", Unit: policy.UnitToken, Limit: 1000}
	requests := &admission.RateLimit{Pool: "rpm", Unit: policy.UnitRequest, Limit: 60}
	limited := func(p policy.Provider, rl *admission.RateLimit) authz.Answer {
		return authz.Answer{Verdict: admission.Verdict{Outcome: admission.OutcomeDenied, Reason: "rate_limited", Provider: p, RateLimit: rl, RetryAfter: 1200 * time.Millisecond}, Status: http.StatusTooManyRequests, Message: msg}
	}
	denied := func(p policy.Provider, status int, reason string) authz.Answer {
		return authz.Answer{Verdict: admission.Verdict{Outcome: admission.OutcomeDenied, Reason: reason, Provider: p}, Status: status, Message: msg}
	}

	tests := map[string]struct {
		v    authz.Answer
		want any // the body as encoding/json decodes it into an any
	}{
		"openai 429 on a token pool": {
			v:    limited(policy.ProviderOpenAI, tokens),
			want: map[string]any{"error": map[string]any{"message": msg, "type": "tokens", "param": nil, "code": "rate_limit_exceeded"}},
		},
		"openai 429 on a request pool": {
			v:    limited(policy.ProviderOpenAI, requests),
			want: map[string]any{"error": map[string]any{"message": msg, "type": "requests", "param": nil, "code": "rate_limit_exceeded"}},
		},
		"openai 403": {
			v:    denied(policy.ProviderOpenAI, http.StatusForbidden, admission.ReasonUnknownClient),
			want: map[string]any{"error": map[string]any{"message": msg, "type": "invalid_request_error", "param": nil, "code": "unknown_client"}},
		},
		"anthropic 429": {
			v:    limited(policy.ProviderAnthropic, tokens),
			want: map[string]any{"type": "error", "error": map[string]any{"type": "rate_limit_error", "message": msg}},
		},
		"anthropic 403": {
			v:    denied(policy.ProviderAnthropic, http.StatusForbidden, admission.ReasonUnknownClient),
			want: map[string]any{"type": "error", "error": map[string]any{"type": "permission_error", "message": msg}},
		},
		"anthropic 503": {
			v:    denied(policy.ProviderAnthropic, http.StatusServiceUnavailable, admission.ReasonStoreError),
			want: map[string]any{"type": "error", "error": map[string]any{"type": "api_error", "message": msg}},
		},
		"twilio 429": {
			v:    limited(policy.ProviderTwilio, requests),
			want: map[string]any{"code": 20429.0, "message": msg, "more_info": "https://www.twilio.com/docs/errors/20429", "status": 429.0},
		},
		"twilio 403": {
			v:    denied(policy.ProviderTwilio, http.StatusForbidden, admission.ReasonUnknownClient),
			want: map[string]any{"code": 20403.0, "message": msg, "more_info": "https://www.twilio.com/docs/errors/20403", "status": 403.0},
		},
		"sendgrid 429": {
			v:    limited(policy.ProviderSendGrid, requests),
			want: map[string]any{"errors": []any{map[string]any{"field": nil, "message": msg}}},
		},
		"generic 429 says when to retry, in whole seconds rounded up": {
			v:    limited(policy.ProviderGeneric, requests),
			want: map[string]any{"error": map[string]any{"code": "rate_limited", "message": msg, "retry_after_seconds": 2.0}},
		},
		"generic 403 has no retry": {
			v:    denied(policy.ProviderGeneric, http.StatusForbidden, admission.ReasonUnmatchedRoute),
			want: map[string]any{"error": map[string]any{"code": "unmatched_route", "message": msg}},
		},
		"an unknown provider is generic": {
			v:    denied("", http.StatusBadRequest, admission.ReasonInvalidRequest),
			want: map[string]any{"error": map[string]any{"code": "invalid_request", "message": msg}},
		},
	}
	for name, tc := range tests {
		t.Run(name, func(t *testing.T) {
			ct, body := authz.DenialBody(&tc.v)
			assert.Equal(t, "application/json", ct)
			require.True(t, json.Valid(body), "%s", body)
			var got any
			require.NoError(t, json.Unmarshal(body, &got))
			assert.Equal(t, tc.want, got)
		})
	}
}

// TestDenialBodyEscapes: a message carrying text from the request (quotes,
// control characters, invalid UTF-8) still yields valid JSON.
func TestDenialBodyEscapes(t *testing.T) {
	msg := "no route for \"api.example.com\"/v1/\x00\n\xff\xfe</script>"
	for _, p := range []policy.Provider{policy.ProviderGeneric, policy.ProviderOpenAI, policy.ProviderAnthropic, policy.ProviderTwilio, policy.ProviderSendGrid} {
		t.Run(string(p), func(t *testing.T) {
			v := authz.Answer{Verdict: admission.Verdict{Reason: admission.ReasonUnmatchedRoute, Provider: p}, Status: http.StatusForbidden, Message: msg}
			_, body := authz.DenialBody(&v)
			require.True(t, json.Valid(body), "%q", body)
		})
	}
}
