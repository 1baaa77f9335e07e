package decisionlog

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"runtime"
	"slices"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/tollgate/tollgate/admission"
	"github.com/tollgate/tollgate/internal/fakeclock"
	"github.com/tollgate/tollgate/limiter/memstore"
	"github.com/tollgate/tollgate/policy"
)

// Replaying: each decision of the log is made again, in order, by an
// admission.Service of its own under the policy given, on the memory
// store, driven by a fake clock that reads each line's time. A held call
// waits in the real hold queue, on that clock: the clock steps from timer
// to timer, and the replay moves on only once every call in flight has
// either been answered or sits in the queue, and no line of the queue is
// letting waiters go (quiescence). So a log and a policy always give the
// same answers.

// quiesceLimit bounds one wait for quiescence; reaching it is a bug (a
// call that neither ends nor waits), reported as an error.
const quiesceLimit = 30 * time.Second

// drainLimit bounds how far past the last line the clock runs to let held
// calls end.
const drainLimit = 24 * time.Hour

// Call is one decision made again.
type Call struct {
	Entry   *Entry
	Verdict Outcome
	// Spend is what the call cost in the replay: its settle's actual (or
	// the recorded usage priced for the model it went with), its estimate
	// when the log has no settle (the reservation lapses at it), zero when
	// it was refused or answered from the cache.
	Spend   policy.Money
	Settled bool
}

// Outcome is what a replay keeps of a Verdict (a log of millions of calls
// need not keep millions of verdicts).
type Outcome struct {
	Allowed     bool
	Outcome     admission.Outcome
	Reason      string
	Tier        string
	Route       string
	Reservation string
	Held        bool          // it waited in the hold queue
	Wait        time.Duration // for so long
	Downgraded  bool
	Model       string // the model it went with
	Estimate    policy.Money
}

func outcomeOf(v *admission.Verdict) Outcome {
	return Outcome{Allowed: v.Allowed, Outcome: v.Outcome, Reason: v.Reason, Tier: v.Tier, Route: v.Route,
		Reservation: v.Reservation, Held: v.QueueID != "", Wait: v.QueueWait, Downgraded: v.Optimized != nil && v.Optimized.DowngradedFrom != "",
		Model: v.Estimate.Model, Estimate: v.Estimate.Cost}
}

// Run is one policy's replay of a log.
type Run struct {
	Calls []*Call // in the log's order of decisions
}

type simCall struct {
	c       *Call
	id      string             // the replay's request id (line-N)
	req     *admission.Request // the call as rebuilt
	key     string             // its key in sim.byRes
	done    chan admission.Verdict
	ended   bool
	pending *Entry // a settle that came while the call was held
}

type sim struct {
	ctx     context.Context
	set     *policy.Set
	clock   *fakeclock.Clock
	svc     *admission.Service
	byRes   map[string]*simCall // by the recorded reservation (or request id)
	waiting []*simCall          // calls not yet answered
	spent   *spentBook
	calls   sync.WaitGroup // the Decide goroutines
}

// Replay makes every decision of lg again under set and settles what the
// log settled.
func Replay(ctx context.Context, lg *Log, set *policy.Set) (*Run, error) {
	events := order(lg.Entries)
	start := time.Unix(0, 0).UTC()
	if len(events) > 0 {
		start = arrival(events[0])
	}
	clock := fakeclock.New(start)
	cfg := memstore.DefaultConfig()
	cfg.Clock, cfg.SweepInterval = clock, 0
	st, err := memstore.New(cfg)
	if err != nil {
		return nil, fmt.Errorf("replay: %w", err)
	}
	spent := &spentBook{m: map[string]policy.Money{}}
	settle := admission.SettleDeferred
	if lg.Settlement == "immediate" { // concurrency caps are not enforced then: replay as served
		settle = admission.SettleImmediate
	}
	svc, err := admission.New(admission.Config{Settlement: settle},
		admission.Deps{Policies: admission.StaticPolicy{Set: set}, Store: st, Registerer: prometheus.NewRegistry(), Clock: clock,
			DecisionLog: spent})
	if err != nil {
		return nil, errors.Join(fmt.Errorf("replay: %w", err), st.Close())
	}
	s := &sim{ctx: ctx, set: set, clock: clock, svc: svc, byRes: map[string]*simCall{}, spent: spent}
	run := &Run{}
	err = s.play(events, run)
	if err == nil {
		err = s.finish(run)
	}
	err = errors.Join(err, svc.Close()) // answers the calls still held
	s.calls.Wait()
	err = errors.Join(err, st.Close())
	if err != nil {
		return nil, err
	}
	return run, nil
}

