package admission

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	"github.com/tollgate/tollgate/limiter"
	"github.com/tollgate/tollgate/limiter/queue"
	"github.com/tollgate/tollgate/policy"
)

// The watch keeps what the alerts and their gauges read: each pool's fill,
// each watched client's budget and forecast, the hold queue and the
// upstream's answers. Refresh reads the store on a cadence (the server's
// background loop, and GET /admin/alerts); scrapes and evaluations read
// the last Snapshot, so nothing here is on a call's path. In a fleet the
// store is the shared one: pools and budgets are the fleet's.

// PoolLevel is one pool's fill.
type PoolLevel struct {
	Pool      string
	Remaining int64 // whole units left
	Capacity  int64
}

// BudgetLevel is one watched client's own budget this period.
type BudgetLevel struct {
	Client   string
	Limit    policy.Money
	Spent    policy.Money
	Reserved policy.Money
	Forecast Forecast
}

// Used is what the budget has spent and holds for calls in flight.
func (b BudgetLevel) Used() policy.Money { return b.Spent + b.Reserved }

// QueueLevel is one pool's (or concurrency's) held calls of one class in
// this process.
type QueueLevel struct {
	Pool, Class string
	Depth       int
	Oldest      time.Duration
}

// UpstreamLevel counts the answers of calls Tollgate settled over Window:
// Errors are those that were 5xx or never came (the ext_proc stream ended
// first: the upstream timed out, reset or the worker went away).
type UpstreamLevel struct {
	Window            time.Duration
	Responses, Errors int64
}

// Snapshot is the standing at one refresh.
type Snapshot struct {
	At        time.Time
	Period    string
	PeriodEnd time.Time
	Pools     []PoolLevel
	Budgets   []BudgetLevel
	Queue     []QueueLevel
	Held      int // every call held here, parked deferred calls too
	Upstream  UpstreamLevel
	// StarvationAlert is the policy's queue.starvation_alert.
	StarvationAlert time.Duration
	Thresholds      policy.Alerts
}

// upstreamCount is the counters of settled answers at one instant.
type upstreamCount struct {
	at                time.Time
	responses, errors int64
}

// watch is the Service's standing and the samples behind its forecasts
// and rates. Safe for concurrent use.
type watch struct {
	responses, errors atomic.Int64 // settled calls' answers, and the 5xx or missing ones

	refreshMu sync.Mutex // one refresh at a time
	mu        sync.Mutex
	snap      Snapshot
	rings     map[string]*spendRing
	upstream  []upstreamCount
	since     map[string]time.Time // alert key → first seen firing
	alerts    []Alert
}

// newWatch starts counting upstream answers from zero at start.
func newWatch(start time.Time) *watch {
	return &watch{rings: map[string]*spendRing{}, since: map[string]time.Time{}, upstream: []upstreamCount{{at: start}}}
}

// answered counts a settled call's upstream status (0: none came).
func (w *watch) answered(status int) {
	w.responses.Add(1)
	if status == 0 || status >= 500 {
		w.errors.Add(1)
	}
}

// watchedClients are the clients whose budgets are watched: those the
// policy names with a capped budget, in name order, at most max.
func watchedClients(set *policy.Set, max int) []*policy.Client {
	ids := make([]string, 0, len(set.Clients))
	for id, c := range set.Clients {
		if lim, ok := c.Budget(); ok && lim >= 0 {
			ids = append(ids, id)
		}
	}
	slices.Sort(ids)
	out := make([]*policy.Client, 0, min(len(ids), max))
	for _, id := range ids[:min(len(ids), max)] {
		out = append(out, set.Clients[id])
	}
	return out
}

