package admission

import (
	"context"
	"fmt"
	"log/slog"
	"time"

	"github.com/tollgate/tollgate/costing"
	"github.com/tollgate/tollgate/limiter"
	"github.com/tollgate/tollgate/limiter/queue"
	"github.com/tollgate/tollgate/policy"
)

// noTier labels decisions made before a client's tier is known.
const noTier = "none"

// budgetRetryWindow: a budget denial carries Retry-After only when the
// period ends within it.
const budgetRetryWindow = 24 * time.Hour

// concurrencyRetry is the Retry-After of a concurrency denial: a slot frees
// when some call in flight ends, which Tollgate cannot foresee.
const concurrencyRetry = time.Second

// Decide answers one call: resolve → estimate → plan → reserve or hold →
// verdict. It never panics on a malformed Request and holds nothing when it
// denies.
func (s *Service) Decide(ctx context.Context, r *Request) Verdict {
	set := s.policies.Policy()
	v := s.decide(ctx, set, r)
	v.RequestID = r.ID
	if v.lead != nil { // led a cache flight, then not admitted: let a waiter lead
		v.lead.abandon(ctx, "denied")
		v.lead = nil
	}
	pool, tier := v.Pool, v.Tier
	if pool == "" {
		pool = "none"
	}
	if tier == "" {
		tier = noTier
	}
	s.m.decisions.WithLabelValues(pool, tier, string(v.Outcome), v.Reason).Inc()
	if refused(&v) {
		s.refusals.add(refusalOf(r, &v, s.clock.Now()))
	}
	s.logDecision(r, &v)
	switch {
	case v.Outcome == OutcomeShadowDenied:
		s.log.LogAttrs(ctx, slog.LevelInfo, "shadow denial", slog.String("request_id", r.ID),
			slog.String("tier", v.Tier), slog.String("pool", v.Pool), slog.String("reason", v.Reason))
	case s.log.Enabled(ctx, slog.LevelDebug):
		s.log.LogAttrs(ctx, slog.LevelDebug, "decision", slog.String("request_id", r.ID),
			slog.String("decision", string(v.Outcome)), slog.String("tier", v.Tier),
			slog.String("pool", v.Pool), slog.String("reason", v.Reason))
	}
	return v
}

