package authz_test

import (
	"context"
	"fmt"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/tollgate/tollgate/admission"
	"github.com/tollgate/tollgate/authz"
	"github.com/tollgate/tollgate/internal/fakeclock"
	"github.com/tollgate/tollgate/limiter"
	"github.com/tollgate/tollgate/policy"
)

const (
	decisionsMetric   = "tollgate_authz_decisions_total"
	storeErrorsMetric = "tollgate_authz_store_errors_total"
)

// testPolicy is the policy the Decider tests run on. defaults is the body of
// the defaults block (indented by two spaces); smsShadow puts the sms pool
// alone in shadow mode.
//
//   - gpt-4: 1000 tokens, +10/s (one token per 100 ms), $0.03/1K; routed
//     for model gpt-4 only, with a default output allowance of 100.
//   - chat: a large token pool for every other OpenAI model.
//   - sms: 3 segments, +2/s (one per 500 ms).
//   - email: 10 e-mails, +1/s; tier "metered" caps each client at 2, +1/s.
//
// Unknown clients get tier basic unless defaults says otherwise.
func testPolicy(defaults string, smsShadow bool) string {
	if !strings.Contains(defaults, "unknown_client:") {
		defaults += "\n  unknown_client: basic"
	}
	return fmt.Sprintf(`
defaults:
%s
pools:
  gpt-4:
    unit: token
    capacity: 1000
    refill_per_second: 10
    price: "0.03/1K"
  chat:
    unit: token
    capacity: 100000
    refill_per_second: 1000
  sms:
    unit: segment
    capacity: 3
    refill_per_second: 2
    price: "0.0075"
    shadow: %t
  email:
    unit: email
    capacity: 10
    refill_per_second: 1
routes:
  openai-gpt-4:
    host: api.openai.com
    path_prefix: /v1/
    models: [gpt-4]
    provider: openai
    pools: [gpt-4]
    default_max_tokens: 100
    class: immediate # these tests are about answers given at once; queue_test.go holds calls
  openai-other:
    host: api.openai.com
    path_prefix: /v1/
    provider: openai
    pools: [chat]
    class: immediate
  twilio-sms:
    host: api.twilio.com
    path_prefix: /2010-04-01/Accounts/
    provider: twilio
    pools: [sms]
    class: immediate
  sendgrid-mail:
    host: api.sendgrid.com
    path_prefix: /v3/mail/send
    provider: sendgrid
    pools: [email]
    class: immediate
tiers:
  basic:
    priority: 10
    max_concurrent: 5
  metered:
    priority: 20
    max_concurrent: 5
    client_limits:
      email:
        capacity: 2
        refill_per_second: 1
clients:
  a:
    tier: metered
  b:
    tier: metered
`, defaults, smsShadow)
}

var (
	gpt4Limit  = policy.Limit{Capacity: 1000, Refill: 10}
	emailLimit = policy.Limit{Capacity: 10, Refill: 1}
	// emailClientLimit is tier metered's cap per client in the email pool.
	emailClientLimit = policy.Limit{Capacity: 2, Refill: 1}
)

func openAIRequest(client string, body []byte) *admission.Request {
	return &admission.Request{ID: "req-1", Client: client, Method: http.MethodPost, Host: "api.openai.com",
		Path: "/v1/chat/completions", Body: body, BodySize: int64(len(body))}
}

func smsRequest(client string) *admission.Request {
	body := []byte("To=%2B15558675310&From=%2B15017122661&Body=Hello")
	return &admission.Request{Client: client, Method: http.MethodPost, Host: "api.twilio.com",
		Path: "/2010-04-01/Accounts/AC123/Messages.json", Body: body, BodySize: int64(len(body))}
}

func mailRequest(client string) *admission.Request {
	body := []byte(`{"personalizations":[{"to":[{"email":"a@example.com"}]}],"subject":"hi"}`)
	return &admission.Request{Client: client, Method: http.MethodPost, Host: "api.sendgrid.com",
		Path: "/v3/mail/send", Body: body, BodySize: int64(len(body))}
}