// Refresh reads the store's pools and the watched clients' budgets (one
// round trip for the pools, one per client), the hold queue and the
// upstream counters; it samples spend for forecasts and re-evaluates the
// alerts. A part the store could not read keeps its last value, and the
// error says which.
func (s *Service) Refresh(ctx context.Context) error {
	w := s.watch
	w.refreshMu.Lock()
	defer w.refreshMu.Unlock()
	set := s.policies.Policy()
	th := set.Alerts.WithDefaults()
	now := s.clock.Now()
	w.mu.Lock()
	prev := w.snap
	w.mu.Unlock()
	snap := Snapshot{At: now, Period: set.Defaults.Period(now), PeriodEnd: set.Defaults.PeriodEnd(now),
		StarvationAlert: set.Queue.StarvationAlert, Thresholds: th}
	var errs []error

	pools, err := s.readPools(ctx, set)
	if err != nil {
		errs = append(errs, fmt.Errorf("pools: %w", err))
		pools = prev.Pools
	}
	snap.Pools = pools

	prevBudget := map[string]BudgetLevel{}
	for _, b := range prev.Budgets {
		prevBudget[b.Client] = b
	}
	for _, c := range watchedClients(set, th.BudgetClients) {
		lim, _ := c.Budget()
		u, err := s.store.Usage(ctx, snap.Period, []limiter.Budget{{Owner: c.ID, Limit: lim}}, time.Time{})
		if err != nil || len(u.Budgets) == 0 {
			errs = append(errs, fmt.Errorf("budget of %s: %w", c.ID, errors.Join(err, ctx.Err())))
			if b, ok := prevBudget[c.ID]; ok {
				snap.Budgets = append(snap.Budgets, b)
			}
			continue
		}
		b := BudgetLevel{Client: c.ID, Limit: lim, Spent: u.Budgets[0].Spent, Reserved: u.Budgets[0].Reserved}
		b.Forecast = w.sample(c.ID, snap.Period, spendSample{at: now, used: b.Used()}, lim, snap.PeriodEnd, th.ForecastWindow)
		snap.Budgets = append(snap.Budgets, b)
	}

	st := s.queue.Status()
	snap.Queue, snap.Held = queueLevels(st.Lines), st.Total
	if st.Parked > 0 {
		snap.Queue = append(snap.Queue, QueueLevel{Pool: "off_peak", Class: policy.Deferred.String(), Depth: st.Parked})
	}
	snap.Upstream = w.upstreamOver(now, th.UpstreamWindow)

	w.mu.Lock()
	w.forget(snap.Budgets)
	w.snap = snap
	w.alerts, w.since = Evaluate(snap, w.since)
	w.mu.Unlock()
	return errors.Join(errs...)
}

// readPools reads every pool's bucket for the gauges and alerts.
func (s *Service) readPools(ctx context.Context, set *policy.Set) ([]PoolLevel, error) {
	names, states, err := s.peekPools(ctx, set)
	if err != nil {
		return nil, err
	}
	out := make([]PoolLevel, len(names))
	for i, b := range states {
		out[i] = PoolLevel{Pool: names[i], Remaining: b.Remaining, Capacity: b.Limit.Capacity}
	}
	return out, nil
}

// peekPools reads every pool's level, pools sorted by name, with the
// store's Peek: nothing is charged, advanced or counted as a decision (in a
// fleet it is the shared store's level, and an error in outage mode). A
// pool split by reservations is read part by part (each its own bucket,
// with its own shape) and reported as their sum, at the pool's capacity.
func (s *Service) peekPools(ctx context.Context, set *policy.Set) ([]string, []limiter.BucketState, error) {
	names := make([]string, 0, len(set.Pools))
	for n := range set.Pools {
		names = append(names, n)
	}
	slices.Sort(names)
	var takes []limiter.Take
	var owner []int // the pool of each take
	for i, n := range names {
		p := set.Pools[n]
		takes = append(takes, limiter.Take{Key: limiter.Key{Pool: n}, Limit: limiter.Limit(p.SharedLimit())})
		owner = append(owner, i)
		for _, r := range p.Reserved {
			for _, pt := range []*policy.Part{&r.Kept, r.Lent} {
				if pt != nil {
					takes = append(takes, limiter.Take{Key: limiter.Key{Pool: n, Client: pt.Key}, Limit: limiter.Limit(pt.Limit)})
					owner = append(owner, i)
				}
			}
		}
	}
	states := make([]limiter.BucketState, len(names))
	for i, n := range names {
		states[i].Key, states[i].Limit = limiter.Key{Pool: n}, limiter.Limit(set.Pools[n].Limit)
	}
	for start := 0; start < len(takes); start += limiter.MaxCharges {
		batch := takes[start:min(start+limiter.MaxCharges, len(takes))]
		d, err := s.store.Peek(ctx, limiter.Request{Takes: batch})
		if err != nil {
			return nil, nil, err
		}
		if len(d.Buckets) != len(batch) {
			return nil, nil, fmt.Errorf("the store reported %d buckets for %d pools", len(d.Buckets), len(batch))
		}
		for j, b := range d.Buckets {
			states[owner[start+j]].Remaining += b.Remaining
		}
	}
	return names, states, nil
}

