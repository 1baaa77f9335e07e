package memstore

import (
	"cmp"
	"maps"
	"slices"
	"time"

	"github.com/tollgate/tollgate/limiter"
	"github.com/tollgate/tollgate/policy"
)

// savedEntry is one client's savings in one budget period.
type savedEntry struct {
	by map[string]policy.Money // by strategy
	at int64                   // the last booking (Unix µs)
}

// savedLedger holds clients' savings by budget period, under the ledger's
// lock. It is bounded as budgets are: by the policy's clients, times the
// periods booked in the last limiter.SavingsTTL (an entry is forgotten that
// long after its last booking, as Redis expires its key), times the
// strategies, which code names.
type savedLedger struct {
	by    map[budgetID]*savedEntry
	sweep int64 // when to look for entries past their TTL next (Unix µs)
}

// savedSweepEvery is how often forget scans the entries: a TTL of days
// needs no finer grain.
const savedSweepEvery = time.Hour

// book adds savings to owner's entry of period, booked at at.
func (s *savedLedger) book(owner, period string, savings []limiter.Saving, at int64) {
	k := budgetID{owner, period}
	e := s.by[k]
	if e == nil {
		e = &savedEntry{by: map[string]policy.Money{}}
		s.by[k] = e
	}
	limiter.AddSavings(e.by, savings)
	e.at = max(e.at, at)
}

// of lists owner's savings in period (see limiter.SavingsList).
func (s *savedLedger) of(owner, period string) []limiter.Saving {
	if e := s.by[budgetID{owner, period}]; e != nil {
		return limiter.SavingsList(e.by)
	}
	return nil
}

// forget drops the entries not booked to for limiter.SavingsTTL, looking
// at most once per savedSweepEvery.
func (s *savedLedger) forget(now int64) {
	if now < s.sweep {
		return
	}
	s.sweep = now + savedSweepEvery.Microseconds()
	ttl := limiter.SavingsTTL.Microseconds()
	for k, e := range s.by {
		if e.at+ttl <= now {
			delete(s.by, k)
		}
	}
}

// savingsRecord is savings as a journal line keeps them (nil for none).
func savingsRecord(savings []limiter.Saving) map[string]int64 {
	if len(savings) == 0 {
		return nil
	}
	out := make(map[string]int64, len(savings))
	for _, s := range savings {
		out[s.Strategy] += int64(s.Amount)
	}
	return out
}

// savedAt is the booking time a journal line keeps with savings (0, left
// out, for none).
func savedAt(savings []limiter.Saving, now int64) int64 {
	if len(savings) == 0 {
		return 0
	}
	return now
}

// savingsOfRecord reads a journal line's savings back, sorted by strategy.
func savingsOfRecord(rec map[string]int64) []limiter.Saving {
	out := make([]limiter.Saving, 0, len(rec))
	for _, name := range slices.Sorted(maps.Keys(rec)) {
		out = append(out, limiter.Saving{Strategy: name, Amount: policy.Money(rec[name])})
	}
	return out
}

// replay books a journal line's savings to the first of owners.
func (s *savedLedger) replay(owners []string, period string, rec map[string]int64, at int64) {
	if len(rec) > 0 && len(owners) > 0 {
		s.book(owners[0], period, savingsOfRecord(rec), at)
	}
}

// compactRecords are the journal lines of the state of s: one "s" line per
// entry with savings, in a stable order.
func (s *savedLedger) compactRecords() []journalRecord {
	ids := slices.SortedFunc(maps.Keys(s.by), func(a, b budgetID) int {
		if a.owner != b.owner {
			return cmp.Compare(a.owner, b.owner)
		}
		return cmp.Compare(a.period, b.period)
	})
	var out []journalRecord
	for _, id := range ids {
		e := s.by[id]
		rec := savingsRecord(limiter.SavingsList(e.by))
		if rec == nil {
			continue
		}
		out = append(out, journalRecord{Kind: "s", Period: id.period, Owners: []string{id.owner}, Savings: rec, At: e.at})
	}
	return out
}
