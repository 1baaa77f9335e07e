package authz

import (
	"context"
	"fmt"
	"log/slog"
	"net/http"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/tollgate/tollgate/costing"
	"github.com/tollgate/tollgate/limiter"
	"github.com/tollgate/tollgate/policy"
)

// PolicySource yields the policy in force. Policy is called once per
// decision, must be cheap and safe for concurrent use, and never returns nil.
type PolicySource interface {
	Policy() *policy.Set
}

// StaticPolicy is a PolicySource that never changes.
type StaticPolicy struct{ Set *policy.Set }

// Policy returns the set.
func (s StaticPolicy) Policy() *policy.Set { return s.Set }

// Outcome classifies a decision for metrics and logs.
type Outcome string

// Outcomes of a decision.
const (
	OutcomeAllowed      Outcome = "allowed"
	OutcomeDenied       Outcome = "denied"
	OutcomeShadowDenied Outcome = "shadow_denied" // would have been denied; passed in shadow mode
	OutcomeUnmatched    Outcome = "unmatched"     // no route: passed or denied per policy
	OutcomeInvalid      Outcome = "invalid"       // unreadable request: passed or denied per policy
	OutcomeError        Outcome = "error"         // the store failed
)

// Reason codes beyond the limiter's own.
const (
	ReasonUnknownClient  = "unknown_client"
	ReasonUnmatchedRoute = "unmatched_route"
	ReasonInvalidRequest = "invalid_request"
	ReasonStoreError     = "store_error"
	ReasonCancelled      = "cancelled" // the caller (Envoy) gave up first
)

// noTier labels decisions made before a client's tier is known.
const noTier = "none"

// RateLimit is what the x-ratelimit-* headers report: the tightest bucket.
type RateLimit struct {
	Pool      string
	Unit      policy.Unit
	Limit     int64
	Remaining int64
	Reset     time.Duration
}

// Verdict is the answer to one Request, independent of how it is sent.
type Verdict struct {
	Allowed bool
	Outcome Outcome
	// Reason is a snake_case code: the limiter's reason, or one above.
	Reason string
	// Status is the HTTP status a denied call gets (429, 403, 400, 503).
	Status  int
	Message string

	Provider policy.Provider
	Route    string
	Tier     string
	Pool     string // the pool that decided (denied, or tightest)

	RetryAfter time.Duration
	RateLimit  *RateLimit
	// Shadow, when set, is the denial shadow mode let through, e.g.
	// "denied; reason=rate_limited; pool=gpt-4".
	Shadow   string
	Estimate costing.Estimate
}

// Decider runs the admission pipeline: policy → estimate → limiter.
type Decider struct {
	policies PolicySource
	store    limiter.Store
	est      costing.Estimator
	log      *slog.Logger
	m        *metrics
}

// NewDecider builds a Decider. A nil logger discards.
func NewDecider(p PolicySource, s limiter.Store, reg prometheus.Registerer, log *slog.Logger) *Decider {
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	return &Decider{policies: p, store: s, log: log, m: newMetrics(reg)}
}

// Decide answers one call. It never panics on a malformed Request and holds
// nothing when it denies.
func (d *Decider) Decide(ctx context.Context, r *Request) Verdict {
	set := d.policies.Policy()
	v := d.decide(ctx, set, r)
	pool, tier := v.Pool, v.Tier
	if pool == "" {
		pool = "none"
	}
	if tier == "" {
		tier = noTier
	}
	d.m.decisions.WithLabelValues(pool, tier, string(v.Outcome), v.Reason).Inc()
	switch {
	case v.Outcome == OutcomeShadowDenied:
		d.log.LogAttrs(ctx, slog.LevelInfo, "shadow denial", slog.String("request_id", r.ID),
			slog.String("tier", v.Tier), slog.String("pool", v.Pool), slog.String("reason", v.Reason))
	case d.log.Enabled(ctx, slog.LevelDebug):
		d.log.LogAttrs(ctx, slog.LevelDebug, "decision", slog.String("request_id", r.ID),
			slog.String("decision", string(v.Outcome)), slog.String("tier", v.Tier),
			slog.String("pool", v.Pool), slog.String("reason", v.Reason))
	}
	return v
}

