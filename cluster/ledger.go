package cluster

import (
	"context"
	"fmt"
	"time"

	"github.com/tollgate/tollgate/limiter"
	"github.com/tollgate/tollgate/policy"
)

// doneRetention is how long the outcome of a reservation ended here is
// kept, so that a repeated settle or release is recognised (the shared
// stores keep theirs a day; a member keeps its own in memory, so for less,
// and at most maxDone of them).
const (
	doneRetention = 30 * time.Minute
	maxDone       = 100_000
)

// Settle commits a reservation at its actual cost: a local one here (the
// difference from its estimate is booked), a shared one in the shared
// store (or, while it is unreachable, when it returns).
func (s *Store) Settle(ctx context.Context, id string, actual policy.Money) (limiter.Settlement, error) {
	if actual < 0 || actual >= limiter.MaxMoney {
		return limiter.Settlement{}, fmt.Errorf("cluster: settle %q: cost %d out of range", id, actual)
	}
	return s.end(ctx, id, limiter.OutcomeSettled, actual)
}

// Release returns a reservation whole.
func (s *Store) Release(ctx context.Context, id string) (limiter.Settlement, error) {
	return s.end(ctx, id, limiter.OutcomeReleased, 0)
}

func (s *Store) end(ctx context.Context, id string, o limiter.Outcome, actual policy.Money) (limiter.Settlement, error) {
	if err := ctx.Err(); err != nil {
		return limiter.Settlement{}, err
	}
	now := s.cfg.Clock.Now()
	s.mu.Lock()
	if st, ok := s.done[id]; ok {
		s.mu.Unlock()
		st.Repeat = true
		return st, nil
	}
	if r := s.resv[id]; r != nil {
		st := s.finishLocked(id, r, o, actual, now)
		s.mu.Unlock()
		return st, nil
	}
	outage := s.outage
	s.mu.Unlock()
	if !outage {
		var st limiter.Settlement
		var err error
		if o == limiter.OutcomeSettled {
			st, err = s.shared.Settle(ctx, id, actual)
		} else {
			st, err = s.shared.Release(ctx, id)
		}
		if err == nil || !s.unreachable(ctx, err) {
			return st, err
		}
		s.mu.Lock()
		s.enterOutage(now, err)
		s.mu.Unlock()
	}
	// The shared store holds the reservation and cannot be told now: tell
	// it when it returns (ending a reservation is idempotent by id).
	s.mu.Lock()
	s.ends = append(s.ends, pendingEnd{id: id, outcome: o, actual: actual})
	s.mu.Unlock()
	return limiter.Settlement{ID: id, Outcome: o, Spent: actual}, nil
}

// finishLocked ends a local reservation: what it spent beyond (or short
// of) its estimate goes to its slice while that is open, else is booked;
// its slot is freed. s.mu is held.
func (s *Store) finishLocked(id string, r *localResv, o limiter.Outcome, actual policy.Money, now time.Time) limiter.Settlement {
	spend := o.Spend(r.cost, actual)
	if diff := spend - r.cost; diff != 0 && r.slice != nil && !r.slice.closed {
		r.slice.spent += diff // the slice is settled at what it spent
	} else if diff != 0 {
		for _, owner := range r.owners {
			s.journal[viewKey{owner, r.period}] += diff
			if v := s.views[viewKey{owner, r.period}]; v != nil {
				v.since += diff
				v.mine += diff
			}
		}
	}
	if r.client != "" {
		if sl := s.slots[r.client]; sl != nil && sl.inUse > 0 {
			sl.inUse--
		}
		if n := s.outSlots[r.client]; n > 0 {
			s.outSlots[r.client] = n - 1
		}
	}
	delete(s.resv, id)
	st := limiter.Settlement{ID: id, Outcome: o, Estimated: r.cost, Spent: spend}
	s.done[id] = st
	s.doneQ = append(s.doneQ, doneItem{id: id, exp: now.Add(doneRetention)})
	if len(s.doneQ) > maxDone+maxDone/10 {
		s.forgetDone(now, len(s.doneQ)-maxDone)
	}
	return st
}

