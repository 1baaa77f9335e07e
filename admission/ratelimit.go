package admission

import (
	"context"
	"errors"
	"fmt"
	"math"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/tollgate/tollgate/internal/metricset"
	"github.com/tollgate/tollgate/internal/tracing"
	"github.com/tollgate/tollgate/limiter"
	"github.com/tollgate/tollgate/policy/rls"
)

// This file is the decision of Envoy's rate limit service (RLS,
// ShouldRateLimit) on envoyproxy/ratelimit's descriptor config: match each
// descriptor to its rule, drop the rules another matched rule replaces,
// and take hits_addend from each rule's bucket in one atomic store call.
//
// Each rule is a token bucket, not a fixed window: requests_per_unit is
// the capacity, refilled requests_per_unit every unit, continuously (see
// docs/switch-from-ratelimit.md). A request is all or nothing: when one
// descriptor is over its limit, no counter is charged.

// RateLimitSource yields the RLS config in force. RateLimitConfig is
// called once per decision, must be cheap and safe for concurrent use,
// and may return nil (no config: every descriptor passes).
type RateLimitSource interface {
	RateLimitConfig() *rls.Config
}

// StaticRateLimits is a RateLimitSource that never changes.
type StaticRateLimits struct{ Config *rls.Config }

// RateLimitConfig returns the config.
func (s StaticRateLimits) RateLimitConfig() *rls.Config { return s.Config }

// RateLimitRequest is Envoy's RateLimitRequest without Envoy's types.
type RateLimitRequest struct {
	Domain      string
	Descriptors []RateLimitDescriptor
	// HitsAddend is what each descriptor costs (zero: one), unless the
	// descriptor says otherwise.
	HitsAddend uint64
}

// RateLimitDescriptor is one descriptor of a request.
type RateLimitDescriptor struct {
	Entries []rls.Entry
	// HitsAddend, when HasHitsAddend, is this descriptor's own cost (zero
	// reads the counter without charging it).
	HitsAddend    uint64
	HasHitsAddend bool
	// Override, when set, is the limit the request gives for this
	// descriptor instead of the config's.
	Override *RateLimitOverride
}

// RateLimitOverride is a descriptor's own limit.
type RateLimitOverride struct {
	RequestsPerUnit uint32
	Unit            rls.Unit
}

// RateLimitStatus is the answer for one descriptor.
type RateLimitStatus struct {
	// Over is set when the descriptor is over its limit (never for a rule
	// in shadow mode: that is Shadowed).
	Over     bool
	Shadowed bool
	// Limit is the limit applied; nil when none (no rule, unlimited, or
	// replaced).
	Limit *RateLimitOverride
	// Remaining is what is left of the limit after this request
	// (math.MaxUint32 for an unlimited rule).
	Remaining uint32
	// ResetAfter is how long until the bucket is full again.
	ResetAfter time.Duration
}

// RateLimitVerdict is the answer to a RateLimitRequest.
type RateLimitVerdict struct {
	Over     bool
	Statuses []RateLimitStatus
}

// ErrInvalidRateLimitRequest is a request that names no domain or no
// descriptor (envoyproxy/ratelimit refuses them too).
var ErrInvalidRateLimitRequest = errors.New("invalid rate limit request")

// RateLimitDeps are what a RateLimiter uses.
type RateLimitDeps struct {
	Config RateLimitSource
	Store  limiter.Store
	// Registerer receives its metrics.
	Registerer prometheus.Registerer
	// Clock, when set, dates each decision; nil leaves the time to the
	// store (the memory store's clock, Redis's TIME).
	Clock limiter.Clock
	// Tracer traces its store calls under the transport's span; nil: off.
	Tracer *tracing.Tracer
}

// RateLimiter decides RLS requests. It is safe for concurrent use.
type RateLimiter struct {
	cfg   RateLimitSource
	store limiter.Store
	clock limiter.Clock
	m     *rateLimitMetrics
}

