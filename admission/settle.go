package admission

import (
	"context"
	"errors"
	"log/slog"
	"net/http"
	"slices"
	"strings"
	"sync"
	"time"

	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/trace"

	"github.com/tollgate/tollgate/costing"
	"github.com/tollgate/tollgate/costing/optimize"
	"github.com/tollgate/tollgate/internal/tracing"
	"github.com/tollgate/tollgate/limiter"
	"github.com/tollgate/tollgate/policy"
)

// Settling: what happens to an admitted call once Envoy has sent it. The
// transport follows each call's request and response (ext_proc) and drives
// a Call, which ends the call's reservation in one store step (limiter.
// Finisher): the money it really cost, the bucket units it did not use,
// its concurrency slot, and the upstream's rate-limit signal.

// settleTimeout bounds the store calls that end one call.
const settleTimeout = 2 * time.Second

// pendingCall is what admission learned of a call it admitted, kept until
// its response settles it (or its reservation lapses): what pricing its
// usage needs. What the admission charged each bucket is recorded with the
// reservation in the store, so refunds never depend on this table.
type pendingCall struct {
	id        string
	requestID string      // the call's x-request-id, for its cost record and the decision log
	set       *policy.Set // the policy the call was admitted under
	route     *policy.Route
	client    string
	tier      string
	est       costing.Estimate
	charged   []limiter.Take // the buckets the admission charged (for the queue's kicks)
	expires   time.Time
	opt       *optimized   // what the optimizer rewrote, nil for nothing
	class     policy.Class // the call's queue class (the observation book's key)
	// failOpen, for a call let through fail open, is its hold in the
	// fail-open journal: the store never held it, so its settle goes there.
	failOpen *failOpenHold
	// lead is what the call records for the cache once its answer is
	// whole, nil for nothing: whoever takes the call from the table ends it.
	lead *cacheLead
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

// takeFailOpen removes and returns the call with id if it was let through
// fail open, else nil (and leaves any other call in place).
func (t *pendingTable) takeFailOpen(id string) *pendingCall {
	t.mu.Lock()
	defer t.mu.Unlock()
	p := t.calls[id]
	if p == nil || p.failOpen == nil {
		return nil
	}
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
	var leads []*cacheLead
	t.mu.Lock()
	n := 0
	for id, p := range t.calls {
		if !now.Before(p.expires) {
			delete(t.calls, id)
			n++
			if p.lead != nil {
				leads = append(leads, p.lead)
			}
		}
	}
	t.mu.Unlock()
	for _, l := range leads { // never settled: its answer was never seen
		l.abandon(context.Background(), "lapsed")
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

// settler is what settling needs, named: the store, the table of pending
// calls, the policy, the clock, metrics, the adaptive learner and a way to
// wake held calls.
type settler struct {
	store    Store
	pending  *pendingTable
	policies PolicySource
	clock    limiter.Clock
	dlog     DecisionLog // nil: no decision log
	m        *metrics
	learner  *costing.Learner
	log      *slog.Logger
	kick     func(lines ...string)
	kickAll  func()
	pauses   *pauseBook
	watch    *watch
	flex     *flexBook
	failOpen *failOpenBook
	book     *observeBook // calls settled this period, for the optimize API
	tr       *tracing.Tracer
}

// Call follows one admitted call: its request body (to ask a stream for
// its usage), its response headers (the upstream's rate limits) and its
// response body (the usage), and settles it once. It is not safe for
// concurrent use: one ext_proc stream drives it.
type Call struct {
	s           *settler
	p           *pendingCall
	set         *policy.Set
	route       *policy.Route
	reservation string
	method      string

	injected    bool // Tollgate asked the stream for its usage: strip that chunk
	rewritten   bool // the optimizer's edits went out with the body
	flexRefused bool // the provider refused the flex call for capacity
	status      int  // upstream status, 0 until the response headers came
	reader      *costing.ResponseReader
	signal      costing.Signal // the upstream's rate-limit headers
	ended       bool
	outcome     SettleOutcome
	savings     []limiter.Saving // what the call's rewrites saved (SetSavings)
	rec         *recording       // the answer recorded for the cache, nil for none
}

// Follow starts following the call whose request carries reservation and
// route (the headers Check set; either may be empty) and method.
func (s *Service) Follow(reservation, route, method string) *Call {
	c := &Call{s: s.settler, reservation: reservation, method: strings.ToUpper(method)}
	if reservation != "" {
		c.p = s.pending.peek(reservation)
	}
	if c.p != nil {
		c.set, c.route = c.p.set, c.p.route
	} else if route != "" {
		c.set = s.policies.Policy()
		c.route = c.set.Route(route)
	}
	return c
}

// Tracked reports whether anything is to be learned from this call's
// response: it holds a reservation, or its route has pools to feed.
func (c *Call) Tracked() bool { return c.route != nil || c.reservation != "" }

// WantsRequestBody reports whether the request body may need a rewrite.
func (c *Call) WantsRequestBody() bool {
	return c.p != nil && (c.p.opt != nil || c.wantsUsage())
}

func (c *Call) wantsUsage() bool {
	e := c.p.est
	return e.Stream && !e.IncludeUsage && (e.Kind == costing.KindChat || e.Kind == costing.KindCompletions)
}

// RequestBody returns the body to send upstream: the optimizer's rewrite
// decided at admission, and for an OpenAI chat or completions stream that
// did not ask for its usage, the same body asking for it (the usage chunk
// is stripped from the response again, so the worker sees the stream it
// asked for). A body that is not the one admitted (the edits do not change
// it as they did) goes as it is, and is settled as the worker's call.
func (c *Call) RequestBody(body []byte) (out []byte, changed bool) {
	if !c.WantsRequestBody() {
		return body, false
	}
	out = body
	if o := c.p.opt; o != nil {
		b, applied, err := optimize.Apply(o.body, body, o.edits)
		if err != nil || !slices.EqualFunc(applied, o.applied, func(a, b optimize.Applied) bool { return a.Strategy == b.Strategy }) {
			c.s.m.optimizeErrors.Inc()
			return body, false
		}
		out, changed, c.rewritten = b, true, true
	}
	if c.wantsUsage() {
		b, injected, err := costing.EnsureStreamUsage(c.p.est.Kind, out)
		if err == nil && injected {
			out, changed, c.injected = b, true, true
		}
	}
	return out, changed
}

// WorkerHeaders are the headers to set on the response the worker gets:
// what the optimizer did (x-tollgate-optimized, and
// x-tollgate-downgraded-from with the model the worker asked for), and
// x-should-retry: true on a flex call the provider refused for capacity
// when the policy lets the retry go at the standard tier.
func (c *Call) WorkerHeaders() map[string]string {
	if !c.rewritten {
		return nil
	}
	o := c.p.opt
	hs := map[string]string{HeaderOptimized: strings.Join(o.strategies(), ",")}
	if a, ok := o.from(optimize.Downgrade); ok {
		hs[HeaderDowngradedFrom] = a.FromModel
	}
	if c.flexRefused && o.fallback == policy.FlexStandard {
		hs["x-should-retry"] = "true"
	}
	return hs
}

// ResponseHeaders reads the upstream's status and headers (lower-case
// names). Their rate-limit signal goes to the store with the call's
// settlement, in the same step; a call that holds no reservation applies it
// at once.
func (c *Call) ResponseHeaders(ctx context.Context, status int, headers map[string]string) {
	c.status = status
	if c.route == nil {
		return
	}
	if status == http.StatusTooManyRequests && c.rewritten && c.p.opt.did(optimize.Flex) {
		// The flex tier ran out of capacity: that says nothing of the
		// account's rate limits, so no pool is paused; with
		// flex_refused: standard, flex pauses for the model and the
		// worker's retry goes at the standard tier.
		c.flexRefused = true
		c.s.m.flexRefused.Inc()
		if c.p.opt.fallback == policy.FlexStandard {
			c.s.flex.pause(c.p.est.Model, c.s.clock.Now())
		}
	}
	sse := strings.HasPrefix(strings.ToLower(strings.TrimSpace(headers["content-type"])), "text/event-stream")
	c.reader = costing.NewResponseReader(c.route.Provider, sse, c.injected)
	if enc := costing.ParseEncoding(headers["content-encoding"]); enc != costing.EncodingIdentity {
		// Tollgate asked for identity (ReadsResponse); an upstream that
		// compressed all the same is read after inflating, and a stream
		// Tollgate asked for usage keeps that chunk (it cannot be cut out
		// of compressed bytes).
		c.reader.SetEncoding(enc)
		c.s.m.encodedResponses.WithLabelValues(encodingLabel(enc)).Inc()
	}
	c.signal = costing.ParseSignal(c.route.Provider, status, headers, c.s.clock.Now())
	if c.p != nil && c.p.lead != nil {
		c.rec = newRecording(status, headers, c.p.lead.max)
	}
	if c.reservation == "" {
		if th := c.throttles(); len(th) > 0 {
			actx, cancel := context.WithTimeout(context.WithoutCancel(ctx), settleTimeout)
			defer cancel()
			if _, err := c.s.store.Throttle(actx, th, time.Time{}); err != nil {
				c.s.m.settleErrors.WithLabelValues("adjust").Inc()
				c.s.log.LogAttrs(ctx, slog.LevelWarn, "upstream rate limits not applied", slog.String("route", c.route.Name), slog.Any("error", err))
				return
			}
			c.applied(ctx, th)
		}
	}
}

// throttles turns the upstream's signal into one throttle per pool of the
// route it speaks of.
func (c *Call) throttles() []limiter.Throttle {
	s := c.signal
	if c.route == nil || c.status == 0 || !s.Known() || c.flexRefused { // no response headers: the upstream said nothing
		return nil
	}
	var out []limiter.Throttle
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
		out = append(out, limiter.Throttle{Key: limiter.Key{Pool: p.Name}, Limit: limiter.Limit(p.SharedLimit()), Cap: capTo, Pause: s.Pause})
		if s.Pause > 0 {
			// A pause holds every part of a split pool: the provider
			// refuses the whole quota, whoever's share it is.
			for _, r := range p.Reserved {
				for _, pt := range []*policy.Part{&r.Kept, r.Lent} {
					if pt != nil && len(out) < limiter.MaxCharges {
						out = append(out, limiter.Throttle{Key: limiter.Key{Pool: p.Name, Client: pt.Key}, Limit: limiter.Limit(pt.Limit), Cap: limiter.NoCap, Pause: s.Pause})
					}
				}
			}
		}
	}
	return out
}

// applied counts and logs throttles the store took.
func (c *Call) applied(ctx context.Context, th []limiter.Throttle) {
	for _, t := range th {
		kind := "remaining"
		if t.Pause > 0 {
			kind = "pause"
			c.s.pauses.note(t.Key.Pool, c.s.clock.Now(), t.Pause)
		}
		c.s.m.upstreamSignals.WithLabelValues(t.Key.Pool, kind).Inc()
	}
	if c.signal.Pause > 0 {
		c.s.log.LogAttrs(ctx, slog.LevelInfo, "upstream asked to back off; pools paused", slog.String("route", c.route.Name),
			slog.Int("status", c.status), slog.Duration("pause", c.signal.Pause))
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
	if c.rec != nil {
		c.rec.write(out) // what the worker gets is what a repeat gets
	}
	return out
}

// ResponseEnded says the response reached its end (its last body chunk,
// headers without a body, or its trailers): a call whose stream ends
// without it was cut short.
func (c *Call) ResponseEnded() {
	if c.rec != nil {
		c.rec.complete = true
	}
}

// Stripping reports whether response chunks are rewritten.
func (c *Call) Stripping() bool {
	if c.reader != nil {
		return c.reader.Stripping()
	}
	return c.injected
}

// ReadsResponse reports whether Tollgate reads this call's response (for
// its usage and the upstream's rate limits). Such a call asks the upstream
// for an uncompressed answer (accept-encoding: identity), which every HTTP
// client accepts, so that it is read as it streams and settled exactly.
func (c *Call) ReadsResponse() bool { return c.route != nil }

func encodingLabel(e costing.Encoding) string {
	switch e {
	case costing.EncodingGzip:
		return "gzip"
	case costing.EncodingDeflate:
		return "deflate"
	}
	return "other"
}

// End settles the call once; later calls return the first outcome. It runs
// at the end of the response, or when the stream ends before it (the worker
// went away, the upstream reset): then the call is committed at its
// estimate, since the upstream may have done the work.
func (c *Call) End(ctx context.Context) SettleOutcome {
	if c.ended {
		return c.outcome
	}
	c.ended = true
	if c.route != nil {
		c.s.m.upstreamByClass[statusClass(c.status)].Inc()
		c.s.watch.answered(c.status)
	}
	ctx = context.WithoutCancel(ctx)
	if !c.Tracked() {
		c.outcome = c.settle(ctx)
		return c.outcome
	}
	ctx, span := c.s.tr.Start(ctx, spanSettle, trace.SpanKindInternal)
	c.outcome = c.settle(ctx)
	if span.IsRecording() {
		span.SetAttributes(attribute.String("tollgate.settle.outcome", string(c.outcome)),
			attribute.Int("http.response.status_code", c.status))
		if c.route != nil {
			span.SetAttributes(attribute.String("tollgate.route", c.route.Name))
		}
	}
	span.End()
	return c.outcome
}

// statusClass is an upstream status's class for the metric: "none" when
// no response came.
func statusClass(status int) string {
	switch {
	case status <= 0:
		return "none"
	case status < 300:
		return "2xx"
	case status < 400:
		return "3xx"
	case status < 500:
		return "4xx"
	}
	return "5xx"
}

func (c *Call) settle(ctx context.Context) SettleOutcome {
	if c.reservation == "" {
		return c.count(SettledUntracked, settleNone)
	}
	ctx, cancel := context.WithTimeout(ctx, settleTimeout)
	defer cancel()
	p := c.s.pending.take(c.reservation)
	e := limiter.Ending{ID: c.reservation, Throttles: c.throttles()}
	var (
		outcome SettleOutcome
		reason  string
		a       costing.Actual
		u       costing.Usage
	)
	switch {
	case p == nil:
		// Admitted by an earlier process (or settled through the API
		// already): what the response says can still be priced from the
		// route and the usage, and the store knows what was charged.
		outcome, reason = c.recover(&e)
		e.Used = withDedicated(c.set, e.Used)
		if outcome == SettledUntracked && len(e.Throttles) == 0 {
			return c.count(outcome, reason)
		}
	case c.status == 0:
		e.Outcome, e.Actual = limiter.OutcomeSettled, p.est.Cost
		outcome, reason = SettledEstimate, settleNoResponse
	case c.status >= http.StatusBadRequest:
		e.Outcome, e.Used = limiter.OutcomeReleased, unused(p.route)
		outcome, reason = SettledReleased, settleUpstream
	case c.method == http.MethodGet || c.method == http.MethodHead || c.method == http.MethodOptions:
		e.Outcome, e.Used = limiter.OutcomeReleased, unused(p.route)
		outcome, reason = SettledReleased, settleFree
	default:
		e.Outcome, e.Actual = limiter.OutcomeSettled, p.est.Cost
		outcome, reason = SettledEstimate, settleNoUsage
		if c.reader != nil {
			var found, complete bool
			u, found, complete = c.reader.Usage()
			switch {
			case found && complete:
				u = c.bounded(u)
				est := p.est
				if p.opt != nil && !c.rewritten {
					est = p.opt.orig // the body went as the worker sent it
				}
				a = costing.Price(p.set, p.route, est, u)
				a.Cost = min(a.Cost, limiter.MaxMoney-1) // what a store books; prices of a policy could exceed it
				e.Actual, e.Used = a.Cost, used(a)
				if c.rewritten {
					c.savings = savings(p.set, p.opt, p.est, u)
				}
				outcome, reason = SettledActual, settleUsage
			case !complete:
				reason = settleIncomplete
			}
		}
	}
	if p != nil && p.lead != nil {
		c.endLead(ctx, p, e)
	}
	if p != nil && p.failOpen != nil {
		// Let through fail open: the store holds nothing to end. What the
		// call spent goes to the fail-open journal, the upstream's signal
		// to the store (if it answers now).
		spent := e.Outcome.Spend(p.failOpen.cost, e.Actual)
		c.s.failOpen.settled(p.failOpen, spent)
		logSettled(c.s.dlog, c.s.clock, p, c.reservation, string(e.Outcome), spent, u)
		if len(e.Throttles) > 0 {
			if _, err := c.s.store.Throttle(ctx, e.Throttles, time.Time{}); err == nil {
				c.applied(ctx, e.Throttles)
			}
		}
		if outcome == SettledActual {
			c.s.observe(p, u, a)
		}
		return c.count(outcome, reason)
	}
	if e.Outcome == "" { // nothing to end: only the upstream's signal to apply
		if _, err := c.s.store.Throttle(ctx, e.Throttles, time.Time{}); err == nil {
			c.applied(ctx, e.Throttles)
		}
		return c.count(outcome, reason)
	}
	c.withSavings(ctx, &e)
	if p != nil {
		in, out := p.est.InputTokens, p.est.OutputTokens
		if outcome == SettledActual {
			in, out = u.InputTokens, u.OutputTokens
		}
		e.Record = callRecord(c.s.clock.Now(), p, in, out, e.Booked())
	}
	st, err := c.s.store.Finish(ctx, e)
	if err != nil && !errors.Is(err, limiter.ErrUnknownReservation) {
		c.s.m.settleErrors.WithLabelValues("ledger").Inc()
		c.s.log.LogAttrs(ctx, slog.LevelWarn, "settling failed; the reservation lapses at its estimate",
			slog.String("reservation", c.reservation), slog.Any("error", err))
		return c.count(SettledFailed, reason)
	}
	c.applied(ctx, e.Throttles) // an unknown reservation's throttles are applied all the same
	if err == nil && !st.Repeat {
		tier := noTier
		if p != nil {
			tier = p.tier
		}
		c.s.m.savings.booked(tier, e.Booked())
	}
	if err == nil && !st.Repeat {
		logSettled(c.s.dlog, c.s.clock, p, c.reservation, string(e.Outcome), st.Spent, u)
	}
	if p == nil {
		if err != nil || st.Repeat { // settled already (the API), or lapsed
			return c.count(SettledUntracked, settleUnknown)
		}
		c.s.kickAll()
		return c.count(outcome, reason)
	}
	if outcome == SettledActual {
		c.s.observe(p, u, a)
		c.s.book.note(c.s.clock.Now(), p, u, a, c.rewritten)
	}
	c.s.kickSettled(p) // its slot, and any units it gave back, may let a held call go
	return c.count(outcome, reason)
}

// recover fills e for a call whose admission this process does not
// remember: released when the upstream refused it or it was free; settled
// at its measured price when its route prices by the model and its
// response reported usage; else left to lapse at its estimate (untracked).
func (c *Call) recover(e *limiter.Ending) (SettleOutcome, string) {
	switch {
	case c.route == nil:
	case c.status >= http.StatusBadRequest:
		e.Outcome, e.Used = limiter.OutcomeReleased, unused(c.route)
		return SettledReleased, settleUpstream
	case c.method == http.MethodGet || c.method == http.MethodHead || c.method == http.MethodOptions:
		e.Outcome, e.Used = limiter.OutcomeReleased, unused(c.route)
		return SettledReleased, settleFree
	case c.reader != nil && c.route.LLM():
		if u, found, complete := c.reader.Usage(); found && complete {
			u = c.bounded(u)
			est := costing.Estimate{Pools: make([]costing.PoolCost, len(c.route.Pools))}
			for i, p := range c.route.Pools {
				est.Pools[i] = costing.PoolCost{Pool: p}
			}
			a := costing.Price(c.set, c.route, est, u)
			a.Cost = min(a.Cost, limiter.MaxMoney-1)
			if a.Cost > 0 || u.Tokens() == 0 {
				e.Outcome, e.Actual, e.Used = limiter.OutcomeSettled, a.Cost, used(a)
				return SettledActual, settleUsage
			}
		}
	}
	return SettledUntracked, settleUnknown
}

// unused names every pool of route whose units a call that consumed
// nothing gets back: all but request pools (the request did reach the
// upstream).
func unused(route *policy.Route) []limiter.PoolUse {
	var out []limiter.PoolUse
	for _, p := range route.Pools {
		if p.Unit != policy.UnitRequest {
			out = append(out, limiter.PoolUse{Pool: p.Name})
		}
	}
	return out
}

// used names the pools whose units the response measured, with what it
// measured (the others keep their charge).
func used(a costing.Actual) []limiter.PoolUse {
	var out []limiter.PoolUse
	for i, pc := range a.Pools {
		if a.Measured[i] && pc.Pool.Unit != policy.UnitRequest {
			out = append(out, limiter.PoolUse{Pool: pc.Pool.Name, Units: min(max(pc.Units, 0), maxUnits)})
		}
	}
	return out
}

// maxUnits bounds what one call is said to have used of a pool (the
// limiter's range).
const maxUnits = 1_000_000_000

func (c *Call) count(o SettleOutcome, reason string) SettleOutcome {
	c.s.m.settled.WithLabelValues(string(o), reason).Inc()
	return o
}

// kickSettled tells the lines of a settled call's resources that capacity
// may be back.
func (s *settler) kickSettled(p *pendingCall) {
	lines := []string{slotLine(p.client)}
	for _, t := range p.charged {
		lines = appendLines(lines, t.Key) // a reserved part's refund may let a borrower go
	}
	s.kick(lines...)
}

// observe feeds a settled call to the metrics and the adaptive learner.
func (s *settler) observe(p *pendingCall, u costing.Usage, a costing.Actual) {
	model := p.est.PriceEntry
	if model == "" {
		model = "unpriced"
	}
	m := s.m
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
	s.learner.Observe(costing.LearnKey(p.route, p.est.PriceEntry), p.est.Cost, a.Cost, p.set.Defaults.Adaptive.Window)
}

// dollars converts nano-dollars for exposition.
func dollars(m policy.Money) float64 { return float64(m) / float64(policy.NanosPerDollar) }

// bounded holds a response's usage to costing's bounds, counting and
// logging a response that claimed more.
func (c *Call) bounded(u costing.Usage) costing.Usage {
	b, cut := u.Bounded()
	if cut {
		c.s.m.usageCapped.WithLabelValues(c.route.Name).Inc()
		c.s.log.LogAttrs(context.Background(), slog.LevelWarn, "response usage beyond bounds; capped",
			slog.String("route", c.route.Name), slog.String("reservation", c.reservation),
			slog.Int64("input_tokens", u.InputTokens), slog.Int64("output_tokens", u.OutputTokens),
			slog.Int64("segments", u.Segments), slog.Int64("price_nanos", int64(u.Price)))
	}
	return b
}

// withDedicated adds, for each pool used names, every dedicated pool that
// replaces it, with the same use: a call recovered after a restart is
// known by its route alone, which names the shared pool, while a client
// with a dedicated pool was charged there (refunds go by pool name, and
// only to charges the store recorded, so naming a pool the call did not
// charge changes nothing).
func withDedicated(set *policy.Set, used []limiter.PoolUse) []limiter.PoolUse {
	if set == nil || len(used) == 0 {
		return used
	}
	n := len(used)
	for _, p := range set.Pools {
		d := p.Dedicated
		if d == nil || d.InsteadOf == nil {
			continue
		}
		for _, u := range used[:n] {
			if u.Pool == d.InsteadOf.Name && len(used) < limiter.MaxCharges {
				used = append(used, limiter.PoolUse{Pool: p.Name, Units: u.Units})
			}
		}
	}
	return used
}
