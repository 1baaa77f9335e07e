package cluster

import (
	"math"
	"strings"
	"time"

	"github.com/tollgate/tollgate/limiter"
	"github.com/tollgate/tollgate/policy"
)

// Bucket leases: a member takes a slice of a shared bucket's units in one
// call (its share of a lease period's refill, or the call alone near the
// limit) and spends it here, without a round trip; what it has not spent
// when the lease lapses goes back at the next sync. A bucket the shared
// store said is short is refused here until it could cover the call.

type lease struct {
	limit limiter.Limit
	units int64 // whole units left to spend here
	exp   time.Time
	// left is what the shared bucket held after the last grant (whole units),
	// and level its level then (as its reset time tells it, scaled for the
	// limit it was heard under: den is that limit's Den).
	left   int64
	level  int64
	den    int64
	leftAt time.Time
	// shortUntil: the shared bucket said no; until then, calls are refused
	// here without asking (the short-circuit of a key over its limit).
	shortUntil time.Time
	shortNeed  int64 // what the refused ask needed: a smaller need is asked again
	possible   bool
	// misses counts refusals in a row: members contending for the refill
	// of an empty bucket ask less often, so that denials stay local.
	misses int
	// pausedUntil: the upstream asked to back off; no lease until then.
	pausedUntil time.Time
	// Demand seen here, which the sync loop's prefetch renews the lease by
	// (prefetch.go): when units were last spent, and what was spent since
	// the last grant (and when that was). storeClock: the last ask named no
	// time (the store's clock), so a prefetch, which names none, asks in
	// the same time.
	used, grantAt time.Time
	spent         int64
	storeClock    bool
	// refused counts the calls refused for this bucket (here, or by the
	// shared store) since refusedAt, a window of one sync; hotUntil: the
	// bucket is over-subscribed (hot) until then (kept while asks find it
	// drained). See prefetch.go.
	refused   int
	refusedAt time.Time
	hotUntil  time.Time
	// shareUntil: held to its priority share of a busy pool's refill
	// until then (priority.go); refill notices leave that wait alone.
	shareUntil time.Time
	// got measures the units granted to this member while the bucket is
	// hot, against its share of the refill (holdToShare).
	got *rate
}

// want is the lease to ask for a take: this member's share of a lease
// period's refill, or the call alone when the bucket is near its limit.
func (s *Store) want(t limiter.Take, l *lease, now time.Time) int64 {
	c := t.Limit.Capacity
	r := float64(t.Limit.Refill) / float64(t.Limit.Den()) // units a second: a size to ask for, not an amount kept
	near := c * s.cfg.NearLimitPercent / 100
	if l != nil && l.left < near && now.Sub(l.leftAt) < s.cfg.LeaseTTL {
		if l.isHot(now, s.cfg.SyncEvery) {
			return max(t.Cost, s.hotWant(t.Key, t.Limit))
		}
		return t.Cost
	}
	share := 1 / float64(s.peers.Live())
	if t.Key.Client == "" {
		share = s.peers.Share(t.Key.Pool)
	}
	w := int64(math.Ceil(share * r * s.cfg.LeaseTTL.Seconds()))
	w = min(w, max(c/int64(2*s.peers.Live()), 1)) // never hoard: half the bucket at most, split by members
	return max(w, t.Cost)
}

// refilled is the whole units the shared bucket has refilled since the
// lease last heard its level (Refill every Per, rounded down).
func (l *lease) refilled(lim limiter.Limit, now time.Time) int64 {
	el := now.Sub(l.leftAt).Microseconds()
	if el <= 0 || lim.Refill <= 0 {
		return 0
	}
	if el >= ceilDiv(lim.Capacity*lim.Scale(), lim.Refill) {
		return lim.Capacity
	}
	return el * lim.Refill / lim.Scale() // el·Refill < capacity·Scale: no overflow
}

// approxState reports a leased bucket for headers: what the shared bucket
// held at the last grant, and has refilled since, plus what this member has
// left of its lease.
func (s *Store) approxState(l *lease, lim limiter.Limit, now time.Time) (int64, time.Duration) {
	if l == nil {
		return 0, 0
	}
	b := limiter.Bucket{Level: l.level, At: limiter.Micros(l.leftAt), Den: l.den}.Advance(lim, limiter.Micros(now))
	b.Level = min(b.Level+l.units*lim.Scale(), lim.Capacity*lim.Scale())
	return b.State(lim)
}

