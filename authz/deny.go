package authz

import (
	"encoding/json"
	"hash/fnv"
	"maps"
	"net/http"
	"slices"
	"strconv"
	"time"

	"github.com/tollgate/tollgate/admission"
	"github.com/tollgate/tollgate/limiter"
	"github.com/tollgate/tollgate/policy"
)

// Header is one HTTP header to send.
type Header struct{ Name, Value string }

// ResponseHeaders are the headers a caller sees on the response: the
// x-ratelimit-* trio on every routed call, and on a denial Retry-After and
// Tollgate's reason.
func ResponseHeaders(v *Answer) []Header {
	var hs []Header
	if rl := v.RateLimit; rl != nil {
		hs = append(hs,
			Header{"x-ratelimit-limit", strconv.FormatInt(rl.Limit, 10)},
			Header{"x-ratelimit-remaining", strconv.FormatInt(rl.Remaining, 10)},
			Header{"x-ratelimit-reset", strconv.FormatInt(ceilSeconds(rl.Reset), 10)},
		)
	}
	if v.Allowed && v.Route != "" && (v.Outcome == admission.OutcomeAllowed || v.Outcome == admission.OutcomeShadowDenied) {
		hs = append(hs, Header{HeaderEstimatedCost, v.Estimate.Cost.String()})
		remaining := "unlimited"
		if v.Budget != nil {
			remaining = v.Budget.Remaining().String()
		}
		hs = append(hs, Header{HeaderBudgetRemaining, remaining})
		if v.QueueWait > 0 {
			hs = append(hs, Header{HeaderQueueWait, strconv.FormatFloat(v.QueueWait.Seconds(), 'f', 3, 64)})
		}
	}
	if v.QueueID != "" {
		hs = append(hs, Header{HeaderQueueID, v.QueueID})
	}
	if v.Allowed && v.CacheMiss != "" {
		hs = append(hs, Header{admission.HeaderCache, string(admission.CacheMiss)}, Header{admission.HeaderCacheKey, v.CacheMiss})
	}
	if !v.Allowed {
		final := neverPasses(v.Reason)
		if v.RetryAfter > 0 {
			hs = append(hs, Header{"retry-after", strconv.FormatInt(ceilSeconds(v.RetryAfter), 10)})
			if !final {
				ms := (v.RetryAfter + jitter(v.RequestID, v.RetryAfter)).Milliseconds()
				hs = append(hs, Header{"retry-after-ms", strconv.FormatInt(ms, 10)})
			}
		}
		if final {
			hs = append(hs, Header{"x-should-retry", "false"})
		}
		hs = append(hs, Header{"x-tollgate-reason", v.Reason})
		if v.RequestID != "" {
			hs = append(hs, Header{"x-request-id", v.RequestID})
			if v.Provider == policy.ProviderAnthropic {
				hs = append(hs, Header{"request-id", v.RequestID})
			}
		}
	}
	if v.ShadowDecision != "" {
		hs = append(hs, Header{"x-tollgate-shadow-decision", v.ShadowDecision})
	}
	return hs
}

// CachedHeaders are the headers of a recorded answer replayed (outcome
// cached): the answer's own, sorted by name, then how the cache answered
// (x-tollgate-cache: hit, coalesced or replayed), its age in seconds, the
// entry's key, and this call's request id.
func CachedHeaders(v *Answer) []Header {
	c := v.Cached
	names := slices.Sorted(maps.Keys(c.Entry.Headers))
	hs := make([]Header, 0, len(names)+5)
	for _, n := range names {
		hs = append(hs, Header{n, c.Entry.Headers[n]})
	}
	hs = append(hs, Header{admission.HeaderCache, string(c.How)}, Header{"age", strconv.FormatInt(int64(c.Age/time.Second), 10)})
	if c.Key != "" {
		hs = append(hs, Header{admission.HeaderCacheKey, c.Key})
	}
	if v.RequestID != "" {
		hs = append(hs, Header{"x-request-id", v.RequestID})
		if v.Provider == policy.ProviderAnthropic {
			hs = append(hs, Header{"request-id", v.RequestID})
		}
	}
	return hs
}

