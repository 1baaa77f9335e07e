package cluster

import (
	"context"
	"errors"
	"log/slog"
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

// Settle commits a reservation at its actual cost (Finish without refunds
// or throttles).
func (s *Store) Settle(ctx context.Context, id string, actual policy.Money) (limiter.Settlement, error) {
	return s.Finish(ctx, limiter.Ending{ID: id, Outcome: limiter.OutcomeSettled, Actual: actual})
}

// Release returns a reservation whole (Finish without refunds or
// throttles).
func (s *Store) Release(ctx context.Context, id string) (limiter.Settlement, error) {
	return s.Finish(ctx, limiter.Ending{ID: id, Outcome: limiter.OutcomeReleased})
}

// Finish ends a reservation. One decided here ends here (the difference
// from its estimate is booked, its slot freed); its refunds go back to this
// member's leases, or are queued for the shared store as the units of
// lapsed leases are; its throttles go to the shared store and are gossiped
// (see Throttle). One the shared store holds (or an id unknown here) ends
// there, refunds and throttles with it, in one shared Finish; the throttles
// also reach this member's leases and the fleet. While the shared store is
// unreachable, the end is told when it returns (ending is idempotent by
// id) and the throttles apply to this member's shares.
//
// Once the reservation has ended, a failure to apply the throttles is
// logged, not returned: the settlement stands.
func (s *Store) Finish(ctx context.Context, e limiter.Ending) (limiter.Settlement, error) {
	if err := ctx.Err(); err != nil {
		return limiter.Settlement{}, err
	}
	if err := e.Validate(); err != nil {
		return limiter.Settlement{}, err
	}
	now := e.Now
	if now.IsZero() {
		now = s.cfg.Clock.Now()
	}
	s.mu.Lock()
	if st, ok := s.done[e.ID]; ok {
		s.mu.Unlock()
		st.Repeat = true
		s.throttleAfter(ctx, e)
		return st, nil
	}
	if r := s.resv[e.ID]; r != nil {
		st := s.finishLocked(e.ID, r, e.Outcome, e.Actual, now)
		s.saveLocked(r, e)
		s.recordLocked(e, st, now)
		s.refundLocked(r, e.Refunds(r.charges), now)
		s.mu.Unlock()
		s.throttleAfter(ctx, e)
		return st, nil
	}
	outage := s.outage
	s.mu.Unlock()
	if !outage {
		st, err := s.shared.Finish(ctx, e)
		if err == nil || !s.unreachable(ctx, err) {
			if err == nil || errors.Is(err, limiter.ErrUnknownReservation) {
				s.signalled(limiter.ThrottleAdjustments(e.Throttles), now)
			}
			return st, err
		}
		s.judge(ctx, err)
	}
	// The shared store holds the reservation and cannot be told now: tell
	// it when it answers (ending is idempotent by id, so a settle that
	// landed without an answer is told again harmlessly).
	s.mu.Lock()
	s.ends = append(s.ends, pendingEnd{id: e.ID, outcome: e.Outcome, actual: e.Actual, used: e.Used, savings: e.Booked(), record: e.Record})
	s.mu.Unlock()
	s.throttleAfter(ctx, e)
	return limiter.Settlement{ID: e.ID, Outcome: e.Outcome, Spent: e.Actual}, nil
}

// throttleAfter applies an ending's throttles once the reservation's end is
// settled here (see Throttle), logging a failure.
func (s *Store) throttleAfter(ctx context.Context, e limiter.Ending) {
	if len(e.Throttles) == 0 {
		return
	}
	if _, err := s.Throttle(ctx, e.Throttles, e.Now); err != nil {
		s.log.LogAttrs(ctx, slog.LevelWarn, "upstream throttles of a finished call not applied", slog.String("id", e.ID), slog.Any("error", err))
	}
}

// refundLocked gives a local reservation's refunds back: to this member's
// lease of each bucket while it can take them, else to the shared store
// at the next sync (as a lapsed lease's units). A reservation decided in
// outage mode was charged to this member's share of the bucket: its refunds
// go back there, or nowhere once outage mode (and the share) is over.
// s.mu is held.
func (s *Store) refundLocked(r *localResv, refunds []limiter.Refund, now time.Time) {
	for _, f := range refunds {
		switch l := s.leases[f.Key]; {
		case f.Units == 0:
		case r.outage:
			if b := s.outBkt[f.Key]; s.outage && b != nil {
				lim := s.outLimit[f.Key]
				*b = limiter.ApplyAdjust(b.Advance(lim, limiter.Micros(now)), limiter.Refund{Key: f.Key, Limit: lim, Units: f.Units}.Adjustment())
			}
		case l != nil && now.Before(l.exp) && !now.Before(l.pausedUntil) && l.units+f.Units >= 0:
			l.units = min(l.units+f.Units, f.Limit.Capacity)
		default:
			s.returning = append(s.returning, f.Adjustment())
		}
	}
}

// signalled applies throttles the shared store has applied to this
// member's leases, and tells the fleet of those it must hear.
func (s *Store) signalled(adj []limiter.Adjustment, now time.Time) {
	if len(adj) == 0 {
		return
	}
	s.mu.Lock()
	for _, a := range adj {
		if l := s.leases[a.Key]; l != nil && (a.Cap >= 0 || a.Pause > 0) {
			s.signalLocked(l, a.Pause, a.Cap, now)
		}
	}
	s.mu.Unlock()
	for _, a := range adj {
		s.gossip(a)
	}
}

// gossip tells the fleet of a signal the shared store has taken: pauses,
// and reports near the limit (far from it, each member's own responses
// keep it in line).
func (s *Store) gossip(a limiter.Adjustment) {
	if a.Key.Client == "" && (a.Pause > 0 || (a.Cap >= 0 && a.Cap < a.Limit.Capacity*s.cfg.NearLimitPercent/100)) {
		s.peers.Backoff(a.Key.Pool, a.Pause, a.Cap)
	}
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
		u.Savings = s.withUnbooked(u.Savings, owner, period)
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
	if err := ctx.Err(); err != nil {
		return nil, err
	}
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
			// The cap bounds what is left in all: the shared bucket and the
			// units leased here. A report of more than that changes nothing:
			// skip the round trip (most responses carry one).
			if a.Pause > 0 || l == nil || a.Cap < l.left+l.refilled(a.Limit, at)+max(l.units, 0) {
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
		s.judge(ctx, err)
		return nil, err
	}
	s.mu.Lock()
	for j, i := range remoteIdx {
		out[i] = st[j]
		// A cap leaves this member at most what the shared bucket does not
		// hold of it: the units leased here count against the cap too.
		if a := remote[j]; a.Cap >= 0 && a.Pause <= 0 {
			if l := s.leases[a.Key]; l != nil && l.units > 0 {
				l.units = min(l.units, max(a.Cap-st[j].Remaining, 0))
				out[i].Remaining = min(st[j].Remaining+l.units, a.Limit.Capacity)
			}
		}
	}
	s.mu.Unlock()
	for j := range remoteIdx {
		s.gossip(remote[j])
	}
	return out, nil
}