// heard records what the shared store said of the bucket at now: whole
// units remaining, and the time until it is full, which gives its level to
// within a refill's microsecond.
func (l *lease) heard(lim limiter.Limit, remaining int64, resetAfter time.Duration, now time.Time) {
	b := limiter.BucketHolding(lim, remaining, limiter.Micros(now))
	if lim.Refill > 0 { // at least the whole units it reported, less than one more
		scale := lim.Scale()
		b.Level = min(max(lim.Capacity*scale-resetAfter.Microseconds()*lim.Refill, b.Level), b.Level+scale-1)
	}
	l.left, l.leftAt, l.level, l.den = remaining, now, b.Level, b.Den
}

func ceilDiv(a, b int64) int64 {
	if a <= 0 {
		return 0
	}
	return (a + b - 1) / b
}

// deniedLocally refuses req for take i, whose shared bucket said it is
// short until l.shortUntil.
func (s *Store) deniedLocally(req limiter.Request, i int, l *lease, now time.Time) limiter.Decision {
	d := limiter.Decision{Reason: limiter.ReasonRateLimited, Blocking: i, BudgetBlocking: -1, Buckets: make([]limiter.BucketState, len(req.Takes))}
	if l == nil {
		l = &lease{possible: true}
	}
	d.RetryAfter = max(l.shortUntil.Sub(now), 0)
	if !l.possible {
		d.Reason, d.RetryAfter = limiter.ReasonExceedsCapacity, 0
	}
	for j, t := range req.Takes {
		d.Buckets[j] = limiter.BucketState{Key: t.Key, Limit: t.Limit}
		d.Buckets[j].Remaining, d.Buckets[j].ResetAfter = s.approxState(s.leases[t.Key], t.Limit, now)
	}
	d.Buckets[i].Short, d.Buckets[i].RetryAfter = true, d.RetryAfter
	return d
}

// take adds a grant to its lease. s.mu is held.
func (s *Store) take(a limiter.LeaseAsk, g limiter.LeaseGrant, now time.Time) {
	l := s.leases[a.Key]
	if l == nil {
		l = &lease{}
		s.leases[a.Key] = l
	}
	if !now.Before(l.exp) && l.units > 0 {
		s.returning = append(s.returning, limiter.Adjustment{Key: a.Key, Limit: l.limit, Refund: l.units, Cap: limiter.NoCap})
		l.units = 0
	}
	l.limit = a.Limit
	l.heard(a.Limit, g.Remaining, g.ResetAfter, now)
	l.possible = g.Possible
	if a.Want == 0 {
		return // a read: nothing was asked, nothing refused
	}
	if g.Granted == 0 && a.Need > 0 {
		l.noteRefusal(now, s.cfg.SyncEvery)
	}
	near := a.Limit.Capacity * s.cfg.NearLimitPercent / 100
	hot := l.isHot(now, s.cfg.SyncEvery)
	if hot && (g.Remaining >= max(near, 1) || !g.Possible) {
		l.hotUntil, hot = time.Time{}, false // room again: asked as any bucket
	} else if hot && (g.Granted == 0 || g.Remaining == 0) {
		l.hotUntil = now.Add(s.cfg.LeaseTTL) // still contended: stays hot
	}

	if g.Granted > 0 {
		l.units += g.Granted
		l.exp = now.Add(s.cfg.LeaseTTL)
		l.shortUntil, l.misses = time.Time{}, 0
		l.grantAt, l.spent = now, 0
		if hot {
			s.holdToShare(l, a, g.Granted, now)
		}
		if hot && g.Possible && g.Granted < a.Want && g.Remaining == 0 {
			// It took what was left of a hot bucket: spend it, then refuse
			// here for a round of the fleet's asks (the next ask takes this
			// member's share of what refilled), instead of asking for each
			// unit as it comes back.
			if until := now.Add(s.hotWait(a.Limit)); until.After(l.shortUntil) {
				l.shortUntil, l.shortNeed = until, 1
			}
		}
		return
	}
	l.misses++
	l.shortNeed = a.Need
	wait := g.RetryAfter
	if l.misses > 1 && s.peers.Live() > 1 { // refused again while others contend: wait twice as long each time, up to a tenth of a lease
		wait = max(wait, min(g.RetryAfter<<min(l.misses-1, 20), s.cfg.LeaseTTL/10))
	}
	if hot && g.Possible {
		// Refused while calls are being refused here by the dozen: the
		// bucket is over-subscribed. Ask again only after a round of the
		// fleet's asks (hotWait), not each time a unit comes back: the calls
		// meanwhile are refused here, and the next ask takes this member's
		// share of what came back since (want, prefetch.go).
		wait = max(wait, s.hotWait(a.Limit))
	}
	l.shortUntil = now.Add(wait)
	if !g.Possible {
		l.shortUntil = now.Add(s.cfg.LeaseTTL) // ask again now and then: the policy may change
	}
}

