package limiter_test

import (
	"strings"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/tollgate/tollgate/limiter"
	"github.com/tollgate/tollgate/policy"
)

func sv(strategy string, amount policy.Money) limiter.Saving {
	return limiter.Saving{Strategy: strategy, Amount: amount}
}

func TestValidateSavings(t *testing.T) {
	many := func(n int) []limiter.Saving {
		out := make([]limiter.Saving, n)
		for i := range out {
			out[i] = sv(strings.Repeat("s", i+1), 1)
		}
		return out
	}
	tests := map[string]struct {
		savings []limiter.Saving
		err     string
	}{
		"none":                  {},
		"the brief's example":   {savings: []limiter.Saving{sv("downgrade", 41_200_000), sv("flex", 3_000_000)}},
		"negative and zero":     {savings: []limiter.Saving{sv("prompt_cache", -1_500), sv("compaction", 0)}},
		"the bounds":            {savings: []limiter.Saving{sv(strings.Repeat("_", 32), limiter.MaxMoney-1), sv("a", 1-limiter.MaxMoney)}},
		"eight":                 {savings: many(limiter.MaxSavings)},
		"nine":                  {savings: many(limiter.MaxSavings + 1), err: "limiter: savings: 9 strategies, more than 8"},
		"empty name":            {savings: []limiter.Saving{sv("", 1)}, err: `strategy "" is not 1 to 32 characters of a-z and _`},
		"33 characters":         {savings: []limiter.Saving{sv(strings.Repeat("a", 33), 1)}, err: "is not 1 to 32 characters"},
		"upper case":            {savings: []limiter.Saving{sv("Flex", 1)}, err: `strategy "Flex"`},
		"digit":                 {savings: []limiter.Saving{sv("flex2", 1)}, err: `strategy "flex2"`},
		"not ASCII":             {savings: []limiter.Saving{sv("flé", 1)}, err: "is not 1 to 32"},
		"twice":                 {savings: []limiter.Saving{sv("flex", 1), sv("flex", -1)}, err: "strategy flex named twice"},
		"2^53":                  {savings: []limiter.Saving{sv("flex", limiter.MaxMoney)}, err: "savings: flex: amount 9007199254740992 out of range"},
		"-2^53":                 {savings: []limiter.Saving{sv("flex", -limiter.MaxMoney)}, err: "out of range"},
		"the most negative int": {savings: []limiter.Saving{sv("flex", -1<<63)}, err: "out of range"},
	}
	for name, tc := range tests {
		t.Run(name, func(t *testing.T) {
			err := limiter.ValidateSavings(tc.savings)
			e := limiter.Ending{ID: "id", Outcome: limiter.OutcomeSettled, Savings: tc.savings}
			if tc.err == "" {
				require.NoError(t, err)
				require.NoError(t, e.Validate())
				return
			}
			require.ErrorContains(t, err, tc.err)
			require.ErrorContains(t, e.Validate(), "limiter: finish id: savings: ", "an Ending says which reservation")
		})
	}
}

func TestEndingBooked(t *testing.T) {
	savings := []limiter.Saving{sv("downgrade", 41_200_000), sv("compaction", 0), sv("prompt_cache", -1_500)}
	tests := map[string]struct {
		outcome limiter.Outcome
		want    []limiter.Saving
	}{
		"settled: zeros left out": {outcome: limiter.OutcomeSettled, want: []limiter.Saving{sv("downgrade", 41_200_000), sv("prompt_cache", -1_500)}},
		"released: nothing":       {outcome: limiter.OutcomeReleased},
	}
	for name, tc := range tests {
		t.Run(name, func(t *testing.T) {
			assert.Equal(t, tc.want, limiter.Ending{ID: "x", Outcome: tc.outcome, Savings: savings}.Booked())
		})
	}
}

func TestSavingsList(t *testing.T) {
	by := map[string]policy.Money{}
	limiter.AddSavings(by, []limiter.Saving{sv("flex", 3), sv("downgrade", 5), sv("prompt_cache", -2)})
	limiter.AddSavings(by, []limiter.Saving{sv("flex", -3), sv("downgrade", 1)})
	got := limiter.SavingsList(by)
	assert.Equal(t, []limiter.Saving{sv("downgrade", 6), sv("prompt_cache", -2)}, got, "sorted; flex summed to zero")
	assert.Equal(t, policy.Money(4), limiter.SavingsTotal(got))
	assert.Nil(t, limiter.SavingsList(nil))
}

func TestValidateBatchSavings(t *testing.T) {
	many := make([]limiter.Saving, limiter.MaxDeltaSavings+1)
	for i := range many {
		many[i] = sv("s"+strings.Repeat("x", i%31)+strings.Repeat("_", i/31), 1)
	}
	tests := map[string]struct {
		savings []limiter.Saving
		err     string
	}{
		"none":         {},
		"sixty-four":   {savings: many[:limiter.MaxDeltaSavings]},
		"sixty-five":   {savings: many, err: `limiter: batch b:1: "acme"/"2026-01": savings: 65 strategies, more than 64`},
		"a bad name":   {savings: []limiter.Saving{sv("Flex", 1)}, err: `strategy "Flex"`},
		"out of range": {savings: []limiter.Saving{sv("flex", limiter.MaxMoney)}, err: "out of range"},
	}
	for name, tc := range tests {
		t.Run(name, func(t *testing.T) {
			err := limiter.ValidateBatch("b:1", []limiter.SpendDelta{{Owner: "acme", Period: "2026-01", Spent: 5, Savings: tc.savings}})
			if tc.err == "" {
				require.NoError(t, err)
				return
			}
			require.ErrorContains(t, err, tc.err)
		})
	}
}