func (s *Service) decide(ctx context.Context, set *policy.Set, r *Request) Verdict {
	// Resolve: the route, the client and its tier.
	if r.Invalid != "" {
		v := Verdict{Outcome: OutcomeInvalid, Reason: ReasonInvalidRequest, Provider: policy.ProviderGeneric, Invalid: r.Invalid}
		v.Allowed = set.Defaults.InvalidRequest == policy.Allow
		return v
	}
	// Routes match the canonical path. A path that cannot be made
	// canonical, or that names a route in the wrong letter case, is
	// refused whatever invalid_request and unmatched_route say: letting it
	// pass would let any caller skip metering by spelling a path oddly.
	path, err := CanonicalPath(r.Path)
	if err != nil {
		return Verdict{Outcome: OutcomeInvalid, Reason: ReasonInvalidRequest, Provider: policy.ProviderGeneric, Invalid: err.Error()}
	}
	// One parse of the body serves routing (the model) and the estimate.
	call := costing.NewCall(path, r.Headers["content-type"], r.Body, r.BodySize)
	route := matchRoute(set, r.Host, path, &call)
	if route == nil {
		if fold := set.MatchRouteFold(r.Host, path); fold != nil {
			return Verdict{Outcome: OutcomeInvalid, Reason: ReasonInvalidRequest, Provider: fold.Provider,
				Invalid: fmt.Sprintf("the path %q differs from route %s's prefix %q only in letter case; paths are case-sensitive", path, fold.Name, fold.PathPrefix)}
		}
		v := Verdict{Outcome: OutcomeUnmatched, Reason: ReasonUnmatchedRoute, Provider: policy.ProviderGeneric, Host: r.Host, Path: path}
		v.Allowed = set.Defaults.UnmatchedRoute == policy.Allow
		return v
	}
	v := Verdict{Provider: route.Provider, Route: route.Name, Client: r.Client}
	switch {
	case r.Client == "" && set.Defaults.MissingClient == policy.Deny:
		v.Outcome, v.Reason = OutcomeDenied, ReasonMissingClient
		return v
	case r.Client != "":
		if err := policy.ValidClientID(r.Client); err != nil {
			v.Client, v.Outcome, v.Reason, v.Invalid = "", OutcomeInvalid, ReasonInvalidClient, err.Error()
			return v
		}
	}
	client, ok := set.Client(r.Client)
	if !ok {
		v.Outcome, v.Reason = OutcomeDenied, ReasonUnknownClient
		return v
	}
	v.Tier = client.Tier.Name
	v.Class = classOf(set, r, route, client)

	// Optimize: the rewritten call is the one estimated, admitted and
	// priced (a downgraded model may route to other pools).
	call, route, opt, fit := s.optimizeCall(set, r, path, route, client, v.Class, call)
	// A client with dedicated pools is charged there instead of in the
	// shared pools they replace (policy/reserve.go).
	route = set.RouteFor(route, client)

	// Estimate.
	v.Estimate = s.est.Estimate(set, route, call)
	if fit > 0 {
		var fitted bool
		if call, opt, fitted = s.fitToPool(set, route, client, call, v.Estimate, opt, fit); fitted {
			v.Estimate = s.est.Estimate(set, route, call)
		}
	}
	if opt != nil {
		v.Route = route.Name
		v.Optimized = opt.report()
		opt.count(s.m, client.Tier.Name)
	}
	if route.LLM() && !v.Estimate.ModelKnown {
		s.m.unknownModels.WithLabelValues(route.Name).Inc()
	}

	// The cache: an answer recorded for this call ends it here (see
	// cache.go).
	if s.cacheStep(ctx, set, r, path, route, client, call, &v) {
		return v
	}

	// An estimate no store can book (a max_tokens of 1e300) is the
	// caller's error, not the store's: refuse it here, whatever the
	// policy says of store failures.
	if v.Estimate.Cost >= limiter.MaxMoney || v.Estimate.Reserve >= limiter.MaxMoney {
		v.Outcome, v.Reason, v.Pool = OutcomeDenied, string(limiter.ReasonExceedsCapacity), route.Pools[0].Name
		v.Oversize = &Oversize{OutputTokens: v.Estimate.OutputTokens, Cost: v.Estimate.Cost, Max: limiter.MaxMoney - 1}
		return v
	}

	// Plan.
	now := s.clock.Now()
	var envoyDeadline time.Time
	if dl, ok := ctx.Deadline(); ok {
		envoyDeadline = dl
	}
	var id string
	if s.settle == SettleDeferred {
		id = s.newID()
	}
	p := makePlan(set, client, v.Class, &v.Estimate, s.settle, id, now, envoyDeadline)
	if !p.offPeak.IsZero() {
		v.Outcome, v.Reason, v.RetryAfter, v.OpensAt = OutcomeDenied, ReasonOffPeak, p.offPeak.Sub(now), p.offPeak
		v.Pool = route.Pools[0].Name
		return v
	}

	// Reserve, or hold.
	dec, err, queued, done := s.reserveOrHold(ctx, r, set, route, client, &p, &v)
	if done {
		return v
	}
	if err != nil && ctx.Err() != nil {
		return cancelled(v, route)
	}
	if err != nil {
		s.m.storeErrors.Inc()
		s.logStoreError(ctx, r.ID, err)
		v.Reason, v.Pool = ReasonStoreError, route.Pools[0].Name
		if set.Defaults.StoreUnavailable == policy.Allow {
			v.Allowed, v.Outcome = true, OutcomeFailOpen
			s.failedOpen(&v, set, route, client, p.req.Hold, now)
			return v
		}
		v.Outcome = OutcomeError
		return v
	}

	// Verdict.
	if len(set.Optimize.Rules) > 0 {
		s.pressure.note(client.ID, dec.Budgets)
	}
	if dec.Expired > 0 {
		s.m.expired.Add(float64(dec.Expired))
	}
	v.Budget = tightestBudget(dec.Budgets)
	if i := dec.Tightest(); i >= 0 {
		v.Pool, v.RateLimit = dec.Buckets[i].Key.Pool, rateLimit(set, dec.Buckets[i])
	}
	if !dec.Allowed {
		return s.denied(set, client, &p, dec, now, v)
	}
	hold := p.req.Hold
	v.Allowed, v.Outcome, v.Reservation = true, OutcomeAllowed, hold.ID
	if !queued {
		s.recordGrant(client.ID, p.req) // a grant through the queue is recorded there
	}
	if hold.ID != "" {
		pc := &pendingCall{id: hold.ID, requestID: r.ID, set: set, route: route, client: client.ID, tier: client.Tier.Name, est: v.Estimate,
			expires: now.Add(hold.TTL), opt: opt, class: v.Class, lead: v.lead}
		v.lead = nil // the pending call records or abandons it
		for i, t := range p.req.Takes {
			if !(t.Shadow && dec.Buckets[i].Short) { // a short shadow bucket was not charged
				pc.charged = append(pc.charged, t)
			}
		}
		s.pending.add(pc)
	}
	if i, shadowed := dec.ShadowDenied(p.req.Takes); shadowed {
		b := dec.Buckets[i]
		reason := limiter.ReasonRateLimited
		if b.RetryAfter == 0 {
			reason = limiter.ReasonExceedsCapacity
		}
		v.Outcome, v.Reason, v.Pool = OutcomeShadowDenied, string(reason), b.Key.Pool
		v.Shadow = &Shadow{Reason: string(reason), Pool: b.Key.Pool, RetryAfter: b.RetryAfter}
	}
	return v
}

