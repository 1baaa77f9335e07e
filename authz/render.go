package authz

import (
	"crypto/rand"
	"encoding/hex"
	"fmt"
	"net/http"
	"time"

	"github.com/tollgate/tollgate/admission"
	"github.com/tollgate/tollgate/limiter"
	"github.com/tollgate/tollgate/policy"
)

// Rendering: admission answers in codes and numbers; this file turns a
// Verdict into what a worker reads: the HTTP status and the sentence that
// says why. deny.go shapes the headers and the provider's error body.

// Headers Tollgate sets. Reservation and route travel upstream from Check
// to ext_proc (Tollgate strips a worker's own); the others come back to the
// worker on the response.
const (
	HeaderReservation     = "x-tollgate-reservation"
	HeaderRoute           = "x-tollgate-route"
	HeaderEstimatedCost   = "x-tollgate-estimated-cost"
	HeaderBudgetRemaining = "x-tollgate-budget-remaining"
	HeaderQueueWait       = "x-tollgate-queue-wait"
	HeaderQueueID         = "x-tollgate-queue-id"
)

// Answer is a Verdict rendered for HTTP.
type Answer struct {
	admission.Verdict
	// Status is the HTTP status a denied call gets (429, 403, 400, 503);
	// zero for an allowed call.
	Status  int
	Message string
	// ShadowDecision is the x-tollgate-shadow-decision header of a denial
	// shadow mode let through, e.g. "denied; reason=rate_limited;
	// pool=gpt-4; retry_after=2"; empty otherwise.
	ShadowDecision string
}

// statusOf maps a refusal's reason to its HTTP status. An exhausted budget
// reads as the provider's own billing error where it has one, so that its
// SDK does not take it for a rate limit: OpenAI 429 insufficient_quota,
// Anthropic 400 invalid_request_error (what its API answers when a spend
// limit or the credit balance is reached), Twilio 403 with code 20005
// ("Account not active ... ran out of funds").
func statusOf(reason string, provider policy.Provider) int {
	if reason == string(limiter.ReasonBudgetExceeded) {
		switch provider {
		case policy.ProviderAnthropic:
			return http.StatusBadRequest
		case policy.ProviderTwilio:
			return http.StatusForbidden
		}
		return http.StatusTooManyRequests
	}
	switch reason {
	case admission.ReasonInvalidRequest, admission.ReasonInvalidClient:
		return http.StatusBadRequest
	case admission.ReasonUnmatchedRoute, admission.ReasonUnknownClient, admission.ReasonMissingClient:
		return http.StatusForbidden
	case admission.ReasonStoreError, admission.ReasonCancelled, admission.ReasonShuttingDown:
		return http.StatusServiceUnavailable
	case admission.ReasonIdempotencyInFlight:
		return http.StatusConflict
	}
	return http.StatusTooManyRequests
}

// Render turns a Verdict into an Answer.
func Render(v admission.Verdict) Answer {
	a := Answer{Verdict: v}
	if !echoable(a.RequestID) {
		a.RequestID = newRequestID()
	}
	if v.Shadow != nil {
		a.ShadowDecision = shadowHeader(v.Shadow)
	}
	if v.Allowed {
		return a
	}
	if c := v.Cached; c != nil { // the recorded answer, replayed as it came
		a.Status = c.Entry.Status
		return a
	}
	a.Status = statusOf(v.Reason, v.Provider)
	a.Message = message(&v)
	return a
}

