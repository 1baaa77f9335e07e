package authz

import (
	"context"
	"errors"
	"log/slog"
	"net/http"
	"strings"
	"sync"
	"time"

	"github.com/tollgate/tollgate/costing"
	"github.com/tollgate/tollgate/limiter"
	"github.com/tollgate/tollgate/policy"
)

// Settling: what happens to an admitted call once Envoy has sent it. The
// ext_proc service (envoy_extproc.go and extproc.go) follows each call's
// request and response and drives a Call; nothing here sees an Envoy type.

// HeaderRoute carries an admitted call's route upstream (to ext_proc), so
// that the upstream's rate-limit headers reach the right pools even when the
// call holds no reservation.
const HeaderRoute = "x-tollgate-route"

// Response headers an admitted call carries back to the worker.
const (
	HeaderEstimatedCost   = "x-tollgate-estimated-cost"
	HeaderBudgetRemaining = "x-tollgate-budget-remaining"
)

// settleTimeout bounds the store calls that end one call.
const settleTimeout = 2 * time.Second

// pendingCall is what Check learned of an admitted call, kept until its
// response settles it (or its reservation lapses).
type pendingCall struct {
	id      string
	set     *policy.Set // the policy the call was admitted under
	route   *policy.Route
	client  string
	tier    string
	est     costing.Estimate
	charged []limiter.Take // the buckets the admission charged
	expires time.Time
}

// pendingTable holds the calls admitted with a reservation and not yet
// settled. Its size is bounded by the calls in flight: an entry leaves when
// its call settles or its reservation's TTL passes.
type pendingTable struct {
	mu    sync.Mutex
	calls map[string]*pendingCall
}

func newPendingTable() *pendingTable { return &pendingTable{calls: map[string]*pendingCall{}} }

func (t *pendingTable) add(p *pendingCall) {
	t.mu.Lock()
	t.calls[p.id] = p
	t.mu.Unlock()
}

// take removes and returns the call with id, or nil.
func (t *pendingTable) take(id string) *pendingCall {
	t.mu.Lock()
	defer t.mu.Unlock()
	p := t.calls[id]
	delete(t.calls, id)
	return p
}

func (t *pendingTable) peek(id string) *pendingCall {
	t.mu.Lock()
	defer t.mu.Unlock()
	return t.calls[id]
}

// sweep forgets calls whose reservation has lapsed (the store commits them
// at their estimate), and returns how many it forgot.
func (t *pendingTable) sweep(now time.Time) int {
	t.mu.Lock()
	defer t.mu.Unlock()
	n := 0
	for id, p := range t.calls {
		if !now.Before(p.expires) {
			delete(t.calls, id)
			n++
		}
	}
	return n
}

func (t *pendingTable) len() int {
	t.mu.Lock()
	defer t.mu.Unlock()
	return len(t.calls)
}

// SettleOutcome says how a call ended, for metrics and tests.
type SettleOutcome string

// Settle outcomes.
const (
	SettledActual    SettleOutcome = "actual"    // committed at the cost the response reported
	SettledEstimate  SettleOutcome = "estimate"  // committed at the estimate: the response said nothing usable
	SettledReleased  SettleOutcome = "released"  // returned whole: the upstream refused or the call is free
	SettledUntracked SettleOutcome = "untracked" // no reservation to settle (immediate settlement, unmatched, unknown id)
	SettledFailed    SettleOutcome = "failed"    // the store could not be told; the reservation lapses at its TTL
)

// Reasons a call settled as it did (the metric's reason label).
const (
	settleUsage      = "usage"       // the response carried usage
	settleNoUsage    = "no_usage"    // a complete response without usage (priced as estimated)
	settleIncomplete = "incomplete"  // the response ended early (a cut stream)
	settleNoResponse = "no_response" // the stream ended before any response
	settleUpstream   = "upstream_error"
	settleFree       = "free_method" // GET, HEAD, OPTIONS: nothing billed
	settleUnknown    = "unknown_reservation"
	settleNone       = "none"
)

// Call follows one admitted call through Envoy's ext_proc: its request body
// (to ask a stream for its usage), its response headers (the upstream's rate
// limits) and its response body (the usage), and settles it once. It is not
// safe for concurrent use: one ext_proc stream drives it.
type Call struct {
	d           *Decider
	p           *pendingCall
	set         *policy.Set
	route       *policy.Route
	reservation string
	method      string

	injected bool // Tollgate asked the stream for its usage: strip that chunk
	status   int  // upstream status, 0 until the response headers came
	reader   *costing.ResponseReader
	touched  map[string]bool // pools the upstream's own headers adjusted
	ended    bool
	outcome  SettleOutcome
}

// Follow starts following the call whose request carries reservation and
// route (the headers Check set; either may be empty) and method.
func (d *Decider) Follow(reservation, route, method string) *Call {
	c := &Call{d: d, reservation: reservation, method: strings.ToUpper(method)}
	if reservation != "" {
		c.p = d.pending.peek(reservation)
	}
	if c.p != nil {
		c.set, c.route = c.p.set, c.p.route
	} else if route != "" {
		c.set = d.policies.Policy()
		c.route = c.set.Route(route)
	}
	return c
}