// gist is the part of a Verdict a table compares.
type gist struct {
	Allowed    bool
	Outcome    admission.Outcome
	Reason     string
	Status     int
	Provider   policy.Provider
	Route      string
	Tier       string
	Pool       string
	RetryAfter time.Duration
}

func gistOf(v authz.Answer) gist {
	return gist{v.Allowed, v.Outcome, v.Reason, v.Status, v.Provider, v.Route, v.Tier, v.Pool, v.RetryAfter}
}

// headerMap turns headers into a map, failing on a repeated name.
func headerMap(tb testing.TB, hs []authz.Header) map[string]string {
	tb.Helper()
	m := make(map[string]string, len(hs))
	for _, h := range hs {
		_, dup := m[h.Name]
		require.False(tb, dup, "header %q repeated", h.Name)
		m[h.Name] = h.Value
	}
	return m
}

// TestDecideOneCall covers every way a single call is answered, and that
// each answer is counted exactly once under its labels.
func TestDecideOneCall(t *testing.T) {
	gpt4 := chatBody("gpt-4", 50, "hello")
	tests := map[string]struct {
		defaults string
		store    admission.Store // nil: the memory store
		req      *admission.Request
		want     gist
		// metricPool is the decision's pool label ("none" without a route).
		metricPool string
	}{
		"allowed on the model's route": {
			req:        openAIRequest("a", gpt4),
			want:       gist{Allowed: true, Outcome: admission.OutcomeAllowed, Provider: policy.ProviderOpenAI, Route: "openai-gpt-4", Tier: "metered", Pool: "gpt-4"},
			metricPool: "gpt-4",
		},
		"another model takes the model-less route": {
			req:        openAIRequest("a", chatBody("gpt-3.5-turbo", 50, "hello")),
			want:       gist{Allowed: true, Outcome: admission.OutcomeAllowed, Provider: policy.ProviderOpenAI, Route: "openai-other", Tier: "metered", Pool: "chat"},
			metricPool: "chat",
		},
		"model names match exactly, not by prefix": {
			req:        openAIRequest("a", chatBody("gpt-4o", 50, "hello")),
			want:       gist{Allowed: true, Outcome: admission.OutcomeAllowed, Provider: policy.ProviderOpenAI, Route: "openai-other", Tier: "metered", Pool: "chat"},
			metricPool: "chat",
		},
		"a call without a body takes the model-less route": {
			req:        &admission.Request{Client: "a", Method: http.MethodGet, Host: "api.openai.com", Path: "/v1/models"},
			want:       gist{Allowed: true, Outcome: admission.OutcomeAllowed, Provider: policy.ProviderOpenAI, Route: "openai-other", Tier: "metered", Pool: "chat"},
			metricPool: "chat",
		},
		"host matching ignores case and port": {
			req: func() *admission.Request {
				r := openAIRequest("a", gpt4)
				r.Host = "API.OpenAI.com:443"
				return r
			}(),
			want:       gist{Allowed: true, Outcome: admission.OutcomeAllowed, Provider: policy.ProviderOpenAI, Route: "openai-gpt-4", Tier: "metered", Pool: "gpt-4"},
			metricPool: "gpt-4",
		},
		"unknown client gets the default tier": {
			req:        openAIRequest("stranger", gpt4),
			want:       gist{Allowed: true, Outcome: admission.OutcomeAllowed, Provider: policy.ProviderOpenAI, Route: "openai-gpt-4", Tier: "basic", Pool: "gpt-4"},
			metricPool: "gpt-4",
		},
		"unknown client denied when the policy says so": {
			defaults:   "  unknown_client: deny",
			req:        openAIRequest("stranger", gpt4),
			want:       gist{Outcome: admission.OutcomeDenied, Reason: admission.ReasonUnknownClient, Status: http.StatusForbidden, Provider: policy.ProviderOpenAI, Route: "openai-gpt-4"},
			metricPool: "none",
		},
		"unmatched route passes and is counted": {
			req:        &admission.Request{Client: "a", Method: http.MethodPost, Host: "api.example.com", Path: "/v1/things"},
			want:       gist{Allowed: true, Outcome: admission.OutcomeUnmatched, Reason: admission.ReasonUnmatchedRoute, Provider: policy.ProviderGeneric},
			metricPool: "none",
		},
		"unmatched route denied when the policy says so": {
			defaults:   "  unmatched_route: deny",
			req:        &admission.Request{Client: "a", Method: http.MethodPost, Host: "api.example.com", Path: "/v1/things"},
			want:       gist{Outcome: admission.OutcomeUnmatched, Reason: admission.ReasonUnmatchedRoute, Status: http.StatusForbidden, Provider: policy.ProviderGeneric},
			metricPool: "none",
		},
		"invalid request denied by default": {
			req:        &admission.Request{Invalid: "the check names no host"},
			want:       gist{Outcome: admission.OutcomeInvalid, Reason: admission.ReasonInvalidRequest, Status: http.StatusBadRequest, Provider: policy.ProviderGeneric},
			metricPool: "none",
		},
		"invalid request passes when the policy allows it": {
			defaults:   "  invalid_request: allow",
			req:        &admission.Request{Invalid: "the check names no host"},
			want:       gist{Allowed: true, Outcome: admission.OutcomeInvalid, Reason: admission.ReasonInvalidRequest, Provider: policy.ProviderGeneric},
			metricPool: "none",
		},
		"max_tokens above the pool's capacity can never pass": {
			req:        openAIRequest("a", chatBody("gpt-4", 5000, "hello")),
			want:       gist{Outcome: admission.OutcomeDenied, Reason: string(limiter.ReasonExceedsCapacity), Status: http.StatusTooManyRequests, Provider: policy.ProviderOpenAI, Route: "openai-gpt-4", Tier: "metered", Pool: "gpt-4"},
			metricPool: "gpt-4",
		},
		"a failing store gives 503": {
			store:      failingStore{err: errStoreDown},
			req:        openAIRequest("a", gpt4),
			want:       gist{Outcome: admission.OutcomeError, Reason: admission.ReasonStoreError, Status: http.StatusServiceUnavailable, Provider: policy.ProviderOpenAI, Route: "openai-gpt-4", Tier: "metered", Pool: "gpt-4"},
			metricPool: "gpt-4",
		},
	}
	for name, tc := range tests {
		t.Run(name, func(t *testing.T) {
			reg := prometheus.NewRegistry()
			store := tc.store
			if store == nil {
				store = newMemStore(t, fakeclock.New(epoch))
			}
			d := newTestDecider(t, compilePolicy(t, testPolicy(tc.defaults, false)), store, reg, nil)

			v := d.Decide(context.Background(), tc.req)
			assert.Equal(t, tc.want, gistOf(v))
			if v.Allowed {
				assert.Zero(t, v.Status, "an allowed call has no denial status")
			} else {
				assert.NotEmpty(t, v.Message, "a denial says why")
			}

			n, err := testutil.GatherAndCount(reg, decisionsMetric)
			require.NoError(t, err)
			assert.Equal(t, 1, n, "one decision, one series")
			tierLabel := tc.want.Tier
			if tierLabel == "" {
				tierLabel = "none" // decided before a tier was known
			}
			assert.Equal(t, 1.0, metricValue(t, reg, decisionsMetric, decisionLabels(tc.metricPool, tierLabel, tc.want.Outcome, tc.want.Reason)))
			wantStoreErrors := 0.0
			if tc.want.Outcome == admission.OutcomeError {
				wantStoreErrors = 1
			}
			assert.Equal(t, wantStoreErrors, metricValue(t, reg, storeErrorsMetric, nil))
			requireLint(t, reg)
		})
	}
}

