package queue

// Reporting: what the queue holds, for the status endpoint, metrics,
// positions and the listing of held calls. Read-only views under q.mu.

import (
	"sort"
	"time"
)

// Status describes the queue now.
type Status struct {
	Lines  []LineStatus `json:"lines"`
	Parked int          `json:"parked"` // deferred calls waiting for the off-peak window
	Total  int          `json:"total"`
}

// LineStatus is one line's depth and oldest wait per class.
type LineStatus struct {
	Key     string                `json:"queue"`
	Classes map[string]ClassStats `json:"classes"`
}

// ClassStats is one class of one line.
type ClassStats struct {
	Depth      int           `json:"depth"`
	OldestWait time.Duration `json:"-"`
	Oldest     float64       `json:"oldest_wait_seconds"`
}

// Status reports every line's depth and oldest wait per class.
func (q *Queue[V]) Status() Status {
	now := micros(q.cfg.Clock.Now())
	q.mu.Lock()
	defer q.mu.Unlock()
	st := Status{Parked: q.parked.len()}
	for _, l := range q.lines {
		if l.len() == 0 {
			continue
		}
		ls := LineStatus{Key: l.key, Classes: map[string]ClassStats{}}
		for _, w := range l.byArrival() {
			cs := ls.Classes[w.Class.String()]
			cs.Depth++
			if waited := time.Duration(now-w.arrival) * time.Microsecond; waited > cs.OldestWait {
				cs.OldestWait = waited
				cs.Oldest = waited.Seconds()
			}
			ls.Classes[w.Class.String()] = cs
		}
		st.Total += l.len()
		st.Lines = append(st.Lines, ls)
	}
	st.Total += st.Parked
	sort.Slice(st.Lines, func(i, j int) bool { return st.Lines[i].Key < st.Lines[j].Key })
	return st
}

// Position is where one waiter stands.
type Position struct {
	QueueID  string  `json:"queue_id"`
	ID       string  `json:"request_id"`
	Key      string  `json:"queue"`
	Class    string  `json:"class"`
	Position int     `json:"position"` // 1 is next; 0 while parked
	Depth    int     `json:"depth"`
	Score    float64 `json:"score"` // 0–100 now
	Waited   float64 `json:"waited_seconds"`
	Parked   bool    `json:"parked,omitempty"`
}

// Position reports where the waiter with id (a queue id, or a request id:
// then the earliest waiting call with it) stands now.
func (q *Queue[V]) Position(id string) (Position, bool) {
	now := micros(q.cfg.Clock.Now())
	q.mu.Lock()
	defer q.mu.Unlock()
	w := q.lookupLocked(id)
	if w == nil || w.state != waiting {
		return Position{}, false
	}
	return q.positionLocked(w, now), true
}

// positionLocked is where w stands at now; q.mu is held.
func (q *Queue[V]) positionLocked(w *Waiter[V], now int64) Position {
	p := Position{QueueID: w.qid, ID: w.ID, Class: w.Class.String(), Waited: float64(now-w.arrival) / 1e6, Parked: w.parked}
	if w.parked {
		p.Key = w.parkKey
		return p
	}
	l := w.line
	p.Key, p.Depth = l.key, l.len()
	mine := l.scoreAt(w, now)
	p.Score = float64(mine) / float64(l.horizon)
	p.Position = 1
	for _, o := range l.byArrival() {
		if o != w && l.ahead(o, w, now) {
			p.Position++
		}
	}
	return p
}

// Entry is one held call in List.
type Entry struct {
	Position
	Client string `json:"client"`
}

// List reports every held call, line by line (parked ones first, under the
// line they will join), each line best first.
func (q *Queue[V]) List() []Entry {
	now := micros(q.cfg.Clock.Now())
	q.mu.Lock()
	defer q.mu.Unlock()
	out := make([]Entry, 0, len(q.byQID))
	for _, w := range q.byQID {
		if w.state == waiting {
			out = append(out, Entry{Position: q.positionLocked(w, now), Client: w.Client})
		}
	}
	sort.Slice(out, func(i, j int) bool {
		a, b := out[i], out[j]
		if a.Key != b.Key {
			return a.Key < b.Key
		}
		if a.Position.Position != b.Position.Position {
			return a.Position.Position < b.Position.Position
		}
		return a.QueueID < b.QueueID
	})
	return out
}

// Depth is how many calls wait in line key now (0 when it has none).
func (q *Queue[V]) Depth(key string) int {
	q.mu.Lock()
	defer q.mu.Unlock()
	if l := q.lines[key]; l != nil {
		return l.len()
	}
	return 0
}

// Len is how many calls the queue holds (parked ones included): Status's
// Total without describing each line, for a driver that polls it (a
// replay on a fake clock waits until every call it started is answered or
// held).
func (q *Queue[V]) Len() int {
	q.mu.Lock()
	defer q.mu.Unlock()
	n := q.parked.len()
	for _, l := range q.lines {
		n += l.len()
	}
	return n
}
