package redisstore

import (
	"fmt"

	"github.com/tollgate/tollgate/limiter"
	"github.com/tollgate/tollgate/policy"
)

// savingsKey is owner's savings in period: its budget key with s: for b:
// (finish.lua derives it so from a reservation's record).
func savingsKey(p, owner, period string) string {
	return p + "s:" + lenPrefixed(owner) + ":" + period
}

// appendSavings appends savings to a script's arguments as finish.lua and
// book.lua read them: their count, then each strategy and amount (an
// integer argument, which HINCRBY adds exactly).
func appendSavings(args []any, savings []limiter.Saving) []any {
	args = append(args, len(savings))
	for _, s := range savings {
		args = append(args, s.Strategy, int64(s.Amount))
	}
	return args
}

// decodeSavings reads the savings at the end of usage.lua's reply (m, then
// m strategies and amounts), refusing a tail of the wrong shape, a name
// no Ending could carry, or a strategy twice.
func decodeSavings(tail []any, r *reply) []limiter.Saving {
	if len(tail) == 0 {
		r.fail(fmt.Errorf("no savings count"))
		return nil
	}
	t := reply{v: tail}
	m := t.int(0)
	if t.err == nil && (m < 0 || int64(len(tail)) != 1+2*m) {
		t.err = fmt.Errorf("savings: %d values for %d strategies", len(tail)-1, m)
	}
	by := map[string]policy.Money{}
	for i := 0; t.err == nil && i < int(m); i++ {
		name, amount := t.str(1+2*i), t.int(2+2*i)
		if _, twice := by[name]; t.err == nil && (twice || !limiter.ValidStrategy(name)) {
			t.err = fmt.Errorf("savings: strategy %q is invalid or named twice", name)
		}
		by[name] = policy.Money(amount)
	}
	if t.err != nil {
		r.fail(t.err)
		return nil
	}
	return limiter.SavingsList(by)
}

// fail remembers err unless an error came first.
func (r *reply) fail(err error) {
	if r.err == nil {
		r.err = err
	}
}