// TestDecideExceedsCapacityHasNoRetryAfter: a call that can never fit must
// not invite a retry.
func TestDecideExceedsCapacityHasNoRetryAfter(t *testing.T) {
	d := newDecider(t, testPolicy("", false))
	body := chatBody("gpt-4", 5000, "hello")
	v := d.Decide(context.Background(), openAIRequest("a", body))
	require.False(t, v.Allowed)
	assert.Equal(t, string(limiter.ReasonExceedsCapacity), v.Reason)
	assert.Zero(t, v.RetryAfter)
	hs := headerMap(t, authz.ResponseHeaders(&v))
	assert.NotContains(t, hs, "retry-after")
	assert.Equal(t, "exceeds_capacity", hs["x-tollgate-reason"])
	assert.Contains(t, v.Message, fmt.Sprintf("needs %d tokens but the limit is 1000", tokens(5000, body)))
	assert.Equal(t, int64(1000), d.remaining(t, limiter.Key{Pool: "gpt-4"}, gpt4Limit), "a denial takes nothing")
}

// TestDecideEstimate checks the estimate as the Decider applies it: input
// tokens counted by the provider's rules plus the output allowance (the
// body's, else the route's default); a truncated body, which cannot be
// parsed, is charged a token per four bytes of its full size. The pool's
// price gives the money.
func TestDecideEstimate(t *testing.T) {
	withMax := chatBody("gpt-4", 50, "What is the capital of France?")
	noMax := chatBody("gpt-4", -1, "What is the capital of France?")
	completion := []byte(`{"model":"gpt-4","max_completion_tokens":70,"messages":[{"role":"user","content":"hi"}]}`)
	tests := map[string]struct {
		body     []byte
		bodySize int64 // 0: len(body)
		want     int64
		exact    bool
	}{
		"max_tokens plus the counted prompt":    {body: withMax, want: tokens(50, withMax), exact: true},
		"no max_tokens takes the route default": {body: noMax, want: tokens(100, noMax), exact: true},
		"max_completion_tokens counts too":      {body: completion, want: tokens(70, completion), exact: true},
		"a truncated body is charged its full size": {
			body: withMax, bodySize: 2001, want: 50 + 501,
		},
	}
	for name, tc := range tests {
		t.Run(name, func(t *testing.T) {
			d := newDecider(t, testPolicy("", false))
			r := openAIRequest("a", tc.body)
			if tc.bodySize > 0 {
				r.BodySize = tc.bodySize
			}
			v := d.Decide(context.Background(), r)
			require.True(t, v.Allowed, v.Message)

			require.Len(t, v.Estimate.Pools, 1)
			pc := v.Estimate.Pools[0]
			assert.Equal(t, "gpt-4", pc.Pool.Name)
			assert.Equal(t, tc.want, pc.Units)
			assert.Equal(t, tc.exact, v.Estimate.Exact)
			// $0.03 per 1K tokens is 30,000 nano-dollars a token.
			assert.Equal(t, policy.Money(tc.want*30_000), v.Estimate.Cost)
			assert.Equal(t, policy.Money((tc.want*30_000*120+99)/100), v.Estimate.Reserve, "conservative: 120%")
			assert.Equal(t, 1.0, metricValue(t, d.reg, "tollgate_costing_unknown_models_total", map[string]string{"route": "openai-gpt-4"}),
				"the policy prices no model by name: a miss")

			// Refilling 10 a second, each token takes 100 ms to come back.
			reset := time.Duration(tc.want) * 100 * time.Millisecond
			assert.Equal(t, &admission.RateLimit{Pool: "gpt-4", Unit: policy.UnitToken, Limit: 1000, Remaining: 1000 - tc.want, Reset: reset}, v.RateLimit)
			assert.Equal(t, map[string]string{
				"x-ratelimit-limit":     "1000",
				"x-ratelimit-remaining": fmt.Sprint(1000 - tc.want),
				"x-ratelimit-reset":     fmt.Sprint(int64((reset + time.Second - 1) / time.Second)),
				// What the worker spends, in dollars; the tier budgets nothing.
				authz.HeaderEstimatedCost:   policy.Money(tc.want * 30_000).String(),
				authz.HeaderBudgetRemaining: "unlimited",
			}, headerMap(t, authz.ResponseHeaders(&v)))
			assert.Equal(t, 1000-tc.want, d.remaining(t, limiter.Key{Pool: "gpt-4"}, gpt4Limit))
		})
	}
}

