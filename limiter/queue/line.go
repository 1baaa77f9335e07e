package queue

import (
	"math"
	"sort"
	"time"
)

// line is the waiters for one resource, ordered three ways: by score (a
// heap, see best), by deadline (a heap), and by arrival (a list).
//
// The score of a waiter at time t, in points × horizon (µs), is
//
//	s·H + 20·min(H, t − a)
//
// for its static points s (tier, urgency, fairness) and arrival a. While
// t − a < H this is (s·H − 20·a) + 20·t: the order among such waiters does
// not change with t, so one heap keyed s·H − 20·a holds them.
//
// A waiter that has waited the whole horizon is overdue, and overdue waiters
// go first, earliest arrival first. Score alone could not promise that
// nothing starves (20 points of waiting never outweigh a 70-point gap in
// tier and urgency, and a stream of high scorers would keep ahead for ever);
// first come, first served among the overdue does: a waiter is passed over
// at most until the horizon plus the service of those overdue before it.
// Overdue waiters are a prefix of the arrival list: they leave the heap as
// they reach the horizon. Each operation is O(log n).
type line[V any] struct {
	key     string
	horizon int64 // µs

	growing   scoreHeap[V]
	deadlines deadlineHeap[V]
	arrivals  []*Waiter[V] // by arrival; entries of waiters gone are skipped
	migrated  int          // arrivals before this index are overdue or gone
	head      int          // arrivals before this index are gone
	live      int
	depth     [8]int // by class

	running, again bool        // a dispatcher is on it; run it once more
	stop           func() bool // the timer
	retryAt        int64       // when the best waiter's resource can take it, µs (0: on a Kick)
}

func newLine[V any](key string, horizon time.Duration) *line[V] {
	h := horizon.Microseconds()
	if h <= 0 {
		h = time.Minute.Microseconds()
	}
	l := &line[V]{key: key, horizon: h}
	l.growing.less = func(a, b *Waiter[V]) bool { return better(l.growKey(a), l.growKey(b), a, b) }
	return l
}

func better[V any](ka, kb int64, a, b *Waiter[V]) bool {
	if ka != kb {
		return ka > kb
	}
	return a.seq < b.seq // ties: the earliest arrival
}

func (l *line[V]) growKey(w *Waiter[V]) int64 { return int64(w.static)*l.horizon - 20*w.arrival }

func (l *line[V]) len() int { return l.live }

func (l *line[V]) stopTimer() {
	if l.stop != nil {
		l.stop()
		l.stop = nil
	}
}

// scoreAt is w's score at now, in points × horizon.
func (l *line[V]) scoreAt(w *Waiter[V], now int64) int64 {
	return int64(w.static)*l.horizon + 20*min(l.horizon, max(now-w.arrival, 0))
}

// ahead reports whether o goes before w at now: overdue first (waited the
// horizon), then by score, then by arrival.
func (l *line[V]) ahead(o, w *Waiter[V], now int64) bool {
	od, wd := now-o.arrival >= l.horizon, now-w.arrival >= l.horizon
	switch {
	case od != wd:
		return od
	case od:
		return o.seq < w.seq
	}
	return better(l.scoreAt(o, now), l.scoreAt(w, now), o, w)
}

// add puts w into the line at now (w's arrival may be earlier: a waiter
// moved from another line keeps its own).
func (l *line[V]) add(w *Waiter[V], now int64) {
	w.line = l
	l.live++
	l.depth[w.Class]++
	w.capped = now-w.arrival >= l.horizon
	if !w.capped {
		l.growing.push(w)
	}
	l.deadlines.push(w)
	// Keep arrivals sorted: a new arrival appends; a moved one is inserted
	// (if it goes before the overdue mark, it is overdue itself: it arrived
	// before waiters that are).
	i := len(l.arrivals)
	if i > 0 && l.arrivals[i-1].seq > w.seq {
		i = sort.Search(len(l.arrivals), func(k int) bool { return l.arrivals[k].seq > w.seq })
		if i < l.migrated {
			l.migrated++
			if !w.capped {
				l.growing.remove(w)
				w.capped = true
			}
		}
		l.head = min(l.head, i)
	}
	l.arrivals = append(l.arrivals, nil)
	copy(l.arrivals[i+1:], l.arrivals[i:])
	l.arrivals[i] = w
}

// remove takes w out of the line.
func (l *line[V]) remove(w *Waiter[V]) {
	if !w.capped {
		l.growing.remove(w)
	}
	l.deadlines.remove(w)
	l.live--
	l.depth[w.Class]--
	w.line = nil
	if dead := len(l.arrivals) - l.live; dead > 64 && dead > l.live {
		l.compact()
	}
}

