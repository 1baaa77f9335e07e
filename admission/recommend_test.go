package admission

import (
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/tollgate/tollgate/limiter"
	"github.com/tollgate/tollgate/policy"
)

// TestBudgetForecast: the projection is integer arithmetic on nano-dollars
// and seconds; nothing is said when the budget lasts, is unlimited, or the
// month is under a day old.
func TestBudgetForecast(t *testing.T) {
	d := policy.Defaults{Location: time.UTC}
	tenDays := time.Date(2026, 1, 11, 0, 0, 0, 0, time.UTC)
	tests := map[string]struct {
		budgets    []limiter.BudgetState
		now        time.Time
		wantSaving string
		wantMsg    string
	}{
		"runs out on the 17th": {
			// $0.0059175 in 10 of 31 days: $0.01834425 by the month's end.
			budgets: []limiter.BudgetState{{Owner: "acme", Limit: 10_000_000, Spent: 5_917_500}}, now: tenDays,
			wantSaving: "0.00834425",
			wantMsg:    "At this month's spend rate ($0.0059175 in 10 days), your $0.01 budget is exhausted on the 17th (2026-01-17): the month would cost $0.01834425, $0.00834425 over.",
		},
		"the parent's runs out first": {
			budgets: []limiter.BudgetState{{Owner: "acme", Limit: 100 * policy.NanosPerDollar, Spent: 1}, {Owner: "acme-group", Limit: 10 * policy.NanosPerDollar, Spent: 5 * policy.NanosPerDollar}},
			now:     tenDays, wantSaving: "5.5",
			wantMsg: "At this month's spend rate ($5.00 in 10 days), acme-group's $10.00 budget (which your calls share) is exhausted on the 21st (2026-01-21): the month would cost $15.50, $5.50 over.",
		},
		"already spent": {
			budgets: []limiter.BudgetState{{Owner: "acme", Limit: policy.NanosPerDollar, Spent: policy.NanosPerDollar}},
			now:     tenDays.Add(12 * time.Hour), wantSaving: "1.952380952",
			wantMsg: "At this month's spend rate ($1.00 in 10 days 12 hours), your $1.00 budget is exhausted already: the month would cost $2.952380952, $1.952380952 over.",
		},
		"on track":         {budgets: []limiter.BudgetState{{Owner: "acme", Limit: 100 * policy.NanosPerDollar, Spent: 30 * policy.NanosPerDollar}}, now: tenDays},
		"unbudgeted":       {budgets: []limiter.BudgetState{{Owner: "acme", Limit: limiter.Unlimited, Spent: 30 * policy.NanosPerDollar}}, now: tenDays},
		"nothing spent":    {budgets: []limiter.BudgetState{{Owner: "acme", Limit: 100}}, now: tenDays},
		"too early to say": {budgets: []limiter.BudgetState{{Owner: "acme", Limit: 10, Spent: 9}}, now: time.Date(2026, 1, 1, 23, 0, 0, 0, time.UTC)},
	}
	for name, tc := range tests {
		t.Run(name, func(t *testing.T) {
			r, ok := budgetForecast(d, "acme", tc.budgets, tc.now)
			if tc.wantMsg == "" {
				assert.False(t, ok, r.Message)
				return
			}
			require.True(t, ok)
			assert.Equal(t, RecommendBudget, r.Kind)
			assert.Equal(t, tc.wantSaving, r.Saving)
			assert.Equal(t, tc.wantMsg, r.Message)
			set, err := policy.Compile(policy.Source{Name: "p.yaml", Data: []byte(observeBase)}, policy.Source{Name: "r.yaml", Data: []byte(r.Rule)})
			require.NoError(t, err, r.Rule)
			assert.Equal(t, []string{"acme"}, set.Optimize.AggressiveClients)
		})
	}
}

// TestMoneyWords: the sentences' dollars and percentages.
func TestMoneyWords(t *testing.T) {
	for m, want := range map[policy.Money]string{41_200_000_000: "$41.20", 5_917_500: "$0.0059175", -500_000_000: "-$0.50", 0: "$0.00", 3 * policy.NanosPerDollar: "$3.00"} {
		assert.Equal(t, want, usd(m))
	}
	for bps, want := range map[int64]string{4850: "48.5", 5: "0.05", -125: "-1.25", 10_000: "100", 0: "0"} {
		assert.Equal(t, want, hundredths(bps))
	}
	for n, want := range map[int]string{1: "1st", 2: "2nd", 3: "3rd", 4: "4th", 11: "11th", 12: "12th", 13: "13th", 21: "21st", 22: "22nd", 23: "23rd", 31: "31st"} {
		assert.Equal(t, want, ordinal(n))
	}
}
