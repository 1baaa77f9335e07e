package cluster

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/tollgate/tollgate/limiter"
	"github.com/tollgate/tollgate/policy"
)

// Deciding here: what a call needs that this member does not hold (leases,
// slots, a budget slice), the decision taken from what it holds, and the
// one round trip that fetches what was missing.

// zeroCost says whether tryLocal reads the buckets of zero-cost takes
// (readZeroCost) or they were just read (zeroCostRead).
type zeroCost uint8

const (
	readZeroCost zeroCost = iota
	zeroCostRead
)

// need is what a local decision lacked.
type need struct {
	asks    []limiter.LeaseAsk
	slot    *limiter.SlotLease
	slice   policy.Money      // the size of a budget slice to take, or 0
	strict  bool              // only the shared store can decide it
	expired int               // local reservations ended at their estimate on the way
	denied  *limiter.Decision // refused here, by a key known to be short
}

// tryLocal decides req from leases and views, or says what it needs. s.mu
// is held.
func (s *Store) tryLocal(req limiter.Request, now time.Time, zc zeroCost) (limiter.Decision, *need, error) {
	var n need
	// A cost above a bucket's capacity never fits, whatever is leased: it
	// is refused here, and before any other reason (as ApplyHold ranks).
	for i, t := range req.Takes {
		if !t.Shadow && t.Cost > t.Limit.Capacity && s.leases[t.Key] != nil { // unknown: asked, to report its state
			d := s.deniedLocally(req, i, &lease{}, now)
			n.denied = &d
			return limiter.Decision{}, &n, nil
		}
	}
	read := req.Hold == nil
	for _, t := range req.Takes {
		read = read && t.Cost == 0
	}
	short := make([]bool, len(req.Takes))
	shortest := -1 // of the takes known to be short here, the one with the longest wait
	shortNeeds := make([]int64, len(req.Takes))
	exceeds := false // a take asked of the shared store can never fit: that is the reason to give
	for i, t := range req.Takes {
		l := s.leases[t.Key]
		if t.Cost == 0 {
			// A zero-cost take asks for the bucket's state. A request that
			// takes nothing is a read: it reads the shared store (a lease
			// of nothing) and reports what it holds with what is leased
			// here. Beside takes that cost, a bucket known here is reported
			// from what was last heard of it, without a round trip; one
			// never heard of is read, rather than reported empty.
			if zc == readZeroCost && (l == nil || read) {
				n.asks = append(n.asks, limiter.LeaseAsk{Key: t.Key, Limit: t.Limit})
			}
			continue
		}
		paused := l != nil && now.Before(l.pausedUntil)
		live := l != nil && now.Before(l.exp) && !paused
		if live && l.units >= t.Cost {
			continue
		}
		// What the lease still holds counts toward the call: ask only for
		// the rest, so that the shared bucket's answer (and its wait) is
		// the one a single store would give.
		need := t.Cost
		if live {
			need -= l.units
		}
		// A shadow bucket never denies; it is only reported: short when it
		// is known to be (or can never hold the cost), else leased as any.
		knownShort := l != nil && now.Before(l.shortUntil) && need >= l.shortNeed
		if t.Shadow && (paused || knownShort || t.Cost > t.Limit.Capacity) {
			short[i] = true
			continue
		}
		if paused {
			n.strict = true // the upstream asked to pause: the shared bucket says until when
			continue
		}
		if knownShort {
			l.noteRefusal(now, s.cfg.SyncEvery)
			if shortest < 0 || s.shortWait(l, need, now) > s.shortWait(s.leases[req.Takes[shortest].Key], shortNeeds[shortest], now) {
				shortest = i
			}
			shortNeeds[i] = need
			continue
		}
		if t.Cost > t.Limit.Capacity {
			exceeds = true
		}
		n.asks = append(n.asks, limiter.LeaseAsk{Key: t.Key, Limit: t.Limit, Want: s.want(t, l, now), Need: need})
	}
	if shortest >= 0 && !exceeds {
		d := s.deniedLocally(req, shortest, s.leases[req.Takes[shortest].Key], now)
		d.RetryAfter = s.shortWait(s.leases[req.Takes[shortest].Key], shortNeeds[shortest], now)
		d.Buckets[shortest].RetryAfter = d.RetryAfter
		n.denied = &d
		return limiter.Decision{}, &n, nil
	}
	h := req.Hold
	expired := 0
	if h != nil {
		if !h.Commit {
			_, live := s.resv[h.ID]
			_, remote := s.remote[h.ID]
			if _, ended := s.done[h.ID]; live || ended || remote {
				return limiter.Decision{}, nil, errDuplicate(h.ID)
			}
		}
		if limited(h.Budgets) {
			sl := s.slices[chainKey(h)]
			if sl == nil || !now.Before(sl.exp) || sl.left() < h.Cost {
				if n.slice = s.sliceSize(h, now); n.slice == 0 {
					n.strict = true // near a limit, or nothing known yet: the shared store decides
				}
			}
		}
		if h.Slot != nil && !h.Commit {
			sl := s.slots[h.Slot.Client]
			if sl != nil && sl.inUse >= sl.held {
				expired = s.expireSlots(h.Slot.Client, now)
			}
			if sl == nil || !now.Before(sl.exp) || sl.inUse >= sl.held || sl.max != h.Slot.Max {
				inUse := int64(0)
				if sl != nil {
					inUse = max(sl.inUse, sl.peak-1)
				}
				n.slot = &limiter.SlotLease{Client: h.Slot.Client, Max: h.Slot.Max, Holder: s.peers.Name(), Want: s.slotWant(inUse+1, h.Slot.Max), TTL: s.cfg.SlotTTL}
			}
		}
	}
	n.expired = expired
	if n.strict || len(n.asks) > 0 || n.slot != nil || n.slice > 0 {
		return limiter.Decision{}, &n, nil
	}
	// Everything is here: take it.
	return s.admitHere(req, short, expired, h != nil && limited(h.Budgets), now), nil, nil
}

