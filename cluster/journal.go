package cluster

import (
	"context"
	"time"

	"github.com/tollgate/tollgate/limiter"
	"github.com/tollgate/tollgate/policy"
)

// The spend journal: spend decided here (calls committed at once, and the
// differences of local reservations settled above or below their estimate)
// is journaled by budget period, and booked into the shared store in
// batches applied exactly once (bookJournal, in sync.go: a batch in flight
// is resent as it is until the store has it). Settles and releases the
// shared store could not be told yet wait in Store.ends.

// batch is spend from the journal booked under one id (resent as it is
// until the store has it).
type batch struct {
	id     string
	deltas []limiter.SpendDelta
}

// pendingEnd is a settle or release of a reservation the shared store
// holds, decided while it was unreachable; it is told when it returns.
type pendingEnd struct {
	id      string
	outcome limiter.Outcome
	actual  policy.Money
	used    []limiter.PoolUse // refunds the shared store gives from its record
	savings []limiter.Saving  // booked with the end by the shared store
	record  *limiter.CallRecord
	// For a slice: its chain (chainKey, and the owners in the period) and
	// the size reserved.
	chain  string
	owners []string
	period string
	size   policy.Money
	// tries counts the store's refusals (not outages) so far.
	tries int
}

// book books a hold's cost to its chain's budgets: into the journal (the
// shared store hears of it at the next sync) and into this member's views.
// It returns the budgets' states. s.mu is held.
func (s *Store) book(h *limiter.Hold, now time.Time) []limiter.BudgetState {
	out := make([]limiter.BudgetState, len(h.Budgets))
	for i, b := range h.Budgets {
		s.journal[viewKey{b.Owner, h.Period}] += h.Cost
		v := s.viewOf(b, h.Period, now)
		v.since += h.Cost
		v.mine += h.Cost
		v.touch = now
		out[i] = limiter.BudgetState{Owner: b.Owner, Limit: b.Limit, Spent: v.base + v.since}
	}
	return out
}

// unbooked is the spend of a budget decided here and not yet booked.
// s.mu is held.
func (s *Store) unbooked(owner, period string) policy.Money {
	sum := s.journal[viewKey{owner, period}]
	if s.inflight != nil {
		for _, d := range s.inflight.deltas {
			if d.Owner == owner && d.Period == period {
				sum += d.Spent
			}
		}
	}
	return sum
}

// flush tells the shared store what this member holds on h's budgets: it
// settles the chain's open slice (it could not serve the call, and what it
// has left would stand in the call's way), and books the journal when it
// holds spend on one of them (at most a few rounds: the batch in flight,
// then the rest).
func (s *Store) flush(ctx context.Context, h *limiter.Hold) error {
	if h == nil {
		return nil
	}
	s.mu.Lock()
	k := chainKey(h)
	sl := s.slices[k]
	if sl != nil {
		s.closeSlice(k, sl)
	}
	s.mu.Unlock()
	if err := s.replayEnds(ctx, func(e pendingEnd) bool { return e.chain == k }); err != nil {
		return err
	}
	for range 3 {
		s.mu.Lock()
		pending := false
		for _, b := range h.Budgets {
			if s.unbooked(b.Owner, h.Period) != 0 {
				pending = true
			}
		}
		s.mu.Unlock()
		if !pending {
			return nil
		}
		if err := s.bookJournal(ctx); err != nil {
			return err
		}
	}
	return nil
}

var _ limiter.Booker = (*Store)(nil)

// Book applies spend decided outside the fleet's decisions (calls that
// admission let through fail open) to the shared store, exactly once by
// batch id. It is passed through, not journaled here, so that a batch the
// caller resends after a lost answer is dropped by the shared store as a
// repeat; while the store is unreachable it fails, and the caller keeps
// the batch. This member's views hear of it at their next refresh.
func (s *Store) Book(ctx context.Context, batch string, deltas []limiter.SpendDelta) (bool, error) {
	return s.shared.Book(ctx, batch, deltas)
}