func queueLevels(lines []queue.LineStatus) []QueueLevel {
	type k struct{ pool, class string }
	idx := map[k]int{}
	var out []QueueLevel
	for _, l := range lines {
		pool, _ := LineLabel(l.Key)
		for class, cs := range l.Classes {
			i, ok := idx[k{pool, class}]
			if !ok {
				i = len(out)
				idx[k{pool, class}] = i
				out = append(out, QueueLevel{Pool: pool, Class: class})
			}
			out[i].Depth += cs.Depth
			out[i].Oldest = max(out[i].Oldest, cs.OldestWait)
		}
	}
	slices.SortFunc(out, func(a, b QueueLevel) int {
		return cmp.Or(cmp.Compare(a.Pool, b.Pool), cmp.Compare(a.Class, b.Class))
	})
	return out
}

// sample adds a client's use to its ring and projects it.
func (w *watch) sample(client, period string, s spendSample, limit policy.Money, periodEnd time.Time, window time.Duration) Forecast {
	w.mu.Lock()
	defer w.mu.Unlock()
	r := w.rings[client]
	if r == nil {
		r = &spendRing{}
		w.rings[client] = r
	}
	r.add(period, s, window)
	return project(r.samples, limit, periodEnd, window)
}

// forget drops the rings of clients no longer watched (the policy
// changed). w.mu is held.
func (w *watch) forget(watched []BudgetLevel) {
	if len(w.rings) <= len(watched) {
		return
	}
	keep := map[string]bool{}
	for _, b := range watched {
		keep[b.Client] = true
	}
	for id := range w.rings {
		if !keep[id] {
			delete(w.rings, id)
		}
	}
}

// upstreamOver samples the upstream counters and returns their increase
// over window (over what was sampled, when the samples span less).
func (w *watch) upstreamOver(now time.Time, window time.Duration) UpstreamLevel {
	c := upstreamCount{at: now, responses: w.responses.Load(), errors: w.errors.Load()}
	w.mu.Lock()
	defer w.mu.Unlock()
	cut := 0
	for cut < len(w.upstream) && now.Sub(w.upstream[cut].at) > window {
		cut++
	}
	w.upstream = append(w.upstream[:0], w.upstream[cut:]...)
	if n := len(w.upstream); n < 2 || now.Sub(w.upstream[n-1].at) >= window/ringSize {
		if len(w.upstream) == ringSize {
			w.upstream = append(w.upstream[:0], w.upstream[1:]...)
		}
		w.upstream = append(w.upstream, c)
	} else {
		w.upstream[n-1] = c
	}
	first := w.upstream[0]
	return UpstreamLevel{Window: now.Sub(first.at), Responses: c.responses - first.responses, Errors: c.errors - first.errors}
}

// Snapshot is the standing at the last Refresh (the zero Snapshot before
// the first).
func (s *Service) Snapshot() Snapshot {
	s.watch.mu.Lock()
	defer s.watch.mu.Unlock()
	return s.watch.snap
}

// Alerts are the alerts firing at the last Refresh, with when each began.
func (s *Service) Alerts() []Alert {
	s.watch.mu.Lock()
	defer s.watch.mu.Unlock()
	return slices.Clone(s.watch.alerts)
}

// forecastOf projects a client's budget from its ring, with a sample of
// used taken now; ok is false for a client that is not watched.
func (s *Service) forecastOf(client, period string, used, limit policy.Money, periodEnd time.Time) (Forecast, bool) {
	w := s.watch
	window := s.policies.Policy().Alerts.WithDefaults().ForecastWindow
	w.mu.Lock()
	_, ok := w.rings[client]
	w.mu.Unlock()
	if !ok {
		return Forecast{}, false
	}
	return w.sample(client, period, spendSample{at: s.clock.Now(), used: used}, limit, periodEnd, window), true
}