// arrival is when e's call arrived: a decision is logged when it ends, a
// held call after its wait.
func arrival(e *Entry) time.Time {
	if e.Kind == KindDecision {
		return e.Time.Add(-e.Wait)
	}
	return e.Time
}

// order sorts the log's lines by when they happened, keeping file order
// between lines of the same instant.
func order(entries []Entry) []*Entry {
	out := make([]*Entry, len(entries))
	for i := range entries {
		out[i] = &entries[i]
	}
	slices.SortStableFunc(out, func(a, b *Entry) int { return arrival(a).Compare(arrival(b)) })
	return out
}

func (s *sim) play(events []*Entry, run *Run) error {
	for _, e := range events {
		if err := s.advance(arrival(e)); err != nil {
			return err
		}
		switch e.Kind {
		case KindDecision:
			sc := &simCall{c: &Call{Entry: e}, id: fmt.Sprintf("line-%d", e.N), done: make(chan admission.Verdict, 1)}
			run.Calls = append(run.Calls, sc.c)
			if sc.key = cmp.Or(e.Reservation, e.RequestID); sc.key != "" {
				s.byRes[sc.key] = sc
			}
			s.waiting = append(s.waiting, sc)
			r := request(e, s.set, s.svc.Estimator())
			sc.req = r
			s.calls.Go(func() { sc.done <- s.svc.Decide(s.ctx, r) })
		case KindSettle:
			sc := s.byRes[cmp.Or(e.Reservation, e.RequestID)]
			if sc == nil {
				sc = s.byRes[e.RequestID]
			}
			switch {
			case sc == nil || sc.c.Settled:
			case !sc.ended:
				sc.pending = e
			default:
				s.settle(sc, e)
			}
		}
		if err := s.quiesce(); err != nil {
			return fmt.Errorf("replay: line %d: %w", e.N, err)
		}
	}
	return nil
}

// advance moves the clock to t, stopping at every timer due before it.
func (s *sim) advance(t time.Time) error {
	for {
		next, ok := s.clock.Next()
		if !ok || next.After(t) {
			break
		}
		s.clock.Step(max(next.Sub(s.clock.Now()), 0))
		if err := s.quiesce(); err != nil {
			return err
		}
	}
	if d := t.Sub(s.clock.Now()); d > 0 {
		s.clock.Step(d)
	}
	// Reservations the log never settled lapse at their TTL, as the
	// server's expiry loop would have them (their slots come back).
	if _, err := s.svc.Expire(s.ctx, 1<<20); err != nil {
		return fmt.Errorf("expire: %w", err)
	}
	return s.quiesce()
}

// finish lets held calls end (the clock runs on, at most drainLimit) and
// books every admitted call the log never settled at its estimate.
func (s *sim) finish(run *Run) error {
	end := s.clock.Now().Add(drainLimit)
	for len(s.waiting) > 0 {
		next, ok := s.clock.Next()
		if !ok || next.After(end) {
			break
		}
		if err := s.advance(next); err != nil {
			return err
		}
	}
	for _, sc := range s.waiting { // still held a day past the log's end
		sc.c.Verdict = Outcome{Outcome: admission.OutcomeDenied, Reason: ReasonReplayEnded, Held: true}
	}
	for _, c := range run.Calls {
		if c.Verdict.Allowed && !c.Settled {
			c.Spend = c.Verdict.Estimate
		}
	}
	return nil
}

