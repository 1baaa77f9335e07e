package admission

import (
	"time"

	"github.com/tollgate/tollgate/costing"
	"github.com/tollgate/tollgate/limiter"
	"github.com/tollgate/tollgate/policy"
)

// Outcome classifies a decision for metrics and logs.
type Outcome string

// Outcomes of a decision.
const (
	OutcomeAllowed      Outcome = "allowed"
	OutcomeDenied       Outcome = "denied"
	OutcomeShadowDenied Outcome = "shadow_denied" // would have been denied; passed in shadow mode
	OutcomeUnmatched    Outcome = "unmatched"     // no route: passed or denied per policy
	OutcomeInvalid      Outcome = "invalid"       // unreadable request: passed or denied per policy
	OutcomeError        Outcome = "error"         // the store failed and the policy fails closed
	OutcomeFailOpen     Outcome = "fail_open"     // the store failed and the policy fails open
	OutcomeCached       Outcome = "cached"        // answered from the cache at Check: a local reply, $0
)

// Reason codes beyond the limiter's own (limiter.ReasonRateLimited,
// ReasonExceedsCapacity, ReasonBudgetExceeded, ReasonConcurrency). They are
// snake_case and double as the metric's reason label.
const (
	ReasonUnknownClient  = "unknown_client"
	ReasonMissingClient  = "missing_client" // no id, and the policy requires one
	ReasonInvalidClient  = "invalid_client" // an id too long or with characters outside [A-Za-z0-9._:/-]
	ReasonUnmatchedRoute = "unmatched_route"
	ReasonInvalidRequest = "invalid_request"
	ReasonStoreError     = "store_error"
	ReasonCancelled      = "cancelled" // the caller (Envoy) gave up first
	ReasonQueueFull      = "queue_full"
	ReasonQueueTimeout   = "queue_timeout"
	ReasonQueueRemoved   = "removed_from_queue"
	ReasonOffPeak        = "off_peak"
	ReasonShuttingDown   = "shutting_down"
	// The reasons of a call answered from the cache (outcome cached), and
	// of a retry refused while its first call is still in flight.
	ReasonCacheHit            = "cache_hit"
	ReasonCoalesced           = "coalesced"
	ReasonReplayed            = "idempotent_replay"
	ReasonIdempotencyInFlight = "idempotency_in_flight"
)

// RateLimit is what the x-ratelimit-* headers report: the tightest bucket.
type RateLimit struct {
	Pool      string
	Unit      policy.Unit
	Limit     int64
	Remaining int64
	Reset     time.Duration
}

// Blocked is the bucket that denied a call, with what the call asked of it.
type Blocked struct {
	Bucket limiter.BucketState
	Unit   policy.Unit
	Need   int64 // units the call needed
	// UpstreamPause, when positive, is what is left of a pause the
	// upstream provider asked for (a 429 with Retry-After) on this pool:
	// the bucket is empty because the provider said so.
	UpstreamPause time.Duration
}

// Oversize is a call whose estimate is beyond what any store can book (a
// max_tokens such as 1e300 saturates it): refused as exceeds_capacity,
// never sent to the store, where it would read as a store failure.
type Oversize struct {
	OutputTokens int64        // the call's output allowance (max_tokens × n), saturated
	Cost         policy.Money // its estimated cost, saturated
	Max          policy.Money // the most a store books for one call
}

// Held describes a wait in the queue that ended in a refusal.
type Held struct {
	Line     string // the resource waited for, for people ("pool gpt-4")
	Waited   time.Duration
	MaxDepth int
}

// Shadow is a denial that shadow mode let through.
type Shadow struct {
	Reason     string
	Pool       string // "" when no pool decided (budget, concurrency)
	RetryAfter time.Duration
}

// Verdict is the answer to one Request, in codes and numbers: the transport
// renders it (status, provider-shaped body, header names and wording).
type Verdict struct {
	Allowed bool
	Outcome Outcome
	// RequestID is the call's id (Envoy's x-request-id), empty when the
	// transport had none.
	RequestID string
	// Reason is a snake_case code: the limiter's reason, or one above.
	Reason string

	Provider policy.Provider
	Route    string
	Tier     string
	Client   string
	Pool     string // the pool that decided (denied, or tightest)

	RetryAfter time.Duration
	RateLimit  *RateLimit
	// Reservation is the id to settle or release (deferred settlement).
	Reservation string
	// Budget is the tightest budget of the client's chain, when budgeted.
	Budget *limiter.BudgetState
	// Shadow, when set, is the denial shadow mode let through.
	Shadow   *Shadow
	Estimate costing.Estimate
	// Optimized, when set, says how the optimizer rewrote the call (the
	// Estimate is the rewritten call's).
	Optimized *Optimization
	// Class is the call's priority class; QueueWait how long it was held.
	Class     policy.Class
	QueueWait time.Duration
	// QueueID is the call's unique id in the hold queue, when it was held.
	QueueID string

	// What a refusal's explanation needs; each is set only by the reason
	// it belongs to.
	Invalid       string       // invalid_request: why the request is unreadable
	Host, Path    string       // unmatched_route: the call's host and path
	Blocked       *Blocked     // rate_limited, exceeds_capacity
	Need          policy.Money // budget_exceeded: what the call needs
	InFlight      int64        // concurrency: the client's calls in flight
	MaxConcurrent int64        // concurrency: its tier's maximum
	Held          *Held        // queue_full, queue_timeout: the wait
	Oversize      *Oversize    // exceeds_capacity: the estimate no store can hold
	OpensAt       time.Time    // off_peak: when the window opens

	// Cached, when set, is the recorded answer that ends the call here
	// (outcome cached): a local reply, not allowed upstream.
	Cached *CachedAnswer
	// CacheMiss, on an admitted call the response cache looked up and did
	// not find, is the entry's hash: the call's answer is recorded there.
	CacheMiss string
	// lead is what the call must record (the flights it leads), until an
	// admitted call's pending entry takes it; a verdict that still carries
	// it when Decide ends abandons it.
	lead *cacheLead
}
