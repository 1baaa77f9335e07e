package e2e

import (
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/tollgate/tollgate/internal/fakeapi"
)

// TestBudgetRefusal: Tollgate refuses a call its client's budget cannot
// pay for; what the SDKs make of the refusal.
func TestBudgetRefusal(t *testing.T) {
	t.Parallel()
	r := newRig(t)
	before := r.calls()
	// Each provider's own billing error: OpenAI's 429 insufficient_quota
	// (the SDK's RateLimitError), Anthropic's 400 invalid_request_error
	// (its BadRequestError).
	for _, tc := range []struct {
		c      sdkCall
		status int
		class  string
	}{
		{sdkCall{SDK: "openai", Op: "chat", BaseURL: r.openai + "/v1", Client: "e2e-broke", Params: chatParams("gpt-4.1-nano")}, 429, "RateLimitError"},
		{sdkCall{SDK: "anthropic", Op: "messages", BaseURL: r.anthropic, Client: "e2e-broke", Params: claudeParams()}, 400, "BadRequestError"},
	} {
		c := tc.c
		res := run(t, c)
		require.False(t, res.OK)
		require.NotNil(t, res.Error)
		assert.Equal(t, tc.status, res.Error.Status)
		assert.Equal(t, tc.class, res.Error.Class)
		t.Logf("  %s: type=%s request id=%s retry-after=%q x-should-retry=%q", c.SDK, deref(res.Error.Type), deref(res.Error.RequestID),
			res.Error.Headers["retry-after"], res.Error.Headers["x-should-retry"])
		// A budget refusal can never pass: with x-should-retry: false the
		// SDK makes one attempt (before issue 11 it made 1 + maxRetries).
		shouldRetry := res.Error.Headers["x-should-retry"]
		fixedNow(t, "#9 the SDK retries a budget refusal", shouldRetry == "false" && len(res.Attempts) == 1, "%s made %d attempts in %.0f ms", c.SDK, len(res.Attempts), res.ElapsedMs)
		fixedNow(t, "#9 a local reply has no request id", res.Error.RequestID != nil,
			"%s: error.requestID %s", c.SDK, deref(res.Error.RequestID))
		if c.SDK == "anthropic" {
			// Anthropic has its own billing error; the budget refusal no
			// longer reads as a rate limit.
			fixedNow(t, "#9 an Anthropic budget refusal reads as rate_limit_error", deref(res.Error.Type) != "rate_limit_error", "error type %s", deref(res.Error.Type))
		}
		for i, a := range res.Attempts {
			assert.Equal(t, tc.status, a.Status)
			assert.Equal(t, itoa(i), a.RetryCount, "x-stainless-retry-count of attempt %d", i)
		}
	}
	assert.Equal(t, before, r.calls(), "no refused call reaches the provider")
	assert.Zero(t, r.settled(t, "e2e-broke"))
}

// TestUpstream429: the provider's 429 pauses the route's pool in Tollgate
// for its Retry-After.
func TestUpstream429(t *testing.T) {
	t.Parallel()
	r := newRig(t)
	before := r.calls()
	res := run(t, sdkCall{SDK: "openai", Op: "chat", BaseURL: r.openai + "/v1", Client: "e2e-openai-429", MaxRetries: intp(0),
		Params: chatParams("gpt-4.1-mini"), Headers: map[string]string{fakeapi.ScenarioHeader: fakeapi.Scenario429}})
	require.False(t, res.OK)
	assert.Equal(t, "RateLimitError", res.Error.Class)
	assert.Equal(t, "2", res.Error.Headers["retry-after"], "the provider's own 429 reaches the worker")
	assert.Equal(t, before+1, r.calls())
	assert.Zero(t, r.settled(t, "e2e-openai-429"), "a call the provider refused costs nothing")

	// Another client on the same pool, at once: Tollgate pauses the pool
	// for the provider's Retry-After (2 s) and holds the call in its
	// queue (class normal may wait) until the pause ends, then lets it
	// go; the SDK sees a slow success, not an error.
	res = run(t, sdkCall{SDK: "openai", Op: "chat", BaseURL: r.openai + "/v1", Client: "e2e-openai-429-next", MaxRetries: intp(0),
		Params: chatParams("gpt-4.1-mini")})
	require.True(t, res.OK, describe(res.Error))
	assert.Equal(t, before+2, r.calls(), "the held call reached the provider once, after the pause")
	recent := r.fake.Calls().Recent
	refused, held := recent[len(recent)-2], recent[len(recent)-1]
	assert.GreaterOrEqual(t, held.At.Sub(refused.At), upstreamRetryAfter-100*time.Millisecond,
		"the held call reached the provider only when its Retry-After had passed")
	t.Logf("  the next call was held %.0f ms by the SDK's clock; it reached the provider %v after the 429",
		res.ElapsedMs, held.At.Sub(refused.At).Round(time.Millisecond))
	assert.Equal(t, nanos(promptTokens, 400, replyTokens, 1600), r.settled(t, "e2e-openai-429-next"), "gpt-4.1-mini prices")

	// The SDK's own retries of an upstream 429 (maxRetries 2, the
	// provider's Retry-After of 2 s obeyed): each retry comes after the
	// pause has run out, so each reaches the provider again.
	before = r.calls()
	res = run(t, sdkCall{SDK: "openai", Op: "chat", BaseURL: r.openai + "/v1", Client: "e2e-openai-429-retries",
		Params: chatParams("gpt-4.1-mini"), Headers: map[string]string{fakeapi.ScenarioHeader: fakeapi.Scenario429}})
	require.False(t, res.OK)
	assert.Equal(t, "RateLimitError", res.Error.Class)
	require.Len(t, res.Attempts, 3, "1 + maxRetries")
	t.Logf("  upstream 429 with retries: %d attempts, %d reached the provider, %.0f ms", len(res.Attempts), r.calls()-before, res.ElapsedMs)
	assert.Equal(t, before+3, r.calls())
	assert.GreaterOrEqual(t, res.ElapsedMs, 2*float64(upstreamRetryAfter/time.Millisecond)-100, "the SDK waited the provider's Retry-After each time")
	assert.Zero(t, r.settled(t, "e2e-openai-429-retries"))
}