// compact drops the arrival entries of waiters gone.
func (l *line[V]) compact() {
	out := l.arrivals[:0]
	migrated := 0
	for i, w := range l.arrivals {
		if w.line != l {
			continue
		}
		if i < l.migrated {
			migrated++
		}
		out = append(out, w)
	}
	clear(l.arrivals[len(out):])
	l.arrivals, l.migrated, l.head = out, migrated, 0
}

// best returns the waiter to try at now, or nil: the earliest overdue
// waiter, else the best scored. First it marks the waiters that have
// reached the horizon overdue.
func (l *line[V]) best(now int64) *Waiter[V] {
	for l.migrated < len(l.arrivals) {
		w := l.arrivals[l.migrated]
		if w.line == l && !w.capped {
			if now-w.arrival < l.horizon {
				break
			}
			l.growing.remove(w)
			w.capped = true
		}
		l.migrated++
	}
	for l.head < l.migrated && l.arrivals[l.head].line != l {
		l.head++
	}
	if l.head < l.migrated {
		return l.arrivals[l.head]
	}
	return l.growing.peek()
}

// firstDeadline is the earliest deadline in the line (µs), or 0.
func (l *line[V]) firstDeadline() int64 {
	if w := l.deadlines.peek(); w != nil {
		return micros(w.Deadline)
	}
	return 0
}

// byArrival returns the waiters in the order they arrived.
func (l *line[V]) byArrival() []*Waiter[V] {
	out := make([]*Waiter[V], 0, l.live)
	for _, w := range l.arrivals {
		if w.line == l {
			out = append(out, w)
		}
	}
	return out
}

// scoreHeap is an indexed binary heap of waiters; less puts the best first.
type scoreHeap[V any] struct {
	s    []*Waiter[V]
	less func(a, b *Waiter[V]) bool
}

func (h *scoreHeap[V]) peek() *Waiter[V] {
	if len(h.s) == 0 {
		return nil
	}
	return h.s[0]
}

func (h *scoreHeap[V]) push(w *Waiter[V]) {
	w.heapIdx = len(h.s)
	h.s = append(h.s, w)
	h.up(w.heapIdx)
}

func (h *scoreHeap[V]) remove(w *Waiter[V]) {
	i := w.heapIdx
	if i < 0 || i >= len(h.s) || h.s[i] != w {
		return
	}
	last := len(h.s) - 1
	h.swap(i, last)
	h.s[last] = nil
	h.s = h.s[:last]
	w.heapIdx = -1
	if i < last {
		h.down(i)
		h.up(i)
	}
}

func (h *scoreHeap[V]) swap(i, j int) {
	h.s[i], h.s[j] = h.s[j], h.s[i]
	h.s[i].heapIdx, h.s[j].heapIdx = i, j
}

func (h *scoreHeap[V]) up(i int) {
	for i > 0 {
		p := (i - 1) / 2
		if !h.less(h.s[i], h.s[p]) {
			return
		}
		h.swap(i, p)
		i = p
	}
}

func (h *scoreHeap[V]) down(i int) {
	for {
		l := 2*i + 1
		if l >= len(h.s) {
			return
		}
		m := l
		if r := l + 1; r < len(h.s) && h.less(h.s[r], h.s[l]) {
			m = r
		}
		if !h.less(h.s[m], h.s[i]) {
			return
		}
		h.swap(i, m)
		i = m
	}
}

// deadlineHeap orders waiters by deadline (earliest first). A waiter is in
// one line's deadlineHeap or in the queue's parkHeap, never both, so both
// use dlIdx.
type deadlineHeap[V any] struct{ s []*Waiter[V] }

func dlLess[V any](a, b *Waiter[V]) bool {
	if !a.Deadline.Equal(b.Deadline) {
		return a.Deadline.Before(b.Deadline)
	}
	return a.seq < b.seq
}

func (h *deadlineHeap[V]) peek() *Waiter[V] {
	if len(h.s) == 0 {
		return nil
	}
	return h.s[0]
}

func (h *deadlineHeap[V]) push(w *Waiter[V]) {
	w.dlIdx = len(h.s)
	h.s = append(h.s, w)
	siftUp(h.s, w.dlIdx, dlLess[V])
}

func (h *deadlineHeap[V]) remove(w *Waiter[V]) { h.s = heapRemove(h.s, w, dlLess[V]) }

// parkHeap orders parked waiters by when they are due: the earlier of their
// NotBefore and their deadline.
type parkHeap[V any] struct{ s []*Waiter[V] }