// Tracked reports whether anything is to be learned from this call's
// response: it holds a reservation, or its route has pools to feed.
func (c *Call) Tracked() bool { return c.route != nil || c.reservation != "" }

// WantsRequestBody reports whether the request body may need a rewrite.
func (c *Call) WantsRequestBody() bool {
	if c.p == nil {
		return false
	}
	e := c.p.est
	return e.Stream && !e.IncludeUsage && (e.Kind == costing.KindChat || e.Kind == costing.KindCompletions)
}

// RequestBody returns the body to send upstream: for an OpenAI chat or
// completions stream that did not ask for its usage, the same body asking
// for it (the usage chunk is stripped from the response again, so the
// worker sees the stream it asked for).
func (c *Call) RequestBody(body []byte) (out []byte, changed bool) {
	if !c.WantsRequestBody() {
		return body, false
	}
	out, changed, err := costing.EnsureStreamUsage(c.p.est.Kind, body)
	if err != nil {
		return body, false // not the body that was estimated; leave it alone
	}
	c.injected = changed
	return out, changed
}

// ResponseHeaders reads the upstream's status and headers (lower-case
// names): its rate-limit headers lower or pause the route's pools at once.
func (c *Call) ResponseHeaders(ctx context.Context, status int, headers map[string]string) {
	c.status = status
	if c.route == nil {
		return
	}
	sse := strings.HasPrefix(strings.ToLower(strings.TrimSpace(headers["content-type"])), "text/event-stream")
	c.reader = costing.NewResponseReader(c.route.Provider, sse, c.injected)
	c.feedback(ctx, costing.ParseSignal(c.route.Provider, status, headers, c.d.clock.Now()))
}

// feedback applies an upstream signal to the route's pools.
func (c *Call) feedback(ctx context.Context, s costing.Signal) {
	a, ok := c.d.store.(limiter.Adjuster)
	if !ok || !s.Known() {
		return
	}
	var adj []limiter.Throttle
	for _, p := range c.route.Pools {
		capTo := int64(limiter.NoCap)
		switch p.Unit {
		case policy.UnitToken:
			capTo = s.RemainingTokens
		case policy.UnitRequest:
			capTo = s.RemainingRequests
		}
		if capTo < 0 && s.Pause <= 0 {
			continue
		}
		adj = append(adj, limiter.Throttle{Key: limiter.Key{Pool: p.Name}, Limit: limiter.Limit(p.Limit), Cap: capTo, Pause: s.Pause})
	}
	if len(adj) == 0 {
		return
	}
	if c.touched == nil {
		c.touched = map[string]bool{}
	}
	actx, cancel := context.WithTimeout(context.WithoutCancel(ctx), settleTimeout)
	defer cancel()
	if _, err := a.Throttle(actx, adj, time.Time{}); err != nil {
		c.d.m.settleErrors.WithLabelValues("adjust").Inc()
		c.d.log.LogAttrs(ctx, slog.LevelWarn, "upstream rate limits not applied", slog.String("route", c.route.Name), slog.Any("error", err))
		return
	}
	for _, x := range adj {
		c.touched[x.Key.Pool] = true
		kind := "remaining"
		if x.Pause > 0 {
			kind = "pause"
		}
		c.d.m.upstreamSignals.WithLabelValues(x.Key.Pool, kind).Inc()
	}
	if s.Pause > 0 {
		c.d.log.LogAttrs(ctx, slog.LevelInfo, "upstream asked to back off; pools paused", slog.String("route", c.route.Name),
			slog.Int("status", c.status), slog.Duration("pause", s.Pause))
	}
}

// ResponseBody reads the next chunk of the response and returns what to
// forward in its place (the chunk itself unless Tollgate strips the usage
// chunk it asked for). At the end of the stream it flushes what it held.
func (c *Call) ResponseBody(chunk []byte, end bool) []byte {
	if c.reader == nil {
		return chunk
	}
	out := c.reader.Write(chunk)
	if end {
		out = append(out, c.reader.Flush()...)
	}
	return out
}

// Stripping reports whether response chunks are rewritten.
func (c *Call) Stripping() bool { return c.injected }

// End settles the call once; later calls return the first outcome. It runs
// at the end of the response, or when the stream ends before it (the worker
// went away, the upstream reset): then the call is committed at its
// estimate, since the upstream may have done the work.
func (c *Call) End(ctx context.Context) SettleOutcome {
	if c.ended {
		return c.outcome
	}
	c.ended = true
	c.outcome = c.settle(context.WithoutCancel(ctx))
	return c.outcome
}

