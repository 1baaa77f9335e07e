package policy

import (
	"fmt"
	"strconv"
	"strings"
	"time"
)

// Class is a call's priority class: how long it may be held for capacity,
// and how urgently it is let go.
type Class uint8

// The five classes, most urgent first.
const (
	Immediate Class = iota // never held: admitted now or refused now
	Fast
	Normal
	Batch
	Deferred // held for the off-peak window, or refused with Retry-After pointing at it
)

// Classes lists the classes, most urgent first.
var Classes = []Class{Immediate, Fast, Normal, Batch, Deferred}

var classNames = [...]string{"immediate", "fast", "normal", "batch", "deferred"}

func (c Class) String() string {
	if int(c) < len(classNames) {
		return classNames[c]
	}
	return "class(" + strconv.Itoa(int(c)) + ")"
}

// ParseClass reads a class name (case-insensitive).
func ParseClass(s string) (Class, bool) {
	s = strings.ToLower(strings.TrimSpace(s))
	for i, n := range classNames {
		if n == s {
			return Class(i), true
		}
	}
	return Normal, false
}

// ClassPolicy is how one class waits.
type ClassPolicy struct {
	// MaxWait is the longest a call of the class is held; zero never holds.
	MaxWait time.Duration
	// MaxDepth is the most calls of the class one queue holds; more are
	// refused with queue_full.
	MaxDepth int
	// Urgency is the class's share of the queue score, 0 to 30 points.
	Urgency int
}

// Queue is the policy of the hold queue.
type Queue struct {
	// PriorityHeader names the request header that asks for a class.
	PriorityHeader string
	// WaitHorizon is how long a call waits for its time-waited score to
	// reach its full 20 points (so nothing starves).
	WaitHorizon time.Duration
	// FairnessWindow is the sliding window over which a client's share of a
	// pool lowers its fairness score.
	FairnessWindow time.Duration
	// StarvationAlert is how long a call may wait before it raises an alert.
	// The default, 4 min, is reachable with the shipped limits: only the
	// deferred class (5 min, Envoy's ext_authz gives up at 310 s) holds a
	// call that long; a threshold at or above every class's max_wait can
	// never fire (a policy warning says so).
	StarvationAlert time.Duration
	// Classes holds each class's policy, indexed by Class.
	Classes [len(classNames)]ClassPolicy
	// Windows are the off-peak windows deferred calls go in; none means
	// any time.
	Windows []Window
}

// Class returns the policy of class c.
func (q *Queue) Class(c Class) ClassPolicy {
	if int(c) < len(q.Classes) {
		return q.Classes[c]
	}
	return q.Classes[Normal]
}

// LongestWait is the longest any class may be held: Envoy's ext_authz
// timeout must be longer.
func (q *Queue) LongestWait() time.Duration {
	var d time.Duration
	for _, c := range q.Classes {
		d = max(d, c.MaxWait)
	}
	return d
}

// DefaultQueue is the hold queue's default policy: fast 2 s, normal 10 s,
// batch 60 s, deferred 5 min (for a window that opens within it).
func DefaultQueue() Queue {
	return Queue{
		PriorityHeader:  "x-tollgate-priority",
		WaitHorizon:     time.Minute,
		FairnessWindow:  time.Minute,
		StarvationAlert: 4 * time.Minute,
		Classes: [len(classNames)]ClassPolicy{
			Immediate: {MaxWait: 0, MaxDepth: 0, Urgency: 30},
			Fast:      {MaxWait: 2 * time.Second, MaxDepth: 1000, Urgency: 30},
			Normal:    {MaxWait: 10 * time.Second, MaxDepth: 1000, Urgency: 20},
			Batch:     {MaxWait: time.Minute, MaxDepth: 10_000, Urgency: 10},
			Deferred:  {MaxWait: 5 * time.Minute, MaxDepth: 10_000, Urgency: 0},
		},
	}
}

// Window is a daily off-peak window from Start to End (local times of day
// in Location; End before Start runs across midnight), on Days (the day it
// starts; all days when empty).
type Window struct {
	Start, End time.Duration // since local midnight; End may be 24h
	Location   *time.Location
	Days       [7]bool // by time.Weekday; all false means every day
}

func (w Window) onDay(d time.Weekday) bool {
	for _, on := range w.Days {
		if on {
			return w.Days[d]
		}
	}
	return true
}

// span returns the window's occurrence that starts on local day y-m-d.
// Times are wall-clock times in the window's zone: "22:00" is 22:00 on the
// clock whatever the day's length (time.Date settles DST gaps).
func (w Window) span(y int, m time.Month, d int) (from, to time.Time) {
	from = clockOn(y, m, d, w.Start, w.Location)
	if w.End > w.Start {
		return from, clockOn(y, m, d, w.End, w.Location)
	}
	return from, clockOn(y, m, d+1, w.End, w.Location) // across midnight
}

func clockOn(y int, m time.Month, d int, off time.Duration, loc *time.Location) time.Time {
	return time.Date(y, m, d, int(off/time.Hour), int(off%time.Hour/time.Minute), 0, 0, loc)
}

// OffPeak reports whether t is inside one of the windows (always, when
// there are none), and when the next window opens otherwise.
func (q *Queue) OffPeak(t time.Time) (inside bool, opens time.Time) {
	if len(q.Windows) == 0 {
		return true, t
	}
	for _, w := range q.Windows {
		l := t.In(w.Location)
		// From the occurrence that started yesterday (it may still be open)
		// to a week ahead.
		for day := -1; day <= 7; day++ {
			mid := time.Date(l.Year(), l.Month(), l.Day()+day, 0, 0, 0, 0, w.Location)
			if !w.onDay(mid.Weekday()) {
				continue
			}
			from, to := w.span(mid.Year(), mid.Month(), mid.Day())
			if !t.Before(from) && t.Before(to) {
				return true, t
			}
			if from.After(t) && (opens.IsZero() || from.Before(opens)) {
				opens = from
			}
		}
	}
	return false, opens
}

// parseClock reads a time of day "HH:MM" (00:00 to 24:00).
func parseClock(s string) (time.Duration, error) {
	h, m, ok := strings.Cut(strings.TrimSpace(s), ":")
	hh, err1 := strconv.Atoi(h)
	mm, err2 := strconv.Atoi(m)
	if !ok || err1 != nil || err2 != nil || len(m) != 2 || hh < 0 || mm < 0 || mm > 59 || hh > 24 || (hh == 24 && mm != 0) {
		return 0, fmt.Errorf("want a time of day such as \"22:00\", got %q", s)
	}
	return time.Duration(hh)*time.Hour + time.Duration(mm)*time.Minute, nil
}

// weekdays reads a day name, short or long.
var weekdays = func() map[string]time.Weekday {
	m := map[string]time.Weekday{}
	for d := time.Sunday; d <= time.Saturday; d++ {
		long := strings.ToLower(d.String())
		m[long], m[long[:3]] = d, d
	}
	return m
}()
