// Package fakeclock is a settable clock for tests, with timers that fire
// only when it is moved. Each test makes its own; nothing here is
// process-wide.
package fakeclock

import (
	"sort"
	"sync"
	"time"
)

// Clock is a concurrency-safe clock that moves only when told to.
type Clock struct {
	mu     sync.Mutex
	now    time.Time
	timers []*Timer
}

// New returns a clock reading start.
func New(start time.Time) *Clock { return &Clock{now: start} }

// Now returns the clock's time.
func (c *Clock) Now() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.now
}

// Advance moves the clock forward by d and fires, in the order they are
// due, the timers due by then (each in a goroutine of its own, as
// time.AfterFunc does).
func (c *Clock) Advance(d time.Duration) {
	c.mu.Lock()
	c.now = c.now.Add(d)
	due := c.dueLocked()
	c.mu.Unlock()
	for _, t := range due {
		go t.f()
	}
}

// Step is Advance that returns once the callbacks of the timers it fired
// have returned (each still runs in its own goroutine), so that a test can
// look at what they did before time moves on.
func (c *Clock) Step(d time.Duration) {
	c.mu.Lock()
	c.now = c.now.Add(d)
	due := c.dueLocked()
	c.mu.Unlock()
	var wg sync.WaitGroup
	for _, t := range due {
		wg.Go(t.f)
	}
	wg.Wait()
}

// Set moves the clock to t, firing the timers due by then.
func (c *Clock) Set(t time.Time) {
	c.mu.Lock()
	c.now = t
	due := c.dueLocked()
	c.mu.Unlock()
	for _, t := range due {
		go t.f()
	}
}

func (c *Clock) dueLocked() []*Timer {
	sort.SliceStable(c.timers, func(i, j int) bool { return c.timers[i].at.Before(c.timers[j].at) })
	n := 0
	for n < len(c.timers) && !c.timers[n].at.After(c.now) {
		n++
	}
	due := append([]*Timer(nil), c.timers[:n]...)
	c.timers = append(c.timers[:0], c.timers[n:]...)
	return due
}

// Timer is a pending call of a Clock's AfterFunc.
type Timer struct {
	c  *Clock
	at time.Time
	f  func()
}

// AfterFunc calls f in its own goroutine once the clock has moved d past
// now (at once, for d <= 0). The function it returns cancels the call and
// reports whether it was still pending, like time.Timer's Stop.
func (c *Clock) AfterFunc(d time.Duration, f func()) (stop func() bool) {
	c.mu.Lock()
	t := &Timer{c: c, at: c.now.Add(d), f: f}
	if d <= 0 {
		c.mu.Unlock()
		go f()
		return t.stop
	}
	c.timers = append(c.timers, t)
	c.mu.Unlock()
	return t.stop
}

func (t *Timer) stop() bool {
	t.c.mu.Lock()
	defer t.c.mu.Unlock()
	for i, x := range t.c.timers {
		if x == t {
			t.c.timers = append(t.c.timers[:i], t.c.timers[i+1:]...)
			return true
		}
	}
	return false
}

// Pending returns how many timers wait to fire.
func (c *Clock) Pending() int {
	c.mu.Lock()
	defer c.mu.Unlock()
	return len(c.timers)
}

// Next returns when the earliest pending timer is due, and false when none
// is pending: a driver that must see every timer fire at its own time
// (decision log replay) steps to each in turn.
func (c *Clock) Next() (time.Time, bool) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if len(c.timers) == 0 {
		return time.Time{}, false
	}
	at := c.timers[0].at
	for _, t := range c.timers[1:] {
		if t.at.Before(at) {
			at = t.at
		}
	}
	return at, true
}
