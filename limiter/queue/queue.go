// Package queue is Tollgate's hold queue: calls that cannot be admitted now
// wait in a line per blocking resource (a pool's bucket, a client's bucket,
// a client's concurrency slots), and the line lets them go, best score
// first, when the resource can take them.
//
// A line tries its best waiter only when there is reason to: a waiter
// arrives, the resource's own refill time comes (the limiter said how long),
// capacity is handed back (Kick), or a waiter leaves. It never polls. The
// attempt is made by the line on the waiter's behalf, so what it reserves is
// the waiter's at once; should the waiter have gone meanwhile, the line gives
// it back (Undo) before trying the next.
//
// Score, 0 to 100 points: the client tier's points (0–40) and the class's
// urgency (0–30) given by the caller; time waited (0–20, growing linearly to
// full at the policy's wait horizon, so that nothing starves); fairness
// (0–10, lower for a client that had a larger share of the resource over
// the policy's fairness window). Ties go to the earliest arrival.
package queue

import (
	"context"
	"errors"
	"slices"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	"github.com/tollgate/tollgate/policy"
)

// Clock tells the time and calls back later. AfterFunc calls f in its own
// goroutine after d and returns a function that cancels it (reporting
// whether it was still pending), as time.AfterFunc's Timer.Stop does.
type Clock interface {
	Now() time.Time
	AfterFunc(d time.Duration, f func()) (stop func() bool)
}

// SystemClock is the wall clock.
type SystemClock struct{}

// Now returns time.Now().
func (SystemClock) Now() time.Time { return time.Now() }

// AfterFunc is time.AfterFunc.
func (SystemClock) AfterFunc(d time.Duration, f func()) func() bool { return time.AfterFunc(d, f).Stop }

// Outcome says how a wait ended.
type Outcome string

// Outcomes of a wait; they are also the metric's outcome label.
const (
	Granted   Outcome = "granted"   // the attempt reserved for the waiter
	Denied    Outcome = "denied"    // an attempt refused it for good (a budget, a cost that never fits)
	Timeout   Outcome = "timeout"   // its deadline came first, or could not be met
	Cancelled Outcome = "cancelled" // the caller went away
	Removed   Outcome = "removed"   // Remove took it out
	Full      Outcome = "full"      // its class's share of the line was full
	Closed    Outcome = "closed"    // the queue shut down
)

// Attempt is a line's try at admitting a waiter, as the waiter's Try
// reports it.
type Attempt[V any] struct {
	// Granted: the resources are reserved, Value says how.
	Granted bool
	// Final: refused for good; Value says why.
	Final bool
	// Otherwise the waiter must wait in line Key (its current one, or the
	// one of whatever blocked it now) for RetryAfter (zero: until a Kick).
	Key        string
	RetryAfter time.Duration
	Value      V
}

// Waiter is one call to hold. The caller fills it before Submit.
type Waiter[V any] struct {
	// ID is the caller's name for the call (Envoy's request id). Several
	// waiters may share one; each also gets a unique queue id (QueueID).
	ID     string
	Client string
	Class  policy.Class
	// Points is the caller's share of the score: tier points plus class
	// urgency, 0 to 70.
	Points int
	// Units is what the call takes from the resource, for fairness.
	Units int64
	// Deadline is when it gives up.
	Deadline time.Time
	// NotBefore holds the waiter out of its line until then (a deferred
	// call waiting for the off-peak window).
	NotBefore time.Time
	// MaxDepth is how many waiters of its class a line may hold.
	MaxDepth int
	// Try attempts the admission. It may block for one store round trip.
	Try func(ctx context.Context) Attempt[V]
	// Undo gives back what a grant reserved, for a waiter that has gone.
	Undo func(ctx context.Context, v V)

	// set by the queue
	q        *Queue[V]
	qid      string // unique in this queue
	key      string // the line it was submitted to
	seq      uint64
	arrival  int64 // Unix µs
	static   int   // Points + fairness
	line     *line[V]
	parkKey  string // the line a parked waiter joins
	heapIdx  int    // in the line's growing or capped heap
	dlIdx    int    // in the line's deadline heap, or the parked heap
	capped   bool
	parked   bool
	alerted  bool
	state    int // waiting, done
	result   Result[V]
	done     func(Result[V])
	retryAt  time.Duration // the last attempt's wait
	lastTry  Attempt[V]
	hasTried bool
}

