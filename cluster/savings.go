package cluster

import (
	"maps"
	"slices"

	"github.com/tollgate/tollgate/limiter"
	"github.com/tollgate/tollgate/policy"
)

// Savings (limiter.Ending.Savings) of the calls a member ends: those of a
// reservation the shared store holds ride in its Finish (or in the queued
// end an outage holds back, told when the store returns); those of a
// local reservation go, in the step that ends it, into Store.saved, the
// savings journal, which the next batch carries into the shared store with
// the spend journal, exactly once (limiter.SpendDelta.Savings). Usage adds
// what is not booked yet.

// saveLocked journals what the first end of local reservation r books
// (see limiter.Ending.Booked) for its client and period. s.mu is held.
func (s *Store) saveLocked(r *localResv, e limiter.Ending) {
	saved := e.Booked()
	if len(saved) == 0 || len(r.owners) == 0 {
		return
	}
	if s.saved == nil {
		s.saved = map[viewKey]map[string]policy.Money{}
	}
	k := viewKey{r.owners[0], r.period}
	if s.saved[k] == nil {
		s.saved[k] = map[string]policy.Money{}
	}
	limiter.AddSavings(s.saved[k], saved)
}

// takeSaved moves k's journaled savings into a batch's delta: at most
// limiter.MaxDeltaSavings strategies, each at most what a delta may carry;
// what is left waits for the next batch. s.mu is held.
func (s *Store) takeSaved(k viewKey) []limiter.Saving {
	by := s.saved[k]
	var out []limiter.Saving
	for _, name := range slices.Sorted(maps.Keys(by)) {
		v := by[name]
		if v != 0 && len(out) == limiter.MaxDeltaSavings {
			break
		}
		part := max(min(v, limiter.MaxMoney-1), 1-limiter.MaxMoney)
		if part != 0 {
			out = append(out, limiter.Saving{Strategy: name, Amount: part})
		}
		if by[name] = v - part; by[name] == 0 {
			delete(by, name)
		}
	}
	if len(by) == 0 {
		delete(s.saved, k)
	}
	return out
}

// withUnbooked adds to savings (the shared store's) owner's savings in
// period that this member journaled and has not booked yet. s.mu is held.
func (s *Store) withUnbooked(savings []limiter.Saving, owner, period string) []limiter.Saving {
	k := viewKey{owner, period}
	pending := s.saved[k]
	var inflight []limiter.Saving
	if s.inflight != nil {
		for _, d := range s.inflight.deltas {
			if d.Owner == owner && d.Period == period {
				inflight = append(inflight, d.Savings...)
			}
		}
	}
	if len(pending) == 0 && len(inflight) == 0 {
		return savings
	}
	by := maps.Clone(pending)
	if by == nil {
		by = map[string]policy.Money{}
	}
	limiter.AddSavings(by, inflight)
	limiter.AddSavings(by, savings)
	return limiter.SavingsList(by)
}

// spentOnly leaves out the deltas that carry savings alone: the fleet
// hears of spend.
func spentOnly(deltas []limiter.SpendDelta) []limiter.SpendDelta {
	out := make([]limiter.SpendDelta, 0, len(deltas))
	for _, d := range deltas {
		if d.Spent != 0 {
			out = append(out, d)
		}
	}
	return out
}