// forgetDone forgets the outcomes past their retention, and at least the
// oldest n. s.mu is held.
func (s *Store) forgetDone(now time.Time, n int) {
	k := 0
	for k < len(s.doneQ) && (k < n || !now.Before(s.doneQ[k].exp)) {
		delete(s.done, s.doneQ[k].id)
		k++
	}
	if k > 0 {
		s.doneQ = append(s.doneQ[:0:0], s.doneQ[k:]...)
	}
}

// Expire ends, at their estimate, the local reservations past their TTL
// (their estimate is already booked: nothing is lost), forgets old
// outcomes, and asks the shared store to expire its own.
func (s *Store) Expire(ctx context.Context, now time.Time, max int) (int, error) {
	if err := ctx.Err(); err != nil {
		return 0, err
	}
	local := now
	if local.IsZero() {
		local = s.cfg.Clock.Now()
	}
	s.mu.Lock()
	n := 0
	for id, r := range s.resv {
		if n >= max {
			break
		}
		if !local.Before(r.exp) {
			s.finishLocked(id, r, limiter.OutcomeExpired, 0, local)
			n++
		}
	}
	s.forgetDone(local, 0)
	outage := s.outage
	s.mu.Unlock()
	if outage || n >= max {
		return n, nil
	}
	m, err := s.shared.Expire(ctx, now, max-n)
	if err != nil && s.unreachable(ctx, err) {
		return n, nil // outage mode comes from the sync loop's probe
	}
	return n + m, err
}