const (
	waiting = iota
	finished
)

// Result is how a wait ended.
type Result[V any] struct {
	Outcome Outcome
	// Value is the granting attempt's Value (Granted), the refusing one's
	// (Denied), or the last attempt's (otherwise, when there was one).
	Value V
	Tried bool
	// RetryAfter is the last attempt's wait, a hint for the refusal.
	RetryAfter time.Duration
	Waited     time.Duration
	// QueueID is the waiter's unique queue id ("" when it never queued).
	QueueID string
}

// Config configures a Queue.
type Config struct {
	Clock Clock
	// Policy returns the queue policy in force (horizon, fairness window,
	// starvation alert). A line keeps the horizon it was made with.
	Policy func() policy.Queue
	// OnStarving is called (without locks, at most once per waiter) when a
	// waiter has waited longer than the starvation alert.
	OnStarving func(id, key string, class policy.Class, waited time.Duration)
	// OnExit is called (without locks) when a waiter leaves, for metrics.
	OnExit func(key string, class policy.Class, o Outcome, waited time.Duration)
	// AttemptTimeout bounds each attempt.
	AttemptTimeout time.Duration
}

// Queue holds waiters in lines by key. It is safe for concurrent use.
type Queue[V any] struct {
	cfg Config

	mu      sync.Mutex
	lines   map[string]*line[V]
	byQID   map[string]*Waiter[V]   // every waiting waiter, by queue id
	byID    map[string][]*Waiter[V] // and by request id, in arrival order
	parked  parkHeap[V]
	unpark  func() bool // the timer for the earliest parked waiter
	parkAt  int64
	seq     uint64
	closed  bool
	stopped bool              // the scheduler is stopped: lines hold, nobody is let go
	usage   map[string]*usage // fairness, by line key
	running sync.WaitGroup    // dispatchers in flight
	busy    atomic.Int64      // and how many
}

// ErrClosed is returned by Submit after Close.
var ErrClosed = errors.New("queue: closed")

// New returns a Queue.
func New[V any](cfg Config) *Queue[V] {
	if cfg.Clock == nil {
		cfg.Clock = SystemClock{}
	}
	if cfg.Policy == nil {
		def := policy.DefaultQueue()
		cfg.Policy = func() policy.Queue { return def }
	}
	if cfg.AttemptTimeout <= 0 {
		cfg.AttemptTimeout = 2 * time.Second
	}
	return &Queue[V]{cfg: cfg, lines: map[string]*line[V]{},
		byQID: map[string]*Waiter[V]{}, byID: map[string][]*Waiter[V]{}, usage: map[string]*usage{}}
}

func micros(t time.Time) int64 { return t.UnixMicro() }

// Busy reports whether line key holds waiters: a new call for the same
// resource should queue behind them rather than try first.
func (q *Queue[V]) Busy(key string) bool {
	q.mu.Lock()
	defer q.mu.Unlock()
	l := q.lines[key]
	return l != nil && l.len() > 0
}

// Submit puts w in line key and arranges for done to be called, once and
// without locks, when its wait ends. A line whose class share is full
// refuses it at once (done with Full). Submit never blocks.
func (q *Queue[V]) Submit(key string, w *Waiter[V], done func(Result[V])) {
	now := q.cfg.Clock.Now()
	q.mu.Lock()
	if q.closed {
		q.mu.Unlock()
		done(Result[V]{Outcome: Closed})
		return
	}
	w.q, w.done, w.state, w.key = q, done, waiting, key
	q.seq++
	w.seq, w.arrival = q.seq, micros(now)
	w.qid = "q-" + strconv.FormatUint(w.seq, 10)
	q.byQID[w.qid] = w
	if w.ID != "" {
		q.byID[w.ID] = append(q.byID[w.ID], w)
	}
	if w.NotBefore.After(now) {
		w.parked, w.parkKey = true, key
		q.parked.push(w)
		q.armParkLocked(now)
		q.mu.Unlock()
		return
	}
	q.joinLocked(key, w, now)
}

