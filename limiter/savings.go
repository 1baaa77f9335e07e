package limiter

import (
	"fmt"
	"maps"
	"slices"
	"time"

	"github.com/tollgate/tollgate/policy"
)

// Savings: what the cost-cutting strategies (a cheaper model, a cheaper
// processing tier, prompt caching, compaction) saved the calls they
// rewrote, booked exactly, per strategy. A settled reservation's savings
// go to its client (the first budget of its chain) for its budget period,
// in the same atomic step as the settlement (Ending.Savings), once: a
// repeated Finish, a release or an expiry books none. Stores keep them as
// long as budget periods (SavingsTTL after their last booking) and report
// them with the client's Usage.

// Saving is what one strategy saved one call, in nano-dollars: what the
// call would have cost without it less what it cost. It may be negative (a
// prompt-cache write that cost more than it saved this time): the sign is
// kept.
type Saving struct {
	Strategy string
	Amount   policy.Money
}

// Bounds of the savings of one Ending, and of one SpendDelta.
const (
	// MaxSavings is the most strategies one Ending may name.
	MaxSavings = 8
	// MaxDeltaSavings is the most strategies one SpendDelta may carry (a
	// fleet member's savings of one client and period since its last
	// sync, summed by strategy).
	MaxDeltaSavings = 64
	// MaxStrategyLen bounds a strategy's name.
	MaxStrategyLen = 32
)

// SavingsTTL is how long a client's savings of a period are kept after
// their last booking: as long as its budget period (BUDGET_TTL in the
// Redis scripts).
const SavingsTTL = 70 * 24 * time.Hour

// ValidStrategy reports whether name can name a strategy: 1 to
// MaxStrategyLen characters of a-z and _. Strategies are named by code (the
// optimizer), never by callers, so the ones a store keeps are few.
func ValidStrategy(name string) bool {
	if name == "" || len(name) > MaxStrategyLen {
		return false
	}
	for i := 0; i < len(name); i++ {
		if c := name[i]; (c < 'a' || c > 'z') && c != '_' {
			return false
		}
	}
	return true
}

// ValidateSavings refuses savings no store can book: more than MaxSavings
// strategies, a name ValidStrategy refuses, a strategy named twice, or an
// amount whose size is MaxMoney or more.
func ValidateSavings(savings []Saving) error {
	if err := validateSavings(savings, MaxSavings); err != nil {
		return fmt.Errorf("limiter: %w", err)
	}
	return nil
}

func validateSavings(savings []Saving, most int) error {
	if len(savings) > most {
		return fmt.Errorf("savings: %d strategies, more than %d", len(savings), most)
	}
	for i, s := range savings {
		if !ValidStrategy(s.Strategy) {
			return fmt.Errorf("savings: strategy %q is not 1 to %d characters of a-z and _", s.Strategy, MaxStrategyLen)
		}
		if s.Amount <= -MaxMoney || s.Amount >= MaxMoney {
			return fmt.Errorf("savings: %s: amount %d out of range (-2^53, 2^53)", s.Strategy, s.Amount)
		}
		for _, t := range savings[:i] {
			if t.Strategy == s.Strategy {
				return fmt.Errorf("savings: strategy %s named twice", s.Strategy)
			}
		}
	}
	return nil
}

// SavingsList lists savings by strategy, sorted by name, leaving out the
// strategies whose amounts sum to zero: the form Usage reports.
func SavingsList(by map[string]policy.Money) []Saving {
	var out []Saving
	for _, name := range slices.Sorted(maps.Keys(by)) {
		if by[name] != 0 {
			out = append(out, Saving{Strategy: name, Amount: by[name]})
		}
	}
	return out
}

// AddSavings adds savings into by, by strategy; by must not be nil.
func AddSavings(by map[string]policy.Money, savings []Saving) {
	for _, s := range savings {
		by[s.Strategy] += s.Amount
	}
}

// SavingsTotal is the sum of savings.
func SavingsTotal(savings []Saving) policy.Money {
	var t policy.Money
	for _, s := range savings {
		t += s.Amount
	}
	return t
}

// Booked is what the first Finish of e books to the reservation's client:
// its savings, less zero amounts, when it settles; nothing when it
// releases. Every store books this and only this.
func (e Ending) Booked() []Saving {
	if e.Outcome != OutcomeSettled {
		return nil
	}
	var out []Saving
	for _, s := range e.Savings {
		if s.Amount != 0 {
			out = append(out, s)
		}
	}
	return out
}