// reserveOrHold asks the store, or waits in the queue when the call's class
// may wait and something blocks it. done means v is the final verdict (the
// wait ended in a refusal or the caller left).
func (s *Service) reserveOrHold(ctx context.Context, r *Request, set *policy.Set, route *policy.Route, client *policy.Client,
	p *plan, v *Verdict) (dec limiter.Decision, err error, queued, done bool) {
	now := s.clock.Now()
	var line string
	if p.canWait {
		// Behind waiters for the same resource, a call queues rather than
		// take what a better one waits for; a deferred call outside its
		// window is held for it.
		if line = s.busyLine(p.req); line == "" && !p.notBefore.IsZero() {
			line = firstLine(p.req)
		}
	}
	if line == "" {
		var req limiter.Request
		dec, req, err = s.reserve(ctx, p)
		if err == nil && !dec.Allowed && p.canWait && waitable(dec) &&
			(dec.Reason == limiter.ReasonConcurrency || !now.Add(dec.RetryAfter).After(p.deadline)) {
			line = lineOf(dec, req)
		}
		if line == "" {
			p.req = req // the alternative granted, or the refusal reported
		}
	} else {
		dec.Blocking, dec.BudgetBlocking = -1, -1
	}
	if line == "" {
		return dec, err, false, false
	}
	h := s.hold(ctx, line, r, client, p, p.units(line))
	v.QueueWait, v.QueueID = h.res.Waited, h.res.QueueID
	pool, desc := LineLabel(h.line)
	if pool == "concurrency" {
		pool = route.Pools[0].Name
	}
	deny := func(reason string, retry time.Duration) {
		v.Outcome, v.Reason, v.RetryAfter, v.Pool = OutcomeDenied, reason, retry, pool
		v.Held = &Held{Line: desc, Waited: h.res.Waited, MaxDepth: p.cp.MaxDepth}
		if h.res.Tried {
			if a := h.res.Value.dec; a.Tightest() >= 0 {
				v.RateLimit = rateLimit(set, a.Buckets[a.Tightest()])
			}
		}
	}
	retry := max(h.res.RetryAfter, dec.RetryAfter, time.Second)
	switch h.res.Outcome {
	case queue.Granted, queue.Denied:
		dec, err = h.res.Value.dec, h.res.Value.err
		if h.res.Value.req.Takes != nil || h.res.Value.req.Hold != nil {
			p.req = h.res.Value.req // the alternative the last try asked for
		}
		if h.res.Outcome == queue.Granted && ctx.Err() != nil { // the grant raced the caller's exit
			s.undo(ctx, p.req, dec)
			*v = cancelled(*v, route)
			return dec, nil, true, true
		}
		return dec, err, true, false
	case queue.Cancelled:
		*v = cancelled(*v, route)
	case queue.Timeout:
		deny(ReasonQueueTimeout, retry)
	case queue.Full:
		deny(ReasonQueueFull, retry)
	case queue.Removed:
		deny(ReasonQueueRemoved, time.Second)
	default: // closed
		deny(ReasonShuttingDown, time.Second)
		v.Outcome = OutcomeError
	}
	return dec, nil, true, true
}