func (c *Call) settle(ctx context.Context) SettleOutcome {
	if c.reservation == "" {
		return c.count(SettledUntracked, settleNone)
	}
	p := c.d.pending.take(c.reservation)
	if p == nil {
		// Admitted by an earlier process, or settled already: the store's
		// TTL commits it at its estimate.
		return c.count(SettledUntracked, settleUnknown)
	}
	l, ok := c.d.store.(limiter.Ledger)
	if !ok {
		return c.count(SettledUntracked, settleNone)
	}
	ctx, cancel := context.WithTimeout(ctx, settleTimeout)
	defer cancel()

	var (
		outcome SettleOutcome
		reason  string
		cost    = p.est.Cost
		refunds []limiter.Refund
	)
	switch {
	case c.status == 0:
		outcome, reason = SettledEstimate, settleNoResponse
	case c.status >= http.StatusBadRequest:
		outcome, reason = SettledReleased, settleUpstream
		refunds = c.refunds(p, nil)
	case c.method == http.MethodGet || c.method == http.MethodHead || c.method == http.MethodOptions:
		outcome, reason = SettledReleased, settleFree
		refunds = c.refunds(p, nil)
	default:
		outcome, reason = SettledEstimate, settleNoUsage
		if c.reader != nil {
			u, found, complete := c.reader.Usage()
			switch {
			case found && complete:
				a := costing.Price(p.set, p.route, p.est, u)
				outcome, reason, cost = SettledActual, settleUsage, a.Cost
				refunds = c.refunds(p, &a)
				c.d.observe(p, u, a)
			case !complete:
				reason = settleIncomplete
			}
		}
	}

	var err error
	if outcome == SettledReleased {
		_, err = l.Release(ctx, p.id)
	} else {
		_, err = l.Settle(ctx, p.id, cost)
	}
	if err != nil && !errors.Is(err, limiter.ErrUnknownReservation) {
		c.d.m.settleErrors.WithLabelValues("ledger").Inc()
		c.d.log.LogAttrs(ctx, slog.LevelWarn, "settling failed; the reservation lapses at its estimate",
			slog.String("reservation", p.id), slog.Any("error", err))
		return c.count(SettledFailed, reason)
	}
	if a, ok := c.d.store.(limiter.Adjuster); ok && len(refunds) > 0 {
		if _, err := a.Refund(ctx, refunds, time.Time{}); err != nil {
			c.d.m.settleErrors.WithLabelValues("adjust").Inc()
			c.d.log.LogAttrs(ctx, slog.LevelWarn, "unused units not returned", slog.String("reservation", p.id), slog.Any("error", err))
		}
	}
	c.d.kickSettled(p) // its slot, and any units it gave back, may let a held call go
	return c.count(outcome, reason)
}

func (c *Call) count(o SettleOutcome, reason string) SettleOutcome {
	c.d.m.settled.WithLabelValues(string(o), reason).Inc()
	return o
}

// refunds returns, for every bucket the admission charged, what it gets
// back: all of it when a is nil (the call consumed nothing: no tokens, no
// segments, no e-mails), else the estimate's units less those measured
// (negative: a charge). A request pool gets nothing back: the request did
// reach the upstream. Pools the upstream's own headers just set are left as
// the upstream said.
func (c *Call) refunds(p *pendingCall, a *costing.Actual) []limiter.Refund {
	var out []limiter.Refund
	for _, t := range p.charged {
		if pool := p.set.Pools[t.Key.Pool]; c.touched[t.Key.Pool] || pool == nil || pool.Unit == policy.UnitRequest {
			continue
		}
		back := t.Cost
		if a != nil {
			back = 0
			for i, pc := range a.Pools {
				if pc.Pool.Name == t.Key.Pool && a.Measured[i] {
					back = p.est.Pools[i].Units - pc.Units
				}
			}
		}
		if back != 0 {
			back = max(min(back, maxRefund), -maxRefund)
			out = append(out, limiter.Refund{Key: t.Key, Limit: t.Limit, Units: back})
		}
	}
	return out
}

// maxRefund bounds one refund or after-the-fact charge (limiter's range).
const maxRefund = 1_000_000_000

// observe feeds a settled call to the metrics and the adaptive learner.
func (d *Decider) observe(p *pendingCall, u costing.Usage, a costing.Actual) {
	model := p.est.PriceEntry
	if model == "" {
		model = "unpriced"
	}
	m := d.m
	m.estimatedDollars.WithLabelValues(model).Add(dollars(p.est.Cost))
	m.actualDollars.WithLabelValues(model).Add(dollars(a.Cost))
	if p.route.LLM() {
		m.estimatedTokens.WithLabelValues(model, "input").Add(float64(p.est.InputTokens))
		m.estimatedTokens.WithLabelValues(model, "output").Add(float64(p.est.OutputTokens))
		m.actualTokens.WithLabelValues(model, "input").Add(float64(u.InputTokens))
		m.actualTokens.WithLabelValues(model, "output").Add(float64(u.OutputTokens))
	}
	if p.est.Cost > 0 {
		// A ratio for a histogram: converted from integers at exposition.
		m.estimateRatio.WithLabelValues(model).Observe(float64(a.Cost) / float64(p.est.Cost))
	}
	d.est.Learner.Observe(costing.LearnKey(p.route, p.est.PriceEntry), p.est.Cost, a.Cost, p.set.Defaults.Adaptive.Window)
}

// dollars converts nano-dollars for exposition.
func dollars(m policy.Money) float64 { return float64(m) / float64(policy.NanosPerDollar) }
