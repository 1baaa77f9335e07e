package cluster

import (
	"time"

	"github.com/tollgate/tollgate/limiter"
)

// decideHeld decides req on what this member holds, when the shared store
// did not answer in time but is not down (see health.go): the units its
// leases hold (taken from the shared buckets already), the chain's open
// budget slice or, far from the chain's limits (where a slice would have
// been granted), the hold booked here as a budget without a limit is; the
// slots it leased. What it does not hold is refused for now, as
// rate_limited with a retry after the next probe (slowRetry): never an
// error, and never a unit the shared store did not hand out, so the
// fleet's bound holds.
// s.mu is held.
func (s *Store) decideHeld(req limiter.Request, now time.Time) (limiter.Decision, error) {
	h := req.Hold
	if h != nil && !h.Commit {
		_, live := s.resv[h.ID]
		_, ended := s.done[h.ID]
		_, remote := s.remote[h.ID]
		if live || ended || remote {
			return limiter.Decision{}, errDuplicate(h.ID)
		}
	}
	short := make([]bool, len(req.Takes))
	blame, wait := -1, time.Duration(0)
	for i, t := range req.Takes {
		l := s.leases[t.Key]
		// A lapsed lease's units not yet handed back were taken from the
		// shared bucket all the same: they may still be spent.
		if t.Cost == 0 || (l != nil && !now.Before(l.pausedUntil) && l.units >= t.Cost) {
			continue
		}
		short[i] = true
		if t.Shadow {
			continue // reported short, never refused for
		}
		w := s.slowRetry()
		if l != nil && now.Before(l.pausedUntil) {
			w = max(w, l.pausedUntil.Sub(now))
		}
		if blame < 0 || w > wait {
			blame, wait = i, w
		}
	}
	fromSlice, held := false, true
	if h != nil {
		if limited(h.Budgets) {
			sl := s.slices[chainKey(h)]
			switch {
			case sl != nil && !sl.closed && now.Before(sl.exp) && sl.left() >= h.Cost:
				fromSlice = true
			case s.sliceSize(h, now) == 0:
				held = false // near a limit, or no fresh view: only the shared store can say
			}
		}
		if h.Slot != nil && !h.Commit {
			if sl := s.slots[h.Slot.Client]; sl == nil || !now.Before(sl.exp) || sl.inUse >= sl.held || sl.max != h.Slot.Max {
				held = false
			}
		}
	}
	if blame < 0 && held {
		return s.admitHere(req, short, 0, fromSlice, now), nil
	}
	d := limiter.Decision{Reason: limiter.ReasonRateLimited, Blocking: blame, BudgetBlocking: -1, RetryAfter: max(wait, s.slowRetry()),
		Buckets: make([]limiter.BucketState, len(req.Takes))}
	for j, t := range req.Takes {
		d.Buckets[j] = limiter.BucketState{Key: t.Key, Limit: t.Limit, Short: short[j]}
		d.Buckets[j].Remaining, d.Buckets[j].ResetAfter = s.approxState(s.leases[t.Key], t.Limit, now)
	}
	if blame >= 0 {
		d.Buckets[blame].RetryAfter = d.RetryAfter
	}
	if h != nil {
		d.Budgets = s.budgetStates(h, now)
	}
	return d, nil
}

// slowRetry is when a call refused for want of an answer may try again:
// after the sync loop's next probe, or when the store would be found down.
func (s *Store) slowRetry() time.Duration { return min(s.cfg.SyncEvery, s.cfg.DownAfter) }