// joinLocked puts w into line key; q.mu is held and is released.
func (q *Queue[V]) joinLocked(key string, w *Waiter[V], now time.Time) {
	l := q.lines[key]
	if l == nil {
		pol := q.cfg.Policy()
		l = newLine[V](key, pol.WaitHorizon)
		q.lines[key] = l
	}
	if w.MaxDepth <= 0 || l.depth[w.Class] >= w.MaxDepth {
		q.finishLocked(w, Result[V]{Outcome: Full}, now)
		q.mu.Unlock()
		q.exit(w)
		q.maybeDrop(key)
		return
	}
	w.static = w.Points + q.fairnessLocked(key, w.Client, now)
	l.add(w, micros(now))
	q.wakeLocked(l)
	q.mu.Unlock()
}

// maybeDrop forgets line key if it is empty and idle.
func (q *Queue[V]) maybeDrop(key string) {
	q.mu.Lock()
	defer q.mu.Unlock()
	if l := q.lines[key]; l != nil && l.len() == 0 && !l.running {
		l.stopTimer()
		delete(q.lines, key)
	}
}

// Wait submits w to line key and blocks until its wait ends or ctx does.
// When ctx ends first the waiter leaves the line at once, holding nothing;
// if a grant raced it, the result is Granted and the caller, whose ctx is
// done, must give the grant back itself.
func (q *Queue[V]) Wait(ctx context.Context, key string, w *Waiter[V]) Result[V] {
	ch := make(chan Result[V], 1)
	q.Submit(key, w, func(r Result[V]) { ch <- r })
	select {
	case r := <-ch:
		return r
	case <-ctx.Done():
		if q.leave(w, Cancelled) {
			return <-ch
		}
		return <-ch // finished meanwhile (granted, most likely)
	}
}

// lookupLocked finds a waiting waiter by its queue id, else the earliest
// waiting one with that request id.
func (q *Queue[V]) lookupLocked(id string) *Waiter[V] {
	if w := q.byQID[id]; w != nil {
		return w
	}
	if ws := q.byID[id]; len(ws) > 0 {
		return ws[0]
	}
	return nil
}

// Remove takes the waiter with id (a queue id, or a request id: then the
// earliest waiting call with it) out of its line; it is told Removed. It
// reports whether there was such a waiter.
func (q *Queue[V]) Remove(id string) bool {
	q.mu.Lock()
	w := q.lookupLocked(id)
	q.mu.Unlock()
	return w != nil && q.leave(w, Removed)
}

// leave ends w's wait with outcome o unless it has already ended; it
// reports whether it did.
func (q *Queue[V]) leave(w *Waiter[V], o Outcome) bool {
	now := q.cfg.Clock.Now()
	q.mu.Lock()
	if w.state != waiting {
		q.mu.Unlock()
		return false
	}
	l := w.line
	q.detachLocked(w)
	q.finishLocked(w, Result[V]{Outcome: o}, now)
	if l != nil {
		q.wakeLocked(l) // the next waiter may fit where w did not
	}
	q.mu.Unlock()
	q.exit(w)
	return true
}

// detachLocked takes w out of its line or the parked heap.
func (q *Queue[V]) detachLocked(w *Waiter[V]) {
	switch {
	case w.parked:
		q.parked.remove(w)
		w.parked = false
	case w.line != nil:
		w.line.remove(w)
		w.line = nil
	}
}

// finishLocked records w's result; exit delivers it.
func (q *Queue[V]) finishLocked(w *Waiter[V], r Result[V], now time.Time) {
	w.state = finished
	if w.hasTried && r.Outcome != Granted && r.Outcome != Denied {
		r.Value, r.Tried, r.RetryAfter = w.lastTry.Value, true, w.lastTry.RetryAfter
	}
	r.Waited = time.Duration(micros(now)-w.arrival) * time.Microsecond
	r.QueueID = w.qid
	w.result = r
	delete(q.byQID, w.qid)
	if ws := q.byID[w.ID]; len(ws) > 0 {
		if ws = slices.DeleteFunc(ws, func(o *Waiter[V]) bool { return o == w }); len(ws) == 0 {
			delete(q.byID, w.ID)
		} else {
			q.byID[w.ID] = ws
		}
	}
}