// TestDecideRateLimitedThenRefilled drains the 3-segment sms pool (refill
// one segment per 500 ms) and watches it come back on the fake clock.
func TestDecideRateLimitedThenRefilled(t *testing.T) {
	d := newDecider(t, testPolicy("", false))
	ctx := context.Background()

	for want := int64(2); want >= 0; want-- {
		v := d.Decide(ctx, smsRequest("a"))
		require.True(t, v.Allowed, v.Message)
		require.Equal(t, want, v.RateLimit.Remaining)
	}

	r := smsRequest("a")
	r.ID = "req-1"
	v := d.Decide(ctx, r)
	assert.Equal(t, gist{Outcome: admission.OutcomeDenied, Reason: "rate_limited", Status: http.StatusTooManyRequests,
		Provider: policy.ProviderTwilio, Route: "twilio-sms", Tier: "metered", Pool: "sms", RetryAfter: 500 * time.Millisecond}, gistOf(v))
	assert.Equal(t, "Rate limit reached for pool sms: limit 3 segments, refilling 2 per second; this request needs 1. Please try again in 1s.", v.Message)
	assert.Equal(t, map[string]string{
		"x-ratelimit-limit":     "3",
		"x-ratelimit-remaining": "0",
		"x-ratelimit-reset":     "2",   // 1.5 s to full, rounded up
		"retry-after":           "1",   // 500 ms, rounded up
		"retry-after-ms":        "512", // 500 ms + the jitter of req-1
		"x-tollgate-reason":     "rate_limited",
		"x-request-id":          "req-1",
	}, headerMap(t, authz.ResponseHeaders(&v)))

	d.clk.Advance(499 * time.Millisecond)
	v = d.Decide(ctx, smsRequest("a"))
	require.False(t, v.Allowed)
	assert.Equal(t, time.Millisecond, v.RetryAfter, "the wait shrinks with the clock, exactly")

	d.clk.Advance(time.Millisecond)
	v = d.Decide(ctx, smsRequest("a"))
	require.True(t, v.Allowed, v.Message)
	assert.Equal(t, int64(0), v.RateLimit.Remaining)

	require.NoError(t, testutil.GatherAndCompare(d.reg, strings.NewReader(`
# HELP tollgate_authz_decisions_total Admission decisions, by pool ("none" when no route matched), client tier, outcome (allowed, denied, shadow_denied, unmatched, invalid, error, fail_open) and reason.
# TYPE tollgate_authz_decisions_total counter
tollgate_authz_decisions_total{outcome="allowed",pool="sms",reason="",tier="metered"} 4
tollgate_authz_decisions_total{outcome="denied",pool="sms",reason="rate_limited",tier="metered"} 2
`), decisionsMetric))
	requireLint(t, d.reg)
}