// ReasonReplayEnded refuses, in a replay, a call still held a day after
// the log's last line.
const ReasonReplayEnded = "replay_ended"

// quiesce waits until every call in flight is answered or held, and the
// queue is letting no one go; it settles calls whose settle came while
// they were held, as soon as they are answered. Only the replay's calls
// are in its queue, so "every call not answered is held" is a count.
func (s *sim) quiesce() error {
	deadline := time.Now().Add(quiesceLimit)
	for spins := 0; ; spins++ {
		progress := s.collect()
		if !progress && s.svc.QueueBusy() == 0 && s.svc.QueueLen() == len(s.waiting) && s.svc.QueueBusy() == 0 {
			return nil
		}
		if progress {
			continue
		}
		if spins < 1000 {
			runtime.Gosched()
			continue
		}
		if time.Now().After(deadline) {
			return errors.New("the replay did not come to rest (a call neither answered nor held)")
		}
		time.Sleep(10 * time.Microsecond)
	}
}

// collect takes the answers that came, and reports whether any did.
func (s *sim) collect() bool {
	progress := false
	kept := s.waiting[:0]
	for _, sc := range s.waiting {
		select {
		case v := <-sc.done:
			sc.c.Verdict, sc.ended, progress = outcomeOf(&v), true, true
			if v.Outcome == admission.OutcomeCached {
				sc.c.Spend = 0
			}
			if sc.pending != nil {
				s.settle(sc, sc.pending)
				sc.pending = nil
			}
		default:
			kept = append(kept, sc)
		}
	}
	clear(s.waiting[len(kept):])
	s.waiting = kept
	return progress
}

// settle books e for sc's call as the log's settle was booked. A settle
// that reported usage goes the way ext_proc settles: the (rebuilt) body
// went out, a response with that usage came back, and admission prices
// the usage for the model the call went with (so a new downgrade costs
// the cheaper model's price); else the recorded actual is settled (or the
// call released) as the JSON API does.
func (s *sim) settle(sc *simCall, e *Entry) {
	v := &sc.c.Verdict
	if !v.Allowed || v.Reservation == "" {
		return
	}
	sc.c.Settled = true
	delete(s.byRes, sc.key)
	p := policy.Provider(sc.c.Entry.Provider)
	switch {
	case e.Outcome == "released":
		_, _ = s.svc.Release(s.ctx, v.Reservation) // an unknown reservation was released already
	case (e.InputTokens > 0 || e.OutputTokens > 0) && (p == policy.ProviderOpenAI || p == policy.ProviderAnthropic):
		c := s.svc.Follow(v.Reservation, v.Route, sc.req.Method)
		c.RequestBody(sc.req.Body)
		c.ResponseHeaders(s.ctx, 200, map[string]string{"content-type": "application/json"})
		c.ResponseBody(usageBody(p, e.InputTokens, e.OutputTokens), true)
		c.ResponseEnded()
		c.End(s.ctx)
	default:
		if _, err := s.svc.Settle(s.ctx, v.Reservation, e.Actual); err != nil { // beyond its bound: at its estimate
			_, _ = s.svc.Settle(s.ctx, v.Reservation, v.Estimate)
		}
	}
	sc.c.Spend = s.spent.take(v.Reservation)
}

// spentBook is the replay's own decision log: what each settle booked.
type spentBook struct {
	mu sync.Mutex
	m  map[string]policy.Money
}

func (b *spentBook) Decision(admission.DecisionRecord) {}

func (b *spentBook) Settled(r admission.SettleRecord) {
	b.mu.Lock()
	defer b.mu.Unlock()
	b.m[r.Reservation] = r.Actual
}

func (b *spentBook) take(id string) policy.Money {
	b.mu.Lock()
	defer b.mu.Unlock()
	m := b.m[id]
	delete(b.m, id)
	return m
}