// exit hands w its result and reports it; no lock is held.
func (q *Queue[V]) exit(w *Waiter[V]) {
	if q.cfg.OnExit != nil {
		q.cfg.OnExit(w.lastKey(), w.Class, w.result.Outcome, w.result.Waited)
	}
	w.done(w.result)
}

// lastKey is the line w is in, or last was.
func (w *Waiter[V]) lastKey() string {
	switch {
	case w.line != nil:
		return w.line.key
	case w.hasTried && w.lastTry.Key != "":
		return w.lastTry.Key
	}
	return w.key
}

// Kick tells lines keys that capacity may be back: each tries its best
// waiter now.
func (q *Queue[V]) Kick(keys ...string) {
	q.mu.Lock()
	defer q.mu.Unlock()
	for _, k := range keys {
		if l := q.lines[k]; l != nil {
			q.wakeLocked(l)
		}
	}
}

// KickAll wakes every line (after reservations lapsed in bulk).
func (q *Queue[V]) KickAll() {
	q.mu.Lock()
	defer q.mu.Unlock()
	for _, l := range q.lines {
		q.wakeLocked(l)
	}
}

// wakeLocked makes l's dispatcher run (again).
func (q *Queue[V]) wakeLocked(l *line[V]) {
	if l.running {
		l.again = true
		return
	}
	if l.len() == 0 {
		return
	}
	l.running = true
	l.stopTimer()
	q.running.Add(1)
	q.busy.Add(1)
	go q.dispatch(l)
}

// Dispatching is how many lines are letting waiters go at this moment. A
// test on a fake clock waits for none before it moves the clock again.
func (q *Queue[V]) Dispatching() int { return int(q.busy.Load()) }

// dispatch lets l's waiters go, best first, until the best must wait.
func (q *Queue[V]) dispatch(l *line[V]) {
	defer q.running.Done()
	defer q.busy.Add(-1)
	for {
		now := q.cfg.Clock.Now()
		q.mu.Lock()
		l.again = false
		expired := q.expireLocked(l, now)
		starving := q.starvingLocked(l, now)
		w := l.best(micros(now))
		if w != nil && q.stopped && !q.closed {
			// Stopped: the line keeps holding; its timer still ends
			// waits at their deadline and raises starvation alerts.
			l.retryAt = 0
			q.armLocked(l, now)
			l.running = false
			q.mu.Unlock()
			q.report(expired, starving)
			return
		}
		if w == nil || q.closed {
			l.running = false
			if l.len() == 0 && q.lines[l.key] == l {
				l.stopTimer()
				delete(q.lines, l.key)
			}
			q.mu.Unlock()
			q.report(expired, starving)
			return
		}
		q.mu.Unlock()
		q.report(expired, starving)

		ctx, cancel := context.WithTimeout(context.Background(), q.cfg.AttemptTimeout)
		a := w.Try(ctx)
		cancel()

		now = q.cfg.Clock.Now()
		q.mu.Lock()
		if w.state != waiting { // it left while we tried: give back what we took for it
			q.mu.Unlock()
			if a.Granted && w.Undo != nil {
				uctx, cancel := context.WithTimeout(context.Background(), q.cfg.AttemptTimeout)
				w.Undo(uctx, a.Value)
				cancel()
			}
			continue
		}
		w.lastTry, w.hasTried = a, true
		switch {
		case a.Granted:
			q.detachLocked(w)
			q.recordLocked(l.key, w.Client, w.Units, now)
			q.finishLocked(w, Result[V]{Outcome: Granted, Value: a.Value, Tried: true}, now)
			q.mu.Unlock()
			q.exit(w)
		case a.Final:
			q.detachLocked(w)
			q.finishLocked(w, Result[V]{Outcome: Denied, Value: a.Value, Tried: true}, now)
			q.mu.Unlock()
			q.exit(w)
		case micros(now)+a.RetryAfter.Microseconds() > micros(w.Deadline):
			// Its turn cannot come before its deadline: tell it now rather
			// than let it hold the line.
			q.detachLocked(w)
			q.finishLocked(w, Result[V]{Outcome: Timeout}, now)
			q.mu.Unlock()
			q.exit(w)
		case a.Key != "" && a.Key != l.key:
			// Something else blocks it now (its own bucket, its slots):
			// it moves to that line, keeping its arrival.
			q.detachLocked(w)
			q.moveLocked(a.Key, w, now)
			q.mu.Unlock()
		default:
			// The best must wait: so does the line, until the resource's
			// refill time, a Kick, an arrival or a departure.
			if l.again {
				q.mu.Unlock()
				continue
			}
			l.retryAt = 0
			if a.RetryAfter > 0 {
				l.retryAt = micros(now) + a.RetryAfter.Microseconds()
			}
			q.armLocked(l, now)
			l.running = false
			q.mu.Unlock()
			return
		}
	}
}

