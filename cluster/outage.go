package cluster

import (
	"context"
	"log/slog"
	"time"

	"github.com/tollgate/tollgate/limiter"
	"github.com/tollgate/tollgate/policy"
)

// Outage mode: the shared store cannot be reached, and the member keeps
// deciding on its own. Each bucket becomes a local one with this member's
// share of it (capacity and refill divided by the live members), starting
// from what its lease had left (units already taken from the shared
// bucket); each budget allows this member its share of what its view says
// is left (views still hear the others' spend by gossip); each client's
// concurrency allows its share of the slots. Spend decided meanwhile is
// journaled and booked, exactly once, when the store is back.

// enterOutage switches to outage mode. s.mu is held.
func (s *Store) enterOutage(now time.Time, err error) {
	if s.outage {
		return
	}
	s.outage, s.outSince = true, now
	s.m.outages.Inc()
	s.outBkt, s.outLimit, s.outSlots = map[limiter.Key]*limiter.Bucket{}, map[limiter.Key]limiter.Limit{}, map[string]int64{}
	for _, r := range s.resv { // calls in flight here keep counting against their client
		if r.client != "" {
			s.outSlots[r.client]++
		}
	}
	s.log.LogAttrs(context.Background(), slog.LevelWarn, "shared store unreachable: deciding locally on this member's share",
		slog.Int("members", s.peers.Live()), slog.Any("error", err))
}

// share is n's 1/N part, at least one.
func share(n int64, members int) int64 { return max(n/int64(members), 1) }

// shareLimit is this member's part of l among members: 1/N of the capacity
// (at least one unit), and exactly 1/N of the refill, Refill every Den·N
// seconds in lowest terms (the members' refills add up to l's, never to
// more: 1/s among three is 1 every 3 s each, not 1/s each). A change in
// the members changes the period, and the bucket is rescaled (rounded
// down) at its next Advance.
func shareLimit(l limiter.Limit, members int) limiter.Limit {
	lim := limiter.Limit{Capacity: share(l.Capacity, members)}
	if l.Refill > 0 {
		r, d := l.Refill, l.Den()*int64(members)
		g := gcd(r, d)
		lim.Refill, lim.Per = r/g, time.Duration(d/g)*time.Second
		if lim.Per == time.Second {
			lim.Per = 0
		}
	}
	return lim
}

func gcd(a, b int64) int64 {
	for b != 0 {
		a, b = b, a%b
	}
	return a
}

// decideOutage decides req on this member's shares. s.mu is held.
func (s *Store) decideOutage(req limiter.Request, now time.Time) (limiter.Decision, error) {
	members := s.peers.Live()
	at := limiter.Micros(now)
	takes := make([]limiter.Take, len(req.Takes))
	buckets := make([]limiter.Bucket, len(req.Takes))
	for i, t := range req.Takes {
		lim := shareLimit(t.Limit, members)
		b := s.outBkt[t.Key]
		if b == nil {
			start := int64(0) // what the shared bucket already gave this member, if anything
			if l := s.leases[t.Key]; l != nil && now.Before(l.exp) {
				start = min(l.units, lim.Capacity)
				l.units = 0
			}
			nb := limiter.BucketHolding(lim, start, at)
			b = &nb
			s.outBkt[t.Key] = b
		}
		s.outLimit[t.Key] = lim
		*b = b.Advance(lim, at)
		takes[i] = t
		takes[i].Limit = lim
		buckets[i] = *b
	}
	h := req.Hold
	var budgets []limiter.BudgetState
	var inFlight int64
	var hold *limiter.Hold
	if h != nil {
		if !h.Commit {
			if _, live := s.resv[h.ID]; live {
				return limiter.Decision{}, errDuplicate(h.ID)
			}
		}
		cp := *h
		hold = &cp
		budgets = make([]limiter.BudgetState, len(h.Budgets))
		for i, b := range h.Budgets {
			v := s.viewOf(b, h.Period, now)
			budgets[i] = limiter.BudgetState{Owner: b.Owner, Limit: limiter.Unlimited}
			if b.Limit >= 0 {
				// This member may spend its share of what was left at its last
				// read (less what others are known to have spent since): a
				// budget of that share, of which it has spent its own part.
				others := v.since - v.mine
				budgets[i].Limit = max(b.Limit-v.base-others, 0) / policy.Money(members)
				budgets[i].Spent = max(v.mine, 0)
			}
		}
		if h.Slot != nil && !h.Commit {
			cp.Slot = &limiter.Slot{Client: h.Slot.Client, Max: max((h.Slot.Max+int64(members)-1)/int64(members), 1)}
			inFlight = s.outSlots[h.Slot.Client]
		}
	}
	d := limiter.ApplyHold(buckets, takes, hold, budgets, inFlight)
	for i, t := range req.Takes {
		d.Buckets[i].Limit = t.Limit // report the real bucket, not the share
	}
	if !d.Allowed {
		return d, nil
	}
	for i, t := range req.Takes {
		*s.outBkt[t.Key] = buckets[i]
		if !d.Buckets[i].Short {
			s.record(t.Key, t.Cost)
		}
	}
	if h != nil {
		d.Budgets = s.book(h, now)
		if !h.Commit {
			r := &localResv{cost: h.Cost, period: h.Period, exp: now.Add(h.TTL), charges: limiter.Charged(req.Takes, d), outage: true}
			for _, b := range h.Budgets {
				r.owners = append(r.owners, b.Owner)
			}
			if h.Slot != nil {
				r.client = h.Slot.Client
				s.outSlots[r.client]++
				d.InFlight = s.outSlots[r.client]
			}
			s.resv[h.ID] = r
		}
	}
	return d, nil
}

// recover leaves outage mode once the store answers again: the journal
// (booked by the caller just before) and the missed settles go in, the
// local shares are dropped, and leases start afresh.
func (s *Store) recover(ctx context.Context, now time.Time) {
	s.mu.Lock()
	if !s.outage {
		s.mu.Unlock()
		return
	}
	since := s.outSince
	s.outage, s.outBkt, s.outLimit = false, nil, nil
	// Calls admitted in outage keep their slots; they are counted here
	// until they end, against leases taken afresh.
	for client, n := range s.outSlots {
		sl := s.slots[client]
		if sl == nil {
			sl = &slotLease{}
			s.slots[client] = sl
		}
		sl.inUse, sl.held, sl.exp = n, 0, time.Time{}
	}
	s.outSlots = nil
	for k, l := range s.leases { // what leases still hold was taken from the store: it goes back
		if l.units > 0 {
			s.returning = append(s.returning, limiter.Adjustment{Key: k, Limit: l.limit, Refund: l.units, Cap: limiter.NoCap})
		}
		l.units, l.shortUntil, l.misses = 0, time.Time{}, 0
	}
	for _, v := range s.views {
		v.fetched = time.Time{} // read them again before deciding on them
	}
	s.mu.Unlock()
	s.log.LogAttrs(ctx, slog.LevelInfo, "shared store reachable again: outage mode over", slog.Duration("lasted", now.Sub(since)))
}

// Mode reports "normal" or "outage", and since when outage mode lasts.
func (s *Store) Mode() (string, time.Time) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.outage {
		return "outage", s.outSince
	}
	return "normal", time.Time{}
}
