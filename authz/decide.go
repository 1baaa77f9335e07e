package authz

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"fmt"
	"log/slog"
	"net/http"
	"sync/atomic"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/tollgate/tollgate/costing"
	"github.com/tollgate/tollgate/limiter"
	"github.com/tollgate/tollgate/limiter/queue"
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
	OutcomeError        Outcome = "error"         // the store failed and the policy fails closed
	OutcomeFailOpen     Outcome = "fail_open"     // the store failed and the policy fails open
)

// Settlement says how an admitted call's spend is booked.
type Settlement int

const (
	// SettleImmediate commits the estimate at admission: for deployments
	// with nothing that reports a call's end (no ext_proc, no API call).
	// Concurrency caps need to know when calls end, so they are not
	// enforced in this mode.
	SettleImmediate Settlement = iota
	// SettleDeferred holds the estimate and a concurrency slot under a
	// reservation id (sent upstream in x-tollgate-reservation) until the call
	// is settled or released (ext_proc, or the HTTP API), or its TTL lapses.
	SettleDeferred
)

// ParseSettlement reads "immediate" or "deferred".
func ParseSettlement(s string) (Settlement, error) {
	switch s {
	case "immediate":
		return SettleImmediate, nil
	case "deferred":
		return SettleDeferred, nil
	}
	return 0, fmt.Errorf("settlement %q: want immediate or deferred", s)
}

func (s Settlement) String() string {
	if s == SettleDeferred {
		return "deferred"
	}
	return "immediate"
}

// HeaderReservation carries an admitted call's reservation id upstream (to
// ext_proc) in deferred settlement.
const HeaderReservation = "x-tollgate-reservation"

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
	// Reservation is the id to settle or release (deferred settlement).
	Reservation string
	// Budget is the tightest budget of the client's chain, when budgeted.
	Budget *limiter.BudgetState
	// Shadow, when set, is the denial shadow mode let through, e.g.
	// "denied; reason=rate_limited; pool=gpt-4".
	Shadow   string
	Estimate costing.Estimate
	// Class is the call's priority class; QueueWait how long it was held.
	Class     policy.Class
	QueueWait time.Duration
}

// Decider runs the admission pipeline: policy → estimate → limiter.
type Decider struct {
	policies PolicySource
	store    limiter.Store
	est      costing.Estimator
	log      *slog.Logger
	m        *metrics
	settle   Settlement
	clock    limiter.Clock
	newID    func() string
	pending  *pendingTable
	queue    *queue.Queue[attempt]
	qm       *queueMetrics

	// Store errors come in floods when the store is down: log one a second
	// and count the rest into it.
	errLogAt   atomic.Int64 // Unix ns of the last logged store error
	errSkipped atomic.Int64
}

func (d *Decider) logStoreError(ctx context.Context, requestID string, err error) {
	now := time.Now().UnixNano()
	last := d.errLogAt.Load()
	if now-last < int64(time.Second) || !d.errLogAt.CompareAndSwap(last, now) {
		d.errSkipped.Add(1)
		return
	}
	d.log.LogAttrs(ctx, slog.LevelError, "limiter store failed", slog.String("request_id", requestID),
		slog.Any("error", err), slog.Int64("similar_errors_not_logged", d.errSkipped.Swap(0)))
}

// Option adjusts a Decider.
type Option func(*Decider)

// WithSettlement picks how admitted calls are booked (default immediate).
func WithSettlement(s Settlement) Option { return func(d *Decider) { d.settle = s } }

// WithClock sets the clock that picks a call's budget period.
func WithClock(c limiter.Clock) Option { return func(d *Decider) { d.clock = c } }