// message is the sentence a refusal carries.
func message(v *admission.Verdict) string {
	switch v.Reason {
	case admission.ReasonInvalidRequest:
		return "Tollgate could not read this request: " + v.Invalid
	case admission.ReasonUnmatchedRoute:
		return fmt.Sprintf("Tollgate has no route for %s%s and the policy denies unmatched calls", v.Host, v.Path)
	case admission.ReasonUnknownClient:
		return fmt.Sprintf("client %q is not known to Tollgate and the policy denies unknown clients", v.Client)
	case admission.ReasonMissingClient:
		return "the call names no client and the policy requires one (defaults.missing_client: deny)"
	case admission.ReasonInvalidClient:
		return "Tollgate refuses this client id: " + v.Invalid
	case admission.ReasonStoreError:
		return "Tollgate could not reach its limiter store"
	case admission.ReasonCancelled:
		return "the check was cancelled before Tollgate could answer"
	case admission.ReasonOffPeak:
		return fmt.Sprintf("Deferred calls go in the off-peak window, which opens at %s; please try again then.", v.OpensAt.Format(time.RFC3339))
	case admission.ReasonQueueTimeout:
		if h := v.Held; h != nil {
			return fmt.Sprintf("Held %.1fs in the %s queue for %s, the most its class may wait; please try again in %ds.",
				h.Waited.Seconds(), v.Class, h.Line, ceilSeconds(v.RetryAfter))
		}
	case admission.ReasonQueueFull:
		if h := v.Held; h != nil {
			return fmt.Sprintf("The %s queue for %s is full (%d calls); please try again in %ds.", v.Class, h.Line, h.MaxDepth, ceilSeconds(v.RetryAfter))
		}
	case admission.ReasonQueueRemoved:
		return "An operator removed this call from Tollgate's queue."
	case admission.ReasonShuttingDown:
		return "Tollgate is shutting down; please try again."
	case admission.ReasonIdempotencyInFlight:
		return "A call with this Idempotency-Key (or, for a message, this same request) is still in flight; a retry after it ends gets its answer."
	case string(limiter.ReasonBudgetExceeded):
		if b := v.Budget; b != nil {
			return fmt.Sprintf("Monthly budget of %q is exhausted: $%s spent and $%s held of $%s; this call needs about $%s.",
				b.Owner, b.Spent, b.Reserved, b.Limit, v.Need)
		}
	case string(limiter.ReasonExceedsCapacity):
		if o := v.Oversize; o != nil {
			return fmt.Sprintf("Request too large: with max_tokens (times n) of %d output tokens its cost of $%s is beyond the $%s Tollgate can book for one call. Reduce max_tokens.",
				o.OutputTokens, o.Cost, o.Max)
		}
	case string(limiter.ReasonConcurrency):
		return fmt.Sprintf("Client %q has %d calls in flight, the most its tier %s allows.", v.Client, v.InFlight, v.Tier)
	}
	if b := v.Blocked; b != nil {
		return blockedMessage(b, v.Reason)
	}
	return "Tollgate denied the call: " + v.Reason
}

func blockedMessage(bl *admission.Blocked, reason string) string {
	b := bl.Bucket
	scope := "pool " + b.Key.Pool
	if b.Key.Client != "" {
		scope = fmt.Sprintf("client %q in pool %s", b.Key.Client, b.Key.Pool)
	}
	if bl.UpstreamPause > 0 {
		return fmt.Sprintf("The upstream provider answered 429 for %s and asked for a pause; Tollgate holds calls to it until the pause ends. Please try again in %ds.",
			scope, ceilSeconds(bl.UpstreamPause))
	}
	if reason == string(limiter.ReasonExceedsCapacity) {
		return fmt.Sprintf("Request too large for %s: it needs %d %ss but the limit is %d. Reduce the request (e.g. max_tokens).",
			scope, bl.Need, bl.Unit, b.Limit.Capacity)
	}
	return fmt.Sprintf("Rate limit reached for %s: limit %d %ss, refilling %s; this request needs %d. Please try again in %ds.",
		scope, b.Limit.Capacity, bl.Unit, policy.Limit(b.Limit).RefillText(), bl.Need, ceilSeconds(b.RetryAfter))
}

// shadowHeader renders a denial shadow mode let through, e.g.
// "denied; reason=rate_limited; pool=gpt-4; retry_after=2".
func shadowHeader(s *admission.Shadow) string {
	if s.Pool == "" {
		return fmt.Sprintf("denied; reason=%s; retry_after=%d", s.Reason, ceilSeconds(s.RetryAfter))
	}
	return fmt.Sprintf("denied; reason=%s; pool=%s; retry_after=%d", s.Reason, s.Pool, ceilSeconds(s.RetryAfter))
}

// ceilSeconds rounds a duration up to whole seconds, as Retry-After wants.
func ceilSeconds(d time.Duration) int64 {
	if d <= 0 {
		return 0
	}
	return int64((d + time.Second - 1) / time.Second)
}

// newRequestID names a local reply to a call that came without an
// x-request-id: "tg-" and 96 random bits in hex.
func newRequestID() string {
	var b [12]byte
	_, _ = rand.Read(b[:]) // crypto/rand.Read never fails
	return "tg-" + hex.EncodeToString(b[:])
}

// echoable says whether a worker's request id may go back in a header: 1 to
// 200 visible ASCII characters. Anything else is replaced, never echoed.
func echoable(id string) bool {
	if id == "" || len(id) > 200 {
		return false
	}
	for i := 0; i < len(id); i++ {
		if id[i] < 0x21 || id[i] > 0x7e {
			return false
		}
	}
	return true
}