// Usage reports a budget chain from the shared store, with what this member
// decided and has not booked yet; while the store is unreachable, from this
// member's views.
func (s *Store) Usage(ctx context.Context, period string, budgets []limiter.Budget, now time.Time) (limiter.Usage, error) {
	s.mu.Lock()
	outage := s.outage
	s.mu.Unlock()
	var u limiter.Usage
	if !outage {
		var err error
		u, err = s.shared.Usage(ctx, period, budgets, now)
		if err != nil && !s.unreachable(ctx, err) {
			return limiter.Usage{}, err
		}
		outage = err != nil
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if outage {
		u = limiter.Usage{Budgets: make([]limiter.BudgetState, len(budgets))}
		for i, b := range budgets {
			u.Budgets[i] = limiter.BudgetState{Owner: b.Owner, Limit: b.Limit}
			if v := s.views[viewKey{b.Owner, period}]; v != nil {
				u.Budgets[i].Spent = v.base // the unbooked part is added below
			}
		}
	}
	for i := range u.Budgets {
		b := &u.Budgets[i]
		b.Spent += s.unbooked(b.Owner, period)
		if outage {
			continue
		}
		// This member's open slices are reserved in the shared store in
		// full; here what they spent is known.
		for k, sl := range s.slices {
			if sliceHas(k, period, b.Owner) {
				b.Spent += sl.spent
				b.Reserved = max(b.Reserved-sl.size, 0)
			}
		}
		for _, e := range s.ends { // closed slices not yet settled
			if e.chain != "" && sliceHas(e.chain, period, b.Owner) {
				b.Spent += e.actual
				b.Reserved = max(b.Reserved-e.size, 0)
			}
		}
	}
	if len(budgets) > 0 {
		owner := budgets[0].Owner
		if sl := s.slots[owner]; sl != nil && sl.held > 0 {
			// The shared count has this member's leased slots, not its calls.
			u.InFlight += sl.inUse - sl.held
		}
		if outage {
			u.InFlight = s.outSlots[owner]
		}
		u.InFlight = max(u.InFlight, 0)
	}
	return u, nil
}

// Refund gives units back to buckets, or charges more: to this member's
// lease of the bucket while it has one (the units come back where they
// were spent), else to the shared bucket.
func (s *Store) Refund(ctx context.Context, refunds []limiter.Refund, now time.Time) ([]limiter.BucketState, error) {
	return s.adjust(ctx, limiter.RefundAdjustments(refunds), now, func(ctx context.Context, idx []int) ([]limiter.BucketState, error) {
		remote := make([]limiter.Refund, len(idx))
		for j, i := range idx {
			remote[j] = refunds[i]
		}
		return s.shared.Refund(ctx, remote, now)
	})
}

// Throttle applies the upstream's own signals (a cap, a pause): they go to
// the shared bucket, empty this member's lease of it, and are gossiped so
// that every member stops leasing it.
func (s *Store) Throttle(ctx context.Context, throttles []limiter.Throttle, now time.Time) ([]limiter.BucketState, error) {
	return s.adjust(ctx, limiter.ThrottleAdjustments(throttles), now, func(ctx context.Context, idx []int) ([]limiter.BucketState, error) {
		remote := make([]limiter.Throttle, len(idx))
		for j, i := range idx {
			remote[j] = throttles[i]
		}
		return s.shared.Throttle(ctx, remote, now)
	})
}

// adjust corrects buckets (Refund's and Throttle's common part): what can
// be applied here is, and shared applies the rest (the adjustments at idx)
// in the shared store, in one call.
func (s *Store) adjust(ctx context.Context, adj []limiter.Adjustment, now time.Time,
	shared func(ctx context.Context, idx []int) ([]limiter.BucketState, error)) ([]limiter.BucketState, error) {
	if err := limiter.ValidateAdjustments(adj); err != nil {
		return nil, err
	}
	at := now
	if at.IsZero() {
		at = s.cfg.Clock.Now()
	}
	out := make([]limiter.BucketState, len(adj))
	var remote []limiter.Adjustment
	var remoteIdx []int
	s.mu.Lock()
	for i, a := range adj {
		out[i] = limiter.BucketState{Key: a.Key, Limit: a.Limit}
		l := s.leases[a.Key]
		signal := a.Cap >= 0 || a.Pause > 0
		if s.outage {
			if b := s.outBkt[a.Key]; b != nil {
				lim := s.outLimit[a.Key]
				*b = limiter.ApplyAdjust(b.Advance(lim, limiter.Micros(at)), limiter.Adjustment{Key: a.Key, Limit: lim, Refund: a.Refund, Cap: a.Cap, Pause: a.Pause})
				out[i].Remaining, out[i].ResetAfter = b.State(lim)
			}
			continue
		}
		switch {
		case signal:
			if l != nil {
				s.signalLocked(l, a.Pause, a.Cap, at)
			}
			// A report of more units than the shared bucket holds changes
			// nothing there: skip the round trip (most responses carry one).
			if a.Pause > 0 || l == nil || a.Cap < l.left+l.refilled(a.Limit, at) {
				remote, remoteIdx = append(remote, a), append(remoteIdx, i)
			} else {
				out[i].Remaining, out[i].ResetAfter = s.approxState(l, a.Limit, at)
			}
		case l != nil && at.Before(l.exp) && !at.Before(l.pausedUntil) && l.units+a.Refund >= 0:
			l.units = min(l.units+a.Refund, a.Limit.Capacity)
			out[i].Remaining, out[i].ResetAfter = s.approxState(l, a.Limit, at)
		default:
			remote, remoteIdx = append(remote, a), append(remoteIdx, i)
		}
	}
	outage := s.outage
	s.mu.Unlock()
	if outage || len(remote) == 0 {
		return out, nil
	}
	st, err := shared(ctx, remoteIdx)
	if err != nil {
		if s.unreachable(ctx, err) {
			s.mu.Lock()
			s.enterOutage(at, err)
			s.mu.Unlock()
		}
		return nil, err
	}
	for j, i := range remoteIdx {
		out[i] = st[j]
		a := remote[j]
		// The fleet hears of pauses, and of reports near the limit (far from
		// it, each member's own responses keep it in line).
		if a.Key.Client == "" && (a.Pause > 0 || (a.Cap >= 0 && a.Cap < a.Limit.Capacity*s.cfg.NearLimitPercent/100)) {
			s.peers.Backoff(a.Key.Pool, a.Pause, a.Cap)
		}
	}
	return out, nil
}