// TestDecidePerClientIsolation: tier metered caps each client at 2 e-mails
// within the 10-e-mail pool. Client a runs out; b does not notice; the pool's
// own bucket is charged for both.
func TestDecidePerClientIsolation(t *testing.T) {
	d := newDecider(t, testPolicy("", false))
	ctx := context.Background()

	for range 2 {
		v := d.Decide(ctx, mailRequest("a"))
		require.True(t, v.Allowed, v.Message)
	}
	v := d.Decide(ctx, mailRequest("a"))
	assert.Equal(t, gist{Outcome: admission.OutcomeDenied, Reason: "rate_limited", Status: http.StatusTooManyRequests,
		Provider: policy.ProviderSendGrid, Route: "sendgrid-mail", Tier: "metered", Pool: "email", RetryAfter: time.Second}, gistOf(v))
	assert.Contains(t, v.Message, `client "a" in pool email`)
	assert.Equal(t, &admission.RateLimit{Pool: "email", Unit: policy.UnitEmail, Limit: 2, Remaining: 0, Reset: 2 * time.Second}, v.RateLimit,
		"the headers report the client's bucket, which denied")

	v = d.Decide(ctx, mailRequest("b"))
	require.True(t, v.Allowed, v.Message)

	assert.Equal(t, int64(7), d.remaining(t, limiter.Key{Pool: "email"}, emailLimit), "pool-wide: a twice, b once; a's denial took nothing")
	assert.Equal(t, int64(0), d.remaining(t, limiter.Key{Pool: "email", Client: "a"}, emailClientLimit))
	assert.Equal(t, int64(1), d.remaining(t, limiter.Key{Pool: "email", Client: "b"}, emailClientLimit))

	assert.Equal(t, 3.0, metricValue(t, d.reg, decisionsMetric, decisionLabels("email", "metered", admission.OutcomeAllowed, "")))
	assert.Equal(t, 1.0, metricValue(t, d.reg, decisionsMetric, decisionLabels("email", "metered", admission.OutcomeDenied, "rate_limited")))
}