// admitHere admits req on what this member holds: the units of its leases
// (but for the takes short marks, which are only reported), its hold from
// the chain's open slice (fromSlice) or booked, its slot from its lease of
// them. The caller has checked that all of it is there. s.mu is held.
func (s *Store) admitHere(req limiter.Request, short []bool, expired int, fromSlice bool, now time.Time) limiter.Decision {
	d := limiter.Decision{Allowed: true, Blocking: -1, BudgetBlocking: -1, Buckets: make([]limiter.BucketState, len(req.Takes)), Expired: expired}
	for i, t := range req.Takes {
		st := &d.Buckets[i]
		st.Key, st.Limit, st.Short = t.Key, t.Limit, short[i]
		l := s.leases[t.Key]
		if short[i] && l != nil && l.possible && t.Cost <= t.Limit.Capacity {
			st.RetryAfter = s.shortWait(l, t.Cost, now)
		}
		if !short[i] && t.Cost > 0 {
			l.units -= t.Cost
			l.spent += t.Cost
			l.used = now
			s.record(t.Key, t.Cost)
		}
		st.Remaining, st.ResetAfter = s.approxState(l, t.Limit, now)
	}
	h := req.Hold
	if h != nil {
		var from *slice
		if fromSlice {
			from = s.slices[chainKey(h)]
			from.spent += h.Cost
			d.Budgets = s.budgetStates(h, now)
		} else {
			d.Budgets = s.book(h, now)
		}
		if h.Slot != nil && !h.Commit {
			sl := s.slots[h.Slot.Client]
			sl.inUse++
			sl.peak = max(sl.peak, sl.inUse)
			sl.used = now
			d.InFlight = sl.inUse
		}
		if !h.Commit {
			r := &localResv{cost: h.Cost, period: h.Period, slice: from, exp: now.Add(h.TTL), charges: limiter.Charged(req.Takes, d)}
			for _, b := range h.Budgets {
				r.owners = append(r.owners, b.Owner)
			}
			if h.Slot != nil {
				r.client = h.Slot.Client
			}
			s.resv[h.ID] = r
		}
	}
	return d
}