// NewDecider builds a Decider. A nil logger discards.
func NewDecider(p PolicySource, s limiter.Store, reg prometheus.Registerer, log *slog.Logger, opts ...Option) *Decider {
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	d := &Decider{policies: p, store: s, log: log, m: newMetrics(reg), clock: limiter.SystemClock{}, newID: newReservationID,
		pending: newPendingTable()}
	tok, err := costing.SharedTokenizer()
	if err != nil { // a broken build: LLM calls fall back to the size-based estimate
		log.Error("tokenizer unavailable; estimating LLM calls from their size", slog.Any("error", err))
	}
	d.est = costing.Estimator{Tok: tok, Learner: costing.NewLearner()}
	for _, o := range opts {
		o(d)
	}
	qclock, ok := d.clock.(queue.Clock) // a clock with timers (the fake one in tests) drives the queue too
	if !ok {
		qclock = queue.SystemClock{}
	}
	d.qm = newQueueMetrics(reg)
	d.queue = queue.New[attempt](queue.Config{
		Clock:  qclock,
		Policy: func() policy.Queue { return d.policies.Policy().Queue },
		OnStarving: func(id, line string, class policy.Class, waited time.Duration) {
			d.qm.starving.WithLabelValues(class.String()).Inc()
			_, desc := lineLabel(line)
			d.log.LogAttrs(context.Background(), slog.LevelWarn, "a call has waited past the starvation alert",
				slog.String("request_id", id), slog.String("queue", desc), slog.String("class", class.String()), slog.Duration("waited", waited))
		},
		OnExit: func(_ string, class policy.Class, o queue.Outcome, waited time.Duration) {
			d.qm.exits.WithLabelValues(class.String(), string(o)).Inc()
			d.qm.wait.WithLabelValues(class.String(), string(o)).Observe(waited.Seconds())
		},
	})
	reg.MustRegister(newQueueCollector(d.queue))
	return d
}

// Close ends every wait in the hold queue (the calls are told Tollgate is
// shutting down) and waits for attempts in flight.
func (d *Decider) Close() error { return d.queue.Close() }

// SweepPending forgets admitted calls whose reservation lapsed unsettled
// (the store commits them at their estimate), and returns how many.
func (d *Decider) SweepPending() int { return d.pending.sweep(d.clock.Now()) }

// Pending is how many admitted calls await settling.
func (d *Decider) Pending() int { return d.pending.len() }

// Settlement reports how the Decider books calls.
func (d *Decider) Settlement() Settlement { return d.settle }

// newReservationID returns 128 random bits in hex.
func newReservationID() string {
	var b [16]byte
	_, _ = rand.Read(b[:]) // crypto/rand.Read never fails
	return hex.EncodeToString(b[:])
}