type rateLimitMetrics struct {
	requests    *prometheus.CounterVec
	descriptors *prometheus.CounterVec
}

// Descriptor outcomes, the metric's label.
const (
	rlOK        = "ok"
	rlOver      = "over_limit"
	rlShadow    = "shadow_over_limit"
	rlUnlimited = "unlimited"
	rlNoRule    = "no_rule"
	rlReplaced  = "replaced"
	rlUnkept    = "unsupported_override"
)

// NewRateLimiter builds a RateLimiter; its metrics are registered all or
// none.
func NewRateLimiter(deps RateLimitDeps) (*RateLimiter, error) {
	if deps.Config == nil || deps.Store == nil || deps.Registerer == nil {
		return nil, errors.New("admission: RateLimitDeps needs Config, Store and Registerer")
	}
	var f metricset.Set
	m := &rateLimitMetrics{
		requests: f.CounterVec(prometheus.CounterOpts{
			Name: "tollgate_rls_requests_total",
			Help: "ShouldRateLimit calls, by code (ok, over_limit, invalid, error).",
		}, []string{"code"}),
		descriptors: f.CounterVec(prometheus.CounterOpts{
			Name: "tollgate_rls_descriptors_total",
			Help: "Descriptors of ShouldRateLimit calls, by outcome (ok, over_limit, shadow_over_limit, unlimited, no_rule, replaced, unsupported_override).",
		}, []string{"outcome"}),
	}
	for _, c := range []string{rlOK, rlOver, "invalid", "error"} {
		m.requests.WithLabelValues(c)
	}
	for _, o := range []string{rlOK, rlOver, rlShadow, rlUnlimited, rlNoRule, rlReplaced, rlUnkept} {
		m.descriptors.WithLabelValues(o)
	}
	if err := f.Register("rls", deps.Registerer); err != nil {
		return nil, err
	}
	return &RateLimiter{cfg: deps.Config, store: traceLimiter(deps.Store, deps.Tracer), clock: deps.Clock, m: m}, nil
}

// maxHits bounds a cost: more than any bucket holds, so always over.
const maxHits = rls.MaxUnits + 1

// pending is one descriptor's part in the store call.
type pending struct {
	take    int // index in takes, or -1
	rule    *rls.Rule
	limit   RateLimitOverride
	shadow  bool
	quota   bool
	outcome string
}