func (d *Decider) decide(ctx context.Context, set *policy.Set, r *Request) Verdict {
	if r.Invalid != "" {
		v := Verdict{Outcome: OutcomeInvalid, Reason: ReasonInvalidRequest, Provider: policy.ProviderGeneric}
		if set.Defaults.InvalidRequest == policy.Allow {
			v.Allowed = true
			return v
		}
		v.Status, v.Message = http.StatusBadRequest, "Tollgate could not read this request: "+r.Invalid
		return v
	}

	var llm costing.LLMBody
	parsed := false
	parse := func() {
		if !parsed {
			parsed = true
			llm, _ = costing.ParseLLMBody(r.Body) // an unreadable body is estimated by its size
		}
	}
	if set.RouteWantsModel(r.Host, r.Path) {
		parse()
	}
	route := set.MatchRoute(r.Host, r.Path, llm.Model)
	if route == nil {
		v := Verdict{Outcome: OutcomeUnmatched, Reason: ReasonUnmatchedRoute, Provider: policy.ProviderGeneric}
		if set.Defaults.UnmatchedRoute == policy.Allow {
			v.Allowed = true
			return v
		}
		v.Status, v.Message = http.StatusForbidden, fmt.Sprintf("Tollgate has no route for %s%s and the policy denies unmatched calls", r.Host, r.Path)
		return v
	}
	v := Verdict{Provider: route.Provider, Route: route.Name}
	client, ok := set.Client(r.Client)
	if !ok {
		v.Outcome, v.Reason, v.Status = OutcomeDenied, ReasonUnknownClient, http.StatusForbidden
		v.Message = fmt.Sprintf("client %q is not known to Tollgate and the policy denies unknown clients", r.Client)
		return v
	}
	v.Tier = client.Tier.Name
	if route.LLM() {
		parse()
	}
	size := max(r.BodySize, int64(len(r.Body)))
	v.Estimate = d.est.Estimate(route, llm, size)

	takes := make([]limiter.Take, 0, 2*len(route.Pools))
	for _, pc := range v.Estimate.Pools {
		p := pc.Pool
		shadow := set.Shadowed(p)
		takes = append(takes, limiter.Take{Key: limiter.Key{Pool: p.Name}, Limit: limiter.Limit(p.Limit), Cost: pc.Units, Shadow: shadow})
		if cl, ok := client.Tier.ClientLimits[p.Name]; ok {
			takes = append(takes, limiter.Take{Key: limiter.Key{Pool: p.Name, Client: client.ID}, Limit: limiter.Limit(cl), Cost: pc.Units, Shadow: shadow})
		}
	}
	dec, err := d.store.Reserve(ctx, limiter.Request{Takes: takes})
	if err != nil && ctx.Err() != nil {
		v.Outcome, v.Reason, v.Status = OutcomeError, ReasonCancelled, http.StatusServiceUnavailable
		v.Pool, v.Message = route.Pools[0].Name, "the check was cancelled before Tollgate could answer"
		return v
	}
	if err != nil {
		d.m.storeErrors.Inc()
		d.log.LogAttrs(ctx, slog.LevelError, "limiter store failed", slog.String("request_id", r.ID), slog.Any("error", err))
		v.Outcome, v.Reason, v.Status = OutcomeError, ReasonStoreError, http.StatusServiceUnavailable
		v.Pool = route.Pools[0].Name
		v.Message = "Tollgate could not reach its limiter store"
		return v
	}
	if i := dec.Tightest(); i >= 0 {
		b := dec.Buckets[i]
		v.Pool = b.Key.Pool
		v.RateLimit = &RateLimit{Pool: b.Key.Pool, Unit: set.Pools[b.Key.Pool].Unit, Limit: b.Limit.Capacity, Remaining: b.Remaining, Reset: b.ResetAfter}
	}
	if !dec.Allowed {
		b := dec.Buckets[dec.Blocking]
		v.Outcome, v.Reason, v.Status, v.RetryAfter = OutcomeDenied, string(dec.Reason), http.StatusTooManyRequests, dec.RetryAfter
		v.Message = denyMessage(b, takes[dec.Blocking], dec.Reason, set.Pools[b.Key.Pool].Unit)
		return v
	}
	v.Allowed, v.Outcome = true, OutcomeAllowed
	if i, shadowed := dec.ShadowDenied(takes); shadowed {
		b := dec.Buckets[i]
		reason := limiter.ReasonRateLimited
		if b.RetryAfter == 0 {
			reason = limiter.ReasonExceedsCapacity
		}
		v.Outcome, v.Reason, v.Pool = OutcomeShadowDenied, string(reason), b.Key.Pool
		v.Shadow = fmt.Sprintf("denied; reason=%s; pool=%s; retry_after=%d", reason, b.Key.Pool, ceilSeconds(b.RetryAfter))
	}
	return v
}

func denyMessage(b limiter.BucketState, t limiter.Take, reason limiter.Reason, unit policy.Unit) string {
	scope := "pool " + b.Key.Pool
	if b.Key.Client != "" {
		scope = fmt.Sprintf("client %q in pool %s", b.Key.Client, b.Key.Pool)
	}
	if reason == limiter.ReasonExceedsCapacity {
		return fmt.Sprintf("Request too large for %s: it needs %d %ss but the limit is %d. Reduce the request (e.g. max_tokens).",
			scope, t.Cost, unit, b.Limit.Capacity)
	}
	return fmt.Sprintf("Rate limit reached for %s: limit %d %ss, refilling %d per second; this request needs %d. Please try again in %ds.",
		scope, b.Limit.Capacity, unit, b.Limit.RefillPerSecond, t.Cost, ceilSeconds(b.RetryAfter))
}

// ceilSeconds rounds a duration up to whole seconds, as Retry-After wants.
func ceilSeconds(d time.Duration) int64 {
	if d <= 0 {
		return 0
	}
	return int64((d + time.Second - 1) / time.Second)
}