// moveLocked puts a tried waiter into line key, keeping its arrival and
// score. q.mu is held.
func (q *Queue[V]) moveLocked(key string, w *Waiter[V], now time.Time) {
	l := q.lines[key]
	if l == nil {
		l = newLine[V](key, q.cfg.Policy().WaitHorizon)
		q.lines[key] = l
	}
	l.add(w, micros(now))
	q.wakeLocked(l)
}

// armLocked sets l's timer to the earliest of its retry time, its first
// deadline and its first starvation alert.
func (q *Queue[V]) armLocked(l *line[V], now time.Time) {
	at := l.retryAt
	if d := l.firstDeadline(); d > 0 && (at == 0 || d < at) {
		at = d
	}
	if a := q.firstAlertLocked(l); a > 0 && (at == 0 || a < at) {
		at = a
	}
	l.stopTimer()
	if at == 0 {
		return
	}
	wait := time.Duration(at-micros(now)) * time.Microsecond
	l.stop = q.cfg.Clock.AfterFunc(max(wait, 0), func() { q.Kick(l.key) })
}

// expireLocked ends the waiters of l whose deadline has passed.
func (q *Queue[V]) expireLocked(l *line[V], now time.Time) []*Waiter[V] {
	var out []*Waiter[V]
	for {
		w := l.deadlines.peek()
		if w == nil || w.Deadline.After(now) {
			return out
		}
		q.detachLocked(w)
		q.finishLocked(w, Result[V]{Outcome: Timeout}, now)
		out = append(out, w)
	}
}

// starvingLocked returns the waiters of l past the starvation alert that
// have not raised it yet.
func (q *Queue[V]) starvingLocked(l *line[V], now time.Time) []*Waiter[V] {
	limit := q.cfg.Policy().StarvationAlert
	if limit <= 0 || q.cfg.OnStarving == nil {
		return nil
	}
	var out []*Waiter[V]
	for i := l.head; i < len(l.arrivals); i++ { // oldest first: stop at the first that has not waited long
		w := l.arrivals[i]
		if w.line != l {
			continue
		}
		if time.Duration(micros(now)-w.arrival)*time.Microsecond < limit {
			break
		}
		if !w.alerted {
			w.alerted = true
			out = append(out, w)
		}
	}
	return out
}

// firstAlertLocked is when the earliest waiter of l that has not raised the
// starvation alert will, or 0.
func (q *Queue[V]) firstAlertLocked(l *line[V]) int64 {
	limit := q.cfg.Policy().StarvationAlert
	if limit <= 0 || q.cfg.OnStarving == nil {
		return 0
	}
	for i := l.head; i < len(l.arrivals); i++ {
		if w := l.arrivals[i]; w.line == l && !w.alerted {
			return w.arrival + limit.Microseconds()
		}
	}
	return 0
}