// TestDecideShadow: in shadow mode a call that would be denied passes, says
// so, and is counted as shadow_denied; a shadow bucket that is short is left
// as it is.
func TestDecideShadow(t *testing.T) {
	tests := map[string]struct {
		defaults  string
		smsShadow bool
		// emailShadowed: whether the email pool (not marked) is in shadow too.
		emailShadowed bool
	}{
		"global":   {defaults: "  shadow: true", emailShadowed: true},
		"per pool": {smsShadow: true},
	}
	for name, tc := range tests {
		t.Run(name, func(t *testing.T) {
			d := newDecider(t, testPolicy(tc.defaults, tc.smsShadow))
			ctx := context.Background()

			for range 3 {
				require.True(t, d.Decide(ctx, smsRequest("a")).Allowed)
			}
			v := d.Decide(ctx, smsRequest("a"))
			assert.Equal(t, gist{Allowed: true, Outcome: admission.OutcomeShadowDenied, Reason: "rate_limited",
				Provider: policy.ProviderTwilio, Route: "twilio-sms", Tier: "metered", Pool: "sms"}, gistOf(v))
			assert.Equal(t, "denied; reason=rate_limited; pool=sms; retry_after=1", v.ShadowDecision)
			hs := headerMap(t, authz.ResponseHeaders(&v))
			assert.Equal(t, v.ShadowDecision, hs["x-tollgate-shadow-decision"])
			assert.NotContains(t, hs, "retry-after")
			assert.Equal(t, 1.0, metricValue(t, d.reg, decisionsMetric, decisionLabels("sms", "metered", admission.OutcomeShadowDenied, "rate_limited")))

			// The short bucket was not charged: half a second later one
			// segment is back and a call passes for real.
			d.clk.Advance(500 * time.Millisecond)
			v = d.Decide(ctx, smsRequest("a"))
			assert.Equal(t, admission.OutcomeAllowed, v.Outcome)
			assert.Empty(t, v.ShadowDecision)

			// A pool not in shadow still denies.
			for range 2 {
				require.True(t, d.Decide(ctx, mailRequest("a")).Allowed)
			}
			v = d.Decide(ctx, mailRequest("a"))
			if tc.emailShadowed {
				assert.True(t, v.Allowed)
				assert.Equal(t, admission.OutcomeShadowDenied, v.Outcome)
				assert.Equal(t, "denied; reason=rate_limited; pool=email; retry_after=1", v.ShadowDecision)
			} else {
				assert.False(t, v.Allowed)
				assert.Equal(t, admission.OutcomeDenied, v.Outcome)
				assert.Equal(t, http.StatusTooManyRequests, v.Status)
			}
			requireLint(t, d.reg)
		})
	}
}

