package cluster

import (
	"math"
	"time"

	"github.com/tollgate/tollgate/limiter"
	"github.com/tollgate/tollgate/policy"
)

// Budget views: what this member knows of a budget, from its last read of
// the shared store and what it has heard of since (its own spend, and its
// peers' by gossip). Views size budget slices and decide in outage mode.

type viewKey struct{ owner, period string }

// view is a budget as this member last saw it: base (spent and reserved)
// from the shared store at fetched, what is known to have been spent since
// (here, and elsewhere by gossip), and mine, this member's own part of it.
// A member spends locally at most its share of what was left above the
// margin at the fetch; the next fetch starts a new allowance.
type view struct {
	limit             policy.Money
	base, since, mine policy.Money
	fetched, touch    time.Time
}

// snap is a view before a read of the shared store: what was spent here
// meanwhile is added to what the read returns.
type snap struct {
	since, mine, unbooked policy.Money
}

func (s *Store) snapOf(owner, period string) snap {
	sn := snap{unbooked: s.unbooked(owner, period)}
	if v := s.views[viewKey{owner, period}]; v != nil {
		sn.since, sn.mine = v.since, v.mine
	}
	return sn
}

// rebase sets v from a read of the shared store (base: its spent and
// reserved) taken after sn. What was unbooked at sn may have been booked
// before the read and so be in base too: counting it twice errs on the
// safe side until the next read. s.mu is held.
func (v *view) rebase(base policy.Money, sn snap, now time.Time) {
	v.since = sn.unbooked + (v.since - sn.since)
	v.mine = sn.unbooked + (v.mine - sn.mine)
	v.base, v.fetched = base, now
}

func (v *view) remaining() policy.Money {
	if v.limit < 0 {
		return math.MaxInt64
	}
	return v.limit - v.base - v.since
}

// snapsOf snaps the views of a hold's budgets. s.mu is held.
func (s *Store) snapsOf(h *limiter.Hold) []snap {
	if h == nil {
		return nil
	}
	out := make([]snap, len(h.Budgets))
	for i, b := range h.Budgets {
		out[i] = s.snapOf(b.Owner, h.Period)
	}
	return out
}

// budgetStates reports a hold's budgets from this member's views (what the
// shared store held, slices included, and what was booked since). s.mu is
// held.
func (s *Store) budgetStates(h *limiter.Hold, now time.Time) []limiter.BudgetState {
	out := make([]limiter.BudgetState, len(h.Budgets))
	for i, b := range h.Budgets {
		v := s.viewOf(b, h.Period, now)
		v.touch = now
		out[i] = limiter.BudgetState{Owner: b.Owner, Limit: b.Limit, Spent: v.base + v.since}
	}
	return out
}

// viewOf returns the view of a budget, creating an empty one (known to no
// one yet: base zero, never fetched).
func (s *Store) viewOf(b limiter.Budget, period string, now time.Time) *view {
	k := viewKey{b.Owner, period}
	v := s.views[k]
	if v == nil {
		v = &view{limit: b.Limit, touch: now}
		s.views[k] = v
	}
	v.limit = b.Limit
	return v
}

// learnBudgets rebases the views of h's budgets on the shared store's
// states of them, read after snaps. s.mu is held.
func (s *Store) learnBudgets(h *limiter.Hold, states []limiter.BudgetState, snaps []snap, now time.Time) {
	for i, b := range states {
		if i < len(snaps) {
			s.viewOf(limiter.Budget{Owner: b.Owner, Limit: b.Limit}, h.Period, now).rebase(b.Spent+b.Reserved, snaps[i], now)
		}
	}
}

// Spend adds a peer's booked spend to this member's views.
func (s *Store) Spend(_ string, deltas []limiter.SpendDelta) {
	s.mu.Lock()
	defer s.mu.Unlock()
	for _, d := range deltas {
		if v := s.views[viewKey{d.Owner, d.Period}]; v != nil {
			v.since += d.Spent
		}
	}
}