// Chain returns the budgets a client's calls charge: its own (or its
// tier's), then each parent's. An unbudgeted level is tracked, not capped.
func Chain(c *policy.Client) []limiter.Budget {
	var out []limiter.Budget
	for p := c; p != nil; p = p.Parent {
		lim := limiter.Unlimited
		if m, ok := p.Budget(); ok {
			lim = m
		}
		out = append(out, limiter.Budget{Owner: p.ID, Limit: lim})
	}
	return out
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

	// Only a body whose model picks the route is read here; the estimate
	// reads it in full later.
	route := matchRoute(set, r.Host, r.Path, r.Body)
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
	v.Estimate = d.est.Estimate(set, route, costing.Call{Path: r.Path, ContentType: r.Headers["content-type"], Body: r.Body, BodySize: r.BodySize})
	if route.LLM() && !v.Estimate.ModelKnown {
		d.m.unknownModels.WithLabelValues(route.Name).Inc()
	}

	takes := make([]limiter.Take, 0, 2*len(route.Pools))
	for _, pc := range v.Estimate.Pools {
		p := pc.Pool
		shadow := set.Shadowed(p)
		takes = append(takes, limiter.Take{Key: limiter.Key{Pool: p.Name}, Limit: limiter.Limit(p.Limit), Cost: pc.Units, Shadow: shadow})
		if cl, ok := client.Tier.ClientLimits[p.Name]; ok {
			takes = append(takes, limiter.Take{Key: limiter.Key{Pool: p.Name, Client: client.ID}, Limit: limiter.Limit(cl), Cost: pc.Units, Shadow: shadow})
		}
	}
	now := d.clock.Now()
	// Immediate settlement books the expected cost; a hold reserves what the
	// policy's strategy asks (120% of it by default), settled later.
	cost := v.Estimate.Reserve
	if d.settle == SettleImmediate {
		cost = v.Estimate.Cost
	}
	hold := &limiter.Hold{Period: set.Defaults.Period(now), Cost: cost, Budgets: Chain(client), Commit: d.settle == SettleImmediate}
	if !hold.Commit {
		hold.ID, hold.TTL = d.newID(), set.Defaults.ReservationTTL
		hold.Slot = &limiter.Slot{Client: client.ID, Max: client.Tier.MaxConcurrent}
	}
	req := limiter.Request{Takes: takes, Hold: hold}
	class := classOf(set, r, route, client)
	v.Class = class
	cp := set.Queue.Class(class)
	deadline := now.Add(cp.MaxWait)
	if dl, ok := ctx.Deadline(); ok && dl.Add(-deadlineMargin).Before(deadline) {
		deadline = dl.Add(-deadlineMargin) // answer before Envoy gives up
	}
	canWait := class != policy.Immediate && cp.MaxWait > 0 && deadline.After(now) && !set.Defaults.Shadow
	var notBefore time.Time
	if class == policy.Deferred {
		if inside, opens := set.Queue.OffPeak(now); !inside {
			if !canWait || opens.After(deadline) {
				v.Outcome, v.Reason, v.Status, v.RetryAfter = OutcomeDenied, ReasonOffPeak, http.StatusTooManyRequests, opens.Sub(now)
				v.Pool = route.Pools[0].Name
				v.Message = fmt.Sprintf("Deferred calls go in the off-peak window, which opens at %s; please try again then.", opens.Format(time.RFC3339))
				return v
			}
			notBefore = opens // held until the window opens
		}
	}

	var (
		dec  limiter.Decision
		err  error
		line string
	)
	if canWait {
		// Behind waiters for the same resource, a call queues rather than
		// take what a better one waits for; a deferred call outside its
		// window is held for it.
		if line = d.busyLine(req); line == "" && !notBefore.IsZero() {
			line = firstLine(req)
		}
	}
	if line == "" {
		dec, err = d.store.Reserve(ctx, req)
		if err == nil && !dec.Allowed && canWait && waitable(dec) &&
			(dec.Reason == limiter.ReasonConcurrency || !now.Add(dec.RetryAfter).After(deadline)) {
			line = lineOf(dec, req)
		}
	} else {
		dec.Blocking, dec.BudgetBlocking = -1, -1
	}
	queued := line != ""
	if queued {
		h := d.hold(ctx, line, r, client, class, cp, req, unitsFor(line, takes), deadline, notBefore)
		v.QueueWait = h.res.Waited
		pool, desc := lineLabel(h.line)
		if pool == "concurrency" {
			pool = route.Pools[0].Name
		}
		deny := func(status int, reason string, retry time.Duration, msg string) Verdict {
			v.Outcome, v.Reason, v.Status, v.RetryAfter, v.Pool, v.Message = OutcomeDenied, reason, status, retry, pool, msg
			if status == http.StatusServiceUnavailable {
				v.Outcome = OutcomeError
			}
			if h.res.Tried {
				if a := h.res.Value.dec; a.Tightest() >= 0 {
					b := a.Buckets[a.Tightest()]
					v.RateLimit = &RateLimit{Pool: b.Key.Pool, Unit: set.Pools[b.Key.Pool].Unit, Limit: b.Limit.Capacity, Remaining: b.Remaining, Reset: b.ResetAfter}
				}
			}
			return v
		}
		retry := max(h.res.RetryAfter, dec.RetryAfter, time.Second)
		switch h.res.Outcome {
		case queue.Granted, queue.Denied:
			dec, err = h.res.Value.dec, h.res.Value.err
			if h.res.Outcome == queue.Granted && ctx.Err() != nil { // the grant raced the caller's exit
				d.undo(ctx, req, dec)
				return d.cancelled(v, route)
			}
		case queue.Cancelled:
			return d.cancelled(v, route)
		case queue.Timeout:
			return deny(http.StatusTooManyRequests, ReasonQueueTimeout, retry,
				fmt.Sprintf("Held %.1fs in the %s queue for %s, the most its class may wait; please try again in %ds.",
					h.res.Waited.Seconds(), class, desc, ceilSeconds(retry)))
		case queue.Full:
			return deny(http.StatusTooManyRequests, ReasonQueueFull, retry,
				fmt.Sprintf("The %s queue for %s is full (%d calls); please try again in %ds.", class, desc, cp.MaxDepth, ceilSeconds(retry)))
		case queue.Removed:
			return deny(http.StatusTooManyRequests, ReasonQueueRemoved, time.Second, "An operator removed this call from Tollgate's queue.")
		default: // closed
			return deny(http.StatusServiceUnavailable, ReasonShuttingDown, time.Second, "Tollgate is shutting down; please try again.")
		}
	}
	if err != nil && ctx.Err() != nil {
		return d.cancelled(v, route)
	}
	if err != nil {
		d.m.storeErrors.Inc()
		d.logStoreError(ctx, r.ID, err)
		v.Reason, v.Pool = ReasonStoreError, route.Pools[0].Name
		if set.Defaults.StoreUnavailable == policy.Allow {
			v.Allowed, v.Outcome = true, OutcomeFailOpen
			return v
		}
		v.Outcome, v.Status = OutcomeError, http.StatusServiceUnavailable
		v.Message = "Tollgate could not reach its limiter store"
		return v
	}
	if dec.Expired > 0 {
		d.m.expired.Add(float64(dec.Expired))
	}
	v.Budget = tightestBudget(dec.Budgets)
	if i := dec.Tightest(); i >= 0 {
		b := dec.Buckets[i]
		v.Pool = b.Key.Pool
		v.RateLimit = &RateLimit{Pool: b.Key.Pool, Unit: set.Pools[b.Key.Pool].Unit, Limit: b.Limit.Capacity, Remaining: b.Remaining, Reset: b.ResetAfter}
	}
	if !dec.Allowed {
		v.Outcome, v.Reason, v.Status, v.RetryAfter = OutcomeDenied, string(dec.Reason), http.StatusTooManyRequests, dec.RetryAfter
		switch {
		case dec.Blocking >= 0:
			b := dec.Buckets[dec.Blocking]
			v.Message = denyMessage(b, takes[dec.Blocking], dec.Reason, set.Pools[b.Key.Pool].Unit)
		case dec.Reason == limiter.ReasonBudgetExceeded && dec.BudgetBlocking >= 0 && dec.BudgetBlocking < len(dec.Budgets):
			b := dec.Budgets[dec.BudgetBlocking]
			v.Budget = &b
			v.Message = fmt.Sprintf("Monthly budget of %q is exhausted: $%s spent and $%s held of $%s; this call needs about $%s.",
				b.Owner, b.Spent, b.Reserved, b.Limit, hold.Cost)
			// Waiting helps only when the month is about to turn.
			if left := set.Defaults.PeriodEnd(now).Sub(now); left <= budgetRetryWindow {
				v.RetryAfter = left
			}
		case dec.Reason == limiter.ReasonConcurrency:
			v.Message = fmt.Sprintf("Client %q has %d calls in flight, the most its tier %s allows.", client.ID, dec.InFlight, client.Tier.Name)
			v.RetryAfter = concurrencyRetry
		default:
			v.Message = "Tollgate denied the call: " + string(dec.Reason)
		}
		if set.Defaults.Shadow {
			// Global shadow mode lets every denial through (pools' own
			// shortfalls never deny there; this catches budget and
			// concurrency). The store took nothing: the call passes uncharged.
			v.Allowed, v.Outcome, v.Status = true, OutcomeShadowDenied, 0
			v.Shadow = fmt.Sprintf("denied; reason=%s; retry_after=%d", dec.Reason, ceilSeconds(v.RetryAfter))
			v.RetryAfter, v.Message = 0, ""
		}
		return v
	}
	v.Allowed, v.Outcome, v.Reservation = true, OutcomeAllowed, hold.ID
	if !queued {
		d.recordGrant(client.ID, req) // a grant through the queue is recorded there
	}
	if hold.ID != "" {
		p := &pendingCall{id: hold.ID, set: set, route: route, client: client.ID, tier: client.Tier.Name, est: v.Estimate,
			expires: now.Add(hold.TTL)}
		for i, t := range takes {
			if !(t.Shadow && dec.Buckets[i].Short) { // a short shadow bucket was not charged
				p.charged = append(p.charged, t)
			}
		}
		d.pending.add(p)
	}
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

// cancelled is the verdict for a check whose caller (Envoy) went away.
func (d *Decider) cancelled(v Verdict, route *policy.Route) Verdict {
	v.Allowed, v.Outcome, v.Reason, v.Status = false, OutcomeError, ReasonCancelled, http.StatusServiceUnavailable
	v.Pool, v.Message = route.Pools[0].Name, "the check was cancelled before Tollgate could answer"
	return v
}

// firstLine is the line a call held for the off-peak window joins: its
// first bucket's.
func firstLine(req limiter.Request) string {
	if len(req.Takes) > 0 {
		return bucketLine(req.Takes[0].Key)
	}
	if h := req.Hold; h != nil && h.Slot != nil {
		return slotLine(h.Slot.Client)
	}
	return "none"
}

// unitsFor is what a call takes from line's resource, for fairness.
func unitsFor(line string, takes []limiter.Take) int64 {
	for _, t := range takes {
		if bucketLine(t.Key) == line {
			return t.Cost
		}
	}
	return 1
}

// budgetRetryWindow: a budget denial carries Retry-After only when the
// period ends within it.
const budgetRetryWindow = 24 * time.Hour

// concurrencyRetry is the Retry-After of a concurrency denial: a slot frees
// when some call in flight ends, which Tollgate cannot foresee.
const concurrencyRetry = time.Second

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