// TestDecideShadowExceedsCapacity: shadow mode also lets through a call that
// could never fit, and names the right reason.
func TestDecideShadowExceedsCapacity(t *testing.T) {
	d := newDecider(t, testPolicy("  shadow: true", false))
	v := d.Decide(context.Background(), openAIRequest("a", chatBody("gpt-4", 5000, "hello")))
	assert.True(t, v.Allowed)
	assert.Equal(t, admission.OutcomeShadowDenied, v.Outcome)
	assert.Equal(t, "exceeds_capacity", v.Reason)
	assert.Equal(t, "denied; reason=exceeds_capacity; pool=gpt-4; retry_after=0", v.ShadowDecision)
	assert.Equal(t, int64(1000), d.remaining(t, limiter.Key{Pool: "gpt-4"}, gpt4Limit))
	assert.Equal(t, 1.0, metricValue(t, d.reg, decisionsMetric, decisionLabels("gpt-4", "metered", admission.OutcomeShadowDenied, "exceeds_capacity")))
}

// TestDecideStoreErrorIsCounted: every failing Reserve is one store error
// and one decision with reason store_error.
func TestDecideStoreErrorIsCounted(t *testing.T) {
	reg := prometheus.NewRegistry()
	d := newTestDecider(t, compilePolicy(t, testPolicy("", false)), failingStore{err: errStoreDown}, reg, nil)
	for range 3 {
		v := d.Decide(context.Background(), smsRequest("a"))
		require.Equal(t, http.StatusServiceUnavailable, v.Status)
		require.Equal(t, policy.ProviderTwilio, v.Provider, "the denial keeps the provider's shape")
	}
	assert.Equal(t, 3.0, metricValue(t, reg, storeErrorsMetric, nil))
	assert.Equal(t, 3.0, metricValue(t, reg, decisionsMetric, decisionLabels("sms", "metered", admission.OutcomeError, admission.ReasonStoreError)))
	requireLint(t, reg)
}

// TestDecideCancelledIsNotAStoreError: when Envoy gives up (its deadline
// cancels the check) the store's ctx error is the caller's doing, not the
// store's: reason cancelled, and the store-error counter stays at zero.
func TestDecideCancelledIsNotAStoreError(t *testing.T) {
	d := newDecider(t, testPolicy("", false))
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	v := d.Decide(ctx, smsRequest("a"))
	assert.False(t, v.Allowed)
	assert.Equal(t, admission.OutcomeError, v.Outcome)
	assert.Equal(t, admission.ReasonCancelled, v.Reason)
	assert.Equal(t, 0.0, metricValue(t, d.reg, storeErrorsMetric, nil))
	assert.Equal(t, 1.0, metricValue(t, d.reg, decisionsMetric, decisionLabels("sms", "metered", admission.OutcomeError, admission.ReasonCancelled)))
}

// TestDecideFractionalRate: a pool refilling 100 segments an hour (one
// every 36 s, no whole number a second) answers with exact waits and says
// its rate in the denial.
func TestDecideFractionalRate(t *testing.T) {
	d := newDecider(t, `
pools:
  sms: {unit: segment, capacity: 2, refill: 100/h, price: "0.0075"}
routes:
  twilio-sms:
    host: api.twilio.com
    path_prefix: /2010-04-01/Accounts/
    provider: twilio
    pools: [sms]
    class: immediate
tiers:
  metered: {priority: 20, max_concurrent: 5}
clients:
  a: {tier: metered}
`)
	ctx := context.Background()
	for range 2 {
		v := d.Decide(ctx, smsRequest("a"))
		require.True(t, v.Allowed, v.Message)
	}
	v := d.Decide(ctx, smsRequest("a"))
	require.False(t, v.Allowed)
	assert.Equal(t, 36*time.Second, v.RetryAfter)
	assert.Equal(t, "Rate limit reached for pool sms: limit 2 segments, refilling 100 per hour; this request needs 1. Please try again in 36s.", v.Message)
	h := headerMap(t, authz.ResponseHeaders(&v))
	assert.Equal(t, "36", h["retry-after"])
	assert.Equal(t, "72", h["x-ratelimit-reset"], "two units at one every 36 s")

	d.clk.Advance(36*time.Second - time.Microsecond)
	require.False(t, d.Decide(ctx, smsRequest("a")).Allowed, "a microsecond early")
	d.clk.Advance(time.Microsecond)
	require.True(t, d.Decide(ctx, smsRequest("a")).Allowed, "one segment back after exactly 36 s")
}