// denied fills in a store's refusal.
func (s *Service) denied(set *policy.Set, client *policy.Client, p *plan, dec limiter.Decision, now time.Time, v Verdict) Verdict {
	v.Outcome, v.Reason, v.RetryAfter = OutcomeDenied, string(dec.Reason), dec.RetryAfter
	switch {
	case dec.Blocking >= 0:
		b := dec.Buckets[dec.Blocking]
		if policy.IsReservedKey(b.Key.Client) {
			b.Key.Client = "" // a refusal names the pool, never a part's key
		}
		v.Blocked = &Blocked{Bucket: b, Unit: set.Pools[b.Key.Pool].Unit, Need: p.req.Takes[dec.Blocking].Cost}
		if dec.Reason == limiter.ReasonRateLimited && b.Key.Client == "" {
			if left := s.pauses.left(b.Key.Pool, now); left > 0 {
				v.Blocked.UpstreamPause = left
				v.RetryAfter = max(v.RetryAfter, left)
			}
		}
	case dec.Reason == limiter.ReasonBudgetExceeded && dec.BudgetBlocking >= 0 && dec.BudgetBlocking < len(dec.Budgets):
		b := dec.Budgets[dec.BudgetBlocking]
		v.Budget, v.Need = &b, p.req.Hold.Cost
		// Waiting helps only when the month is about to turn.
		if left := set.Defaults.PeriodEnd(now).Sub(now); left <= budgetRetryWindow {
			v.RetryAfter = left
		}
	case dec.Reason == limiter.ReasonConcurrency:
		v.InFlight, v.MaxConcurrent, v.RetryAfter = dec.InFlight, client.Tier.MaxConcurrent, concurrencyRetry
	}
	if set.Defaults.Shadow {
		// Global shadow mode lets every denial through (pools' own
		// shortfalls never deny there; this catches budget and
		// concurrency). The store took nothing: the call passes uncharged.
		v.Shadow = &Shadow{Reason: string(dec.Reason), RetryAfter: v.RetryAfter}
		v.Allowed, v.Outcome, v.RetryAfter = true, OutcomeShadowDenied, 0
		v.Blocked, v.Need, v.InFlight, v.MaxConcurrent = nil, 0, 0, 0
	}
	return v
}

// cancelled is the verdict for a check whose caller (Envoy) went away.
func cancelled(v Verdict, route *policy.Route) Verdict {
	v.Allowed, v.Outcome, v.Reason, v.Pool = false, OutcomeError, ReasonCancelled, route.Pools[0].Name
	return v
}

func rateLimit(set *policy.Set, b limiter.BucketState) *RateLimit {
	return &RateLimit{Pool: b.Key.Pool, Unit: set.Pools[b.Key.Pool].Unit, Limit: b.Limit.Capacity, Remaining: b.Remaining, Reset: b.ResetAfter}
}

// tightestBudget is the capped budget with the least left, or nil.
func tightestBudget(bs []limiter.BudgetState) *limiter.BudgetState {
	var best *limiter.BudgetState
	for i := range bs {
		if bs[i].Limit < 0 {
			continue
		}
		if best == nil || bs[i].Remaining() < best.Remaining() {
			best = &bs[i]
		}
	}
	return best
}

// failedOpen journals the spend of a call let through although the store
// could not answer (see failopen.go): its hold now, booked when the store
// answers. Under deferred settlement the call gets its reservation id, so
// that its settle books what it really cost.
func (s *Service) failedOpen(v *Verdict, set *policy.Set, route *policy.Route, client *policy.Client, hold *limiter.Hold, now time.Time) {
	fh := s.failOpen.admitted(hold)
	if fh == nil {
		return
	}
	v.Reservation = hold.ID
	s.pending.add(&pendingCall{id: hold.ID, set: set, route: route, client: client.ID, tier: client.Tier.Name, est: v.Estimate,
		expires: now.Add(hold.TTL), failOpen: fh})
}