// refresh gets what tryLocal lacked (leases, slots, a budget slice), one
// round trip each, and decides again. ok is false when the shared store
// must decide. The calls run to their end even if ctx is cancelled: what
// they take is recorded, and given back if unused.
func (s *Store) refresh(ctx context.Context, req limiter.Request, n *need, now time.Time) (limiter.Decision, bool, error) {
	bctx, cancel := background(ctx)
	defer cancel()
	// In the store's time (a request that names none), the asks and the
	// slot lease go in one batch with other calls' (coalesce.go).
	var together *leaseCall
	if bl, ok := s.raw.(limiter.BatchLeaser); ok && req.Now.IsZero() && (len(n.asks) > 0 || n.slot != nil) {
		together = &leaseCall{asks: n.asks}
		var release func()
		if n.slot != nil {
			release = s.holdSlotCall(n.slot.Client, n.slot.Max, func(sl *slotLease) int64 { return s.slotWant(max(sl.inUse+1, sl.peak), n.slot.Max) }, &together.slot)
		}
		s.leaseTogether(bctx, bl, together)
		if release != nil {
			if together.err == nil {
				s.slotsHeld(n.slot.Client, together.held.Held, time.Time{})
			}
			release()
		}
		if together.err != nil {
			return limiter.Decision{}, false, together.err
		}
	}
	if len(n.asks) > 0 {
		var grants []limiter.LeaseGrant
		var err error
		if together != nil {
			grants = together.grants
		} else if grants, err = s.shared.Lease(bctx, n.asks, req.Now); err != nil { // the request's time, if it names one
			return limiter.Decision{}, false, err
		}
		if len(grants) != len(n.asks) {
			return limiter.Decision{}, false, fmt.Errorf("cluster: %d lease grants for %d asks", len(grants), len(n.asks))
		}
		s.m.leases.Add(float64(len(grants)))
		// Of the buckets refused, the one to blame is the one ApplyHold
		// would: a cost that can never fit, else the longest wait, the
		// first on a tie.
		blame, blameAsk := -1, -1
		s.mu.Lock()
		for i, a := range n.asks {
			s.take(a, grants[i], now)
			s.leases[a.Key].storeClock = req.Now.IsZero()
			g := grants[i]
			if g.Granted > 0 || a.Need == 0 {
				continue
			}
			if idx := indexOf(req.Takes, a.Key); idx >= 0 && req.Takes[idx].Shadow {
				continue // reported short by tryLocal, never to blame
			}
			if blame < 0 || (!g.Possible && grants[blameAsk].Possible) ||
				(g.Possible == grants[blameAsk].Possible && g.Possible && g.RetryAfter > grants[blameAsk].RetryAfter) {
				if idx := indexOf(req.Takes, a.Key); idx >= 0 {
					blame, blameAsk = idx, i
				}
			}
		}
		var denied *limiter.Decision
		if blame >= 0 {
			d := s.deniedLocally(req, blame, s.leases[req.Takes[blame].Key], now)
			denied = &d
		}
		s.mu.Unlock()
		if denied != nil {
			return *denied, true, nil
		}
	}
	if n.slot != nil {
		var held, inFlight int64
		if together != nil {
			held, inFlight = together.held.Held, together.held.InFlight
		} else {
			var err error
			held, inFlight, err = s.leaseSlotsAt(bctx, req.Now, n.slot.Client, n.slot.Max, func(sl *slotLease) int64 { return s.slotWant(max(sl.inUse+1, sl.peak), n.slot.Max) })
			if err != nil {
				return limiter.Decision{}, false, err
			}
		}
		s.mu.Lock()
		var denied *limiter.Decision
		// The sync's prune may have dropped the client's entry (granted
		// none, none in use) since the lease call let it go: none in use.
		var inUse int64
		if sl := s.slots[n.slot.Client]; sl != nil {
			inUse = sl.inUse
		}
		if inUse >= held {
			// Refused as the shared store would: every bucket and budget
			// reported (one state each), nothing taken.
			d := limiter.Decision{Reason: limiter.ReasonConcurrency, Blocking: -1, BudgetBlocking: -1, InFlight: inFlight,
				Buckets: make([]limiter.BucketState, len(req.Takes)), Budgets: s.budgetStates(req.Hold, now)}
			for j, t := range req.Takes {
				d.Buckets[j] = limiter.BucketState{Key: t.Key, Limit: t.Limit}
				d.Buckets[j].Remaining, d.Buckets[j].ResetAfter = s.approxState(s.leases[t.Key], t.Limit, now)
			}
			denied = &d
		}
		s.mu.Unlock()
		if denied != nil {
			return *denied, true, nil
		}
	}
	if n.slice > 0 {
		// One call at a time takes a chain's slice: the others that missed
		// it meanwhile wait for it and decide from it.
		key := chainKey(req.Hold)
		s.mu.Lock()
		flight, flying := s.sliceFlight[key]
		if !flying {
			flight = make(chan struct{})
			s.sliceFlight[key] = flight
		}
		s.mu.Unlock()
		if flying {
			<-flight
		} else {
			ok, err := s.takeSlice(bctx, req, n.slice, now)
			s.mu.Lock()
			delete(s.sliceFlight, key)
			s.mu.Unlock()
			close(flight)
			if err != nil || !ok {
				return limiter.Decision{}, false, err
			}
		}
	}
	s.mu.Lock()
	d, again, err := s.tryLocal(req, now, zeroCostRead)
	s.mu.Unlock()
	if err != nil {
		return limiter.Decision{}, false, err
	}
	if again != nil {
		if again.denied != nil {
			return *again.denied, true, nil
		}
		return limiter.Decision{}, false, nil // raced away, or a hold only the shared store decides
	}
	return d, true, nil
}