func parkLess[V any](a, b *Waiter[V]) bool {
	da, db := a.NotBefore, b.NotBefore
	if a.Deadline.Before(da) {
		da = a.Deadline
	}
	if b.Deadline.Before(db) {
		db = b.Deadline
	}
	if !da.Equal(db) {
		return da.Before(db)
	}
	return a.seq < b.seq
}

func (h *parkHeap[V]) len() int { return len(h.s) }

func (h *parkHeap[V]) peek() *Waiter[V] {
	if len(h.s) == 0 {
		return nil
	}
	return h.s[0]
}

func (h *parkHeap[V]) push(w *Waiter[V]) {
	w.dlIdx = len(h.s)
	h.s = append(h.s, w)
	siftUp(h.s, w.dlIdx, parkLess[V])
}

func (h *parkHeap[V]) remove(w *Waiter[V]) { h.s = heapRemove(h.s, w, parkLess[V]) }

func siftUp[V any](s []*Waiter[V], i int, less func(a, b *Waiter[V]) bool) {
	for i > 0 {
		p := (i - 1) / 2
		if !less(s[i], s[p]) {
			return
		}
		s[i], s[p] = s[p], s[i]
		s[i].dlIdx, s[p].dlIdx = i, p
		i = p
	}
}

func siftDown[V any](s []*Waiter[V], i int, less func(a, b *Waiter[V]) bool) {
	for {
		l := 2*i + 1
		if l >= len(s) {
			return
		}
		m := l
		if r := l + 1; r < len(s) && less(s[r], s[l]) {
			m = r
		}
		if !less(s[m], s[i]) {
			return
		}
		s[i], s[m] = s[m], s[i]
		s[i].dlIdx, s[m].dlIdx = i, m
		i = m
	}
}

func heapRemove[V any](s []*Waiter[V], w *Waiter[V], less func(a, b *Waiter[V]) bool) []*Waiter[V] {
	i := w.dlIdx
	if i < 0 || i >= len(s) || s[i] != w {
		return s
	}
	last := len(s) - 1
	s[i], s[last] = s[last], s[i]
	s[i].dlIdx = i
	s[last] = nil
	s = s[:last]
	w.dlIdx = -1
	if i < last {
		siftDown(s, i, less)
		siftUp(s, i, less)
	}
	return s
}

// usage is a line's record of what each client took from the resource
// over a sliding window (two fixed windows, the older one weighted by how
// much of it still overlaps), for the fairness score. Fairness is a score,
// not a ledger: it is computed in float64.
type usage struct {
	window     int64 // µs
	epoch      int64
	cur, prev  map[string]int64
	curT, prvT int64
}

func (u *usage) roll(now int64) {
	e := now / u.window
	switch {
	case e == u.epoch:
		return
	case e == u.epoch+1:
		u.prev, u.prvT = u.cur, u.curT
	default:
		u.prev, u.prvT = map[string]int64{}, 0
	}
	u.cur, u.curT, u.epoch = map[string]int64{}, 0, e
}

func (u *usage) share(client string, now int64) float64 {
	u.roll(now)
	w := 1 - float64(now-u.epoch*u.window)/float64(u.window) // the older window's overlap
	total := float64(u.curT) + w*float64(u.prvT)
	if total <= 0 {
		return 0
	}
	return (float64(u.cur[client]) + w*float64(u.prev[client])) / total
}

// fairnessLocked is a client's fairness points in line key at now: 10 for
// a client that took nothing of it lately, 0 for one that took all of it.
func (q *Queue[V]) fairnessLocked(key, client string, now time.Time) int {
	u := q.usage[key]
	if u == nil {
		return 10
	}
	return 10 - int(math.Ceil(10*u.share(client, micros(now))-1e-9))
}

// recordLocked notes that client took units of the resource of line key.
func (q *Queue[V]) recordLocked(key, client string, units int64, now time.Time) {
	u := q.usage[key]
	if u == nil {
		win := q.cfg.Policy().FairnessWindow.Microseconds()
		if win <= 0 {
			win = time.Minute.Microseconds()
		}
		u = &usage{window: win, cur: map[string]int64{}, prev: map[string]int64{}, epoch: micros(now) / win}
		q.usage[key] = u
	}
	u.roll(micros(now))
	u.cur[client] += max(units, 1)
	u.curT += max(units, 1)
}

// Record notes a grant made without the queue (a call admitted at once), so
// that a client's fairness counts everything it took from line key's
// resource.
func (q *Queue[V]) Record(key, client string, units int64) {
	now := q.cfg.Clock.Now()
	q.mu.Lock()
	q.recordLocked(key, client, units, now)
	q.mu.Unlock()
}