// neverPasses says whether retrying a refusal as it is cannot help: the
// budget is spent, the call is larger than its pool, the client is
// unknown, the request unreadable or unrouted. Such refusals carry
// x-should-retry: false, which the OpenAI and Anthropic SDKs obey before
// anything else.
func neverPasses(reason string) bool {
	switch reason {
	case string(limiter.ReasonBudgetExceeded), string(limiter.ReasonExceedsCapacity),
		admission.ReasonUnknownClient, admission.ReasonInvalidRequest, admission.ReasonUnmatchedRoute:
		return true
	}
	return false
}

// maxJitter bounds the jitter added to retry-after-ms.
const maxJitter = 250 * time.Millisecond

// jitter spreads the retries of callers refused together: 0 to 10% of the
// wait, at most maxJitter, picked by the request id (FNV-1a), so one call
// always gets the same value and tests can check it.
func jitter(requestID string, wait time.Duration) time.Duration {
	span := min(wait/10, maxJitter)
	if span <= 0 {
		return 0
	}
	h := fnv.New64a()
	_, _ = h.Write([]byte(requestID)) // hash.Hash.Write never fails
	return time.Duration(h.Sum64() % uint64(span+1))
}

// DenialBody renders a denial in the shape of the upstream provider's own
// error, so that the provider's SDK classifies it (and retries a 429) as it
// would the real thing.
func DenialBody(v *Answer) (contentType string, body []byte) {
	var doc any
	switch v.Provider {
	case policy.ProviderOpenAI:
		// OpenAI: {"error":{"message","type","param","code"}}; on a rate
		// limit the type names the exhausted quantity and the code is
		// rate_limit_exceeded.
		typ, code := "invalid_request_error", v.Reason
		switch {
		case v.Reason == string(limiter.ReasonBudgetExceeded):
			// OpenAI's own spend cap answers 429 insufficient_quota.
			typ, code = "budget_exceeded", "insufficient_quota"
		case v.Status == http.StatusTooManyRequests:
			code = "rate_limit_exceeded"
			typ = "requests"
			if v.RateLimit != nil && v.RateLimit.Unit == policy.UnitToken && v.Reason != string(limiter.ReasonConcurrency) {
				typ = "tokens"
			}
		}
		doc = map[string]any{"error": map[string]any{"message": v.Message, "type": typ, "param": nil, "code": code}}
	case policy.ProviderAnthropic:
		// An exhausted budget is a 400 invalid_request_error, as
		// Anthropic's own spend limit and credit balance answer
		// (docs.anthropic.com/en/api/errors), never a rate_limit_error.
		typ := "invalid_request_error"
		switch v.Status {
		case http.StatusTooManyRequests:
			typ = "rate_limit_error"
		case http.StatusForbidden:
			typ = "permission_error"
		case http.StatusServiceUnavailable:
			typ = "api_error"
		}
		d := map[string]any{"type": "error", "error": map[string]any{"type": typ, "message": v.Message}}
		if v.RequestID != "" {
			d["request_id"] = v.RequestID
		}
		doc = d
	case policy.ProviderTwilio:
		code := 20403
		switch {
		case v.Reason == string(limiter.ReasonBudgetExceeded):
			// 20005 "Account not active": what Twilio answers an account
			// that ran out of funds (twilio.com/docs/api/errors/20005);
			// not 20429, which its SDK and callers treat as retryable.
			code = 20005
		case v.Status == http.StatusTooManyRequests:
			code = 20429
		case v.Status == http.StatusBadRequest:
			code = 20001
		case v.Status == http.StatusServiceUnavailable:
			code = 20503
		}
		doc = map[string]any{"code": code, "message": v.Message, "more_info": "https://www.twilio.com/docs/errors/" + strconv.Itoa(code), "status": v.Status}
	case policy.ProviderSendGrid:
		doc = map[string]any{"errors": []map[string]any{{"field": nil, "message": v.Message}}}
	default:
		e := map[string]any{"code": v.Reason, "message": v.Message}
		if v.RetryAfter > 0 {
			e["retry_after_seconds"] = ceilSeconds(v.RetryAfter)
		}
		doc = map[string]any{"error": e}
	}
	b, err := json.Marshal(doc)
	if err != nil { // maps of strings and numbers always marshal
		b = []byte(`{"error":{"code":"internal"}}`)
	}
	return "application/json", b
}