// takeSlice reserves a slice of size of req's budget chain in the shared
// store and opens it; ok is false when the shared store must decide.
func (s *Store) takeSlice(bctx context.Context, req limiter.Request, size policy.Money, now time.Time) (ok bool, err error) {
	h := req.Hold
	s.mu.Lock()
	id, snaps := s.nextSliceID(), s.snapsOf(h)
	s.mu.Unlock()
	d, err := s.shared.Reserve(bctx, limiter.Request{Hold: &limiter.Hold{ID: id, TTL: s.cfg.SliceTTL + sliceGrace,
		Period: h.Period, Cost: size, Budgets: h.Budgets}, Now: req.Now})
	if err != nil {
		// It may have been reserved without an answer: release it once
		// the store answers (releasing an unknown id does nothing).
		s.mu.Lock()
		s.ends = append(s.ends, pendingEnd{id: id, outcome: limiter.OutcomeReleased})
		s.mu.Unlock()
		if errors.Is(err, limiter.ErrDuplicateReservation) {
			// The id is new: only this call's own first attempt can
			// have used it (a client that retried a request whose
			// answer was lost). No slice, then: the shared store
			// decides the call.
			return false, nil
		}
		return false, err
	}
	s.m.slices.Inc()
	s.mu.Lock()
	s.learnBudgets(h, d.Budgets, snaps, now)
	if d.Allowed {
		s.openSlice(h, id, size, now)
	}
	s.mu.Unlock()
	if !d.Allowed {
		return false, nil // closer to the limit than the view said: the shared store decides
	}
	return true, nil
}

func indexOf(takes []limiter.Take, k limiter.Key) int {
	for i, t := range takes {
		if t.Key == k {
			return i
		}
	}
	return -1
}