func (q *Queue[V]) report(expired, starving []*Waiter[V]) {
	now := q.cfg.Clock.Now()
	for _, w := range starving {
		q.cfg.OnStarving(w.ID, w.lastKey(), w.Class, time.Duration(micros(now)-w.arrival)*time.Microsecond)
	}
	for _, w := range expired {
		q.exit(w)
	}
}

// armParkLocked sets the timer for the earliest parked waiter.
func (q *Queue[V]) armParkLocked(now time.Time) {
	w := q.parked.peek()
	if w == nil {
		if q.unpark != nil {
			q.unpark()
			q.unpark, q.parkAt = nil, 0
		}
		return
	}
	at := micros(w.NotBefore)
	if d := micros(w.Deadline); d < at {
		at = d
	}
	if q.unpark != nil && q.parkAt == at {
		return
	}
	if q.unpark != nil {
		q.unpark()
	}
	q.parkAt = at
	q.unpark = q.cfg.Clock.AfterFunc(max(time.Duration(at-micros(now))*time.Microsecond, 0), q.unparkDue)
}

// unparkDue moves the parked waiters whose time has come into their lines
// (or ends those whose deadline came first).
func (q *Queue[V]) unparkDue() {
	now := q.cfg.Clock.Now()
	var expired []*Waiter[V]
	q.mu.Lock()
	q.unpark, q.parkAt = nil, 0
	for {
		w := q.parked.peek()
		if w == nil || (w.NotBefore.After(now) && w.Deadline.After(now)) {
			break
		}
		q.parked.remove(w)
		w.parked = false
		if !w.Deadline.After(now) {
			q.finishLocked(w, Result[V]{Outcome: Timeout}, now)
			expired = append(expired, w)
			continue
		}
		key := w.parkKey
		q.joinParkedLocked(key, w, now)
	}
	q.armParkLocked(now)
	q.mu.Unlock()
	for _, w := range expired {
		q.exit(w)
	}
}

// joinParkedLocked is joinLocked for a waiter leaving the parked heap; q.mu
// stays held.
func (q *Queue[V]) joinParkedLocked(key string, w *Waiter[V], now time.Time) {
	l := q.lines[key]
	if l == nil {
		l = newLine[V](key, q.cfg.Policy().WaitHorizon)
		q.lines[key] = l
	}
	w.static = w.Points + q.fairnessLocked(key, w.Client, now)
	l.add(w, micros(now))
	q.wakeLocked(l)
}

// Close ends every wait with Closed and stops the lines. It waits for
// attempts in flight.
func (q *Queue[V]) Close() error {
	now := q.cfg.Clock.Now()
	q.mu.Lock()
	if q.closed {
		q.mu.Unlock()
		q.running.Wait()
		return nil
	}
	q.closed = true
	var all []*Waiter[V]
	for _, l := range q.lines {
		l.stopTimer()
		all = append(all, l.byArrival()...)
	}
	for q.parked.peek() != nil {
		w := q.parked.peek()
		q.parked.remove(w)
		w.parked = false
		all = append(all, w)
	}
	if q.unpark != nil {
		q.unpark()
	}
	for _, w := range all {
		q.detachLocked(w)
		q.finishLocked(w, Result[V]{Outcome: Closed}, now)
	}
	q.mu.Unlock()
	for _, w := range all {
		q.exit(w)
	}
	q.running.Wait()
	return nil
}

// Stop stops the scheduler: held calls stay held and none is let go until
// Start (an operator's pause, e.g. while an upstream is known to be in
// trouble). Calls still join lines, still time out at their deadline, and
// can still be removed. Stop is idempotent.
func (q *Queue[V]) Stop() {
	q.mu.Lock()
	q.stopped = true
	q.mu.Unlock()
}

// Start resumes letting held calls go, waking every line. It is
// idempotent.
func (q *Queue[V]) Start() {
	q.mu.Lock()
	defer q.mu.Unlock()
	if !q.stopped {
		return
	}
	q.stopped = false
	for _, l := range q.lines {
		q.wakeLocked(l)
	}
}

// Stopped reports whether the scheduler is stopped.
func (q *Queue[V]) Stopped() bool {
	q.mu.Lock()
	defer q.mu.Unlock()
	return q.stopped
}