// learn updates views and leases from a decision of the shared store,
// read after snaps. s.mu is held.
func (s *Store) learn(req limiter.Request, d limiter.Decision, snaps []snap, now time.Time) {
	for i, b := range d.Buckets {
		if l := s.leases[b.Key]; l != nil {
			l.heard(b.Limit, b.Remaining, b.ResetAfter, now)
		}
		if b.Short && !req.Takes[i].Shadow && d.Reason == limiter.ReasonRateLimited && i == d.Blocking {
			l := s.leases[b.Key]
			if l == nil {
				l = &lease{limit: b.Limit}
				s.leases[b.Key] = l
			}
			l.shortUntil, l.possible = now.Add(b.RetryAfter), true
		}
	}
	if h := req.Hold; h != nil {
		s.learnBudgets(h, d.Budgets, snaps, now) // the answer includes this call's hold when allowed
	}
	for _, b := range d.Buckets {
		if b.Key.Client == "" && d.Allowed {
			for _, t := range req.Takes {
				if t.Key == b.Key {
					s.record(t.Key, t.Cost)
				}
			}
		}
	}
}

// Backoff applies what a peer heard from the upstream behind pool: a
// pause empties this member's lease and stops leasing until it ends; a
// report of few units left trims the lease to this member's share of them.
// A pause holds the pool's reserved parts too.
func (s *Store) Backoff(_, pool string, pause time.Duration, remaining int64) {
	now := s.cfg.Clock.Now()
	s.mu.Lock()
	defer s.mu.Unlock()
	for k, l := range s.leases {
		switch {
		case k.Pool != pool:
		case k.Client == "":
			s.signalLocked(l, pause, remaining, now)
		case pause > 0 && strings.HasPrefix(k.Client, policy.ReservedKeyPrefix):
			// A reserved part of the pool is the same upstream: a pause
			// holds it too (a count of units left speaks of the shared part).
			s.signalLocked(l, pause, -1, now)
		}
	}
}

// signalLocked applies an upstream signal to a lease. s.mu is held.
func (s *Store) signalLocked(l *lease, pause time.Duration, remaining int64, now time.Time) {
	switch {
	case pause > 0:
		l.units = 0
		l.pausedUntil = now.Add(pause)
	case remaining >= 0:
		l.units = min(l.units, remaining/int64(s.peers.Live()))
	}
}

// shortWait is how long until a bucket known to be short could cover need
// units: until l.shortUntil for the need that was refused, and what more
// takes to refill beyond it.
func (s *Store) shortWait(l *lease, need int64, now time.Time) time.Duration {
	w := max(l.shortUntil.Sub(now), 0)
	if more := need - l.shortNeed; more > 0 && l.limit.Refill > 0 {
		w += time.Duration(ceilDiv(more*l.limit.Scale(), l.limit.Refill)) * time.Microsecond
	}
	return w
}

// noteRefusal counts a call refused for the bucket in the current window.
func (l *lease) noteRefusal(now time.Time, window time.Duration) {
	if now.Sub(l.refusedAt) >= window || now.Before(l.refusedAt) {
		l.refusedAt, l.refused = now, 0
	}
	l.refused++
}

// isHot reports whether the bucket is over-subscribed: hotDenials calls
// refused within one window, or hot since then and still contended.
func (l *lease) isHot(now time.Time, window time.Duration) bool {
	if l.refused >= hotDenials && now.Sub(l.refusedAt) < window {
		if until := now.Add(10 * window); until.After(l.hotUntil) {
			l.hotUntil = until
		}
	}
	return now.Before(l.hotUntil)
}