// Decide answers one request. Only a store failure (or a cancelled ctx)
// is an error, besides an invalid request.
func (r *RateLimiter) Decide(ctx context.Context, req RateLimitRequest) (RateLimitVerdict, error) {
	if req.Domain == "" || len(req.Descriptors) == 0 {
		r.m.requests.WithLabelValues("invalid").Inc()
		return RateLimitVerdict{}, fmt.Errorf("%w: it needs a domain and at least one descriptor", ErrInvalidRateLimitRequest)
	}
	cfg := r.cfg.RateLimitConfig()
	known := cfg.HasDomain(req.Domain)
	v := RateLimitVerdict{Statuses: make([]RateLimitStatus, len(req.Descriptors))}
	ps := make([]pending, len(req.Descriptors))
	keys := make([]string, len(req.Descriptors))
	var replaced map[string]bool
	for i, d := range req.Descriptors {
		p := &ps[i]
		p.take = -1
		if !known {
			p.outcome = rlNoRule
			continue
		}
		if d.Override != nil {
			p.rule, keys[i] = &rls.Rule{Domain: req.Domain, RequestsPerUnit: d.Override.RequestsPerUnit, Unit: d.Override.Unit}, rls.CounterKey(d.Entries)
			if b, ok := rls.BucketFor(int64(d.Override.RequestsPerUnit), d.Override.Unit); ok {
				p.rule.Bucket = b
			} else if d.Override.RequestsPerUnit > 0 || d.Override.Unit.Seconds() == 0 {
				p.rule, p.outcome = nil, rlUnkept
				continue
			}
		} else {
			p.rule, keys[i] = cfg.Match(req.Domain, d.Entries)
		}
		if p.rule == nil {
			p.outcome = rlNoRule
			continue
		}
		for _, name := range p.rule.Replaces {
			if replaced == nil {
				replaced = map[string]bool{}
			}
			replaced[name] = true
		}
	}

	var takes []limiter.Take
	pool := "rls:" + req.Domain
	for i, d := range req.Descriptors {
		p := &ps[i]
		rule := p.rule
		switch {
		case rule == nil:
			continue
		case rule.Unlimited: // before replaces, as that server orders them
			p.outcome = rlUnlimited
			v.Statuses[i].Remaining = math.MaxUint32
			p.rule = nil
			continue
		case rule.Name != "" && replaced[rule.Name]:
			p.rule, p.outcome = nil, rlReplaced
			continue
		}
		p.limit = RateLimitOverride{RequestsPerUnit: rule.RequestsPerUnit, Unit: rule.Unit}
		p.shadow, p.quota = rule.ShadowMode, rule.QuotaMode
		if rule.RequestsPerUnit == 0 { // always over, as that server has it
			continue
		}
		hits := req.HitsAddend
		if hits == 0 {
			hits = 1
		}
		if d.HasHitsAddend {
			hits = d.HitsAddend
		}
		cost := int64(min(hits, maxHits))
		key := limiter.Key{Pool: pool, Client: keys[i]}
		lim := limiter.Limit{Capacity: rule.Bucket.Capacity, Refill: rule.Bucket.Refill, Per: rule.Bucket.Per}
		merged := false
		for j := range takes { // the same counter twice in one request: one take of both costs
			if takes[j].Key == key {
				takes[j].Cost = min(takes[j].Cost+cost, maxHits)
				takes[j].Shadow = takes[j].Shadow && (p.shadow || p.quota)
				p.take, merged = j, true
				break
			}
		}
		if !merged {
			p.take = len(takes)
			// quota-mode descriptors never deny alone: they are judged together below
			takes = append(takes, limiter.Take{Key: key, Limit: lim, Cost: cost, Shadow: p.shadow || p.quota})
		}
	}

	var dec limiter.Decision
	if len(takes) > 0 {
		lr := limiter.Request{Takes: takes}
		if r.clock != nil {
			lr.Now = r.clock.Now()
		}
		var err error
		if dec, err = r.store.Reserve(ctx, lr); err != nil {
			r.m.requests.WithLabelValues("error").Inc()
			return RateLimitVerdict{}, fmt.Errorf("admission: rate limit: %w", err)
		}
	}

	quotas, quotasOver := 0, 0
	for i := range req.Descriptors {
		p, st := &ps[i], &v.Statuses[i]
		if p.rule == nil {
			r.m.descriptors.WithLabelValues(p.outcome).Inc()
			continue
		}
		lim := p.limit
		st.Limit = &lim
		over := true // requests_per_unit 0
		st.ResetAfter = time.Duration(lim.Unit.Seconds()) * time.Second
		if p.take >= 0 && p.take < len(dec.Buckets) {
			b := dec.Buckets[p.take]
			over = b.Short
			st.Remaining = uint32(min(max(b.Remaining, 0), math.MaxUint32))
			st.ResetAfter = b.ResetAfter
		}
		if p.quota {
			quotas++
			if over && !p.shadow {
				quotasOver++
			}
		}
		switch {
		case over && p.shadow:
			st.Shadowed = true
			r.m.descriptors.WithLabelValues(rlShadow).Inc()
		case over:
			st.Over, st.Remaining = true, 0 // as that server reports an over-limit descriptor
			if !p.quota {
				v.Over = true
			}
			r.m.descriptors.WithLabelValues(rlOver).Inc()
		default:
			r.m.descriptors.WithLabelValues(rlOK).Inc()
		}
	}
	if quotas > 0 && quotas == quotasOver {
		v.Over = true
	}
	code := rlOK
	if v.Over {
		code = rlOver
	}
	r.m.requests.WithLabelValues(code).Inc()
	return v, nil
}
