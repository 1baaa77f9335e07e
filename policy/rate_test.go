package policy_test

import (
	"strings"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/tollgate/tollgate/policy"
)

// TestParseRate: a rate per period is kept exactly when it is a whole
// number of units a second, and refused, with the nearest exact rates,
// when it is not.
func TestParseRate(t *testing.T) {
	tests := map[string]struct {
		in      string
		want    int64
		wantErr string
	}{
		"per second":          {in: "5/s", want: 5},
		"bare number":         {in: "7", want: 7},
		"per minute, exact":   {in: "600/min", want: 10},
		"per minute, spelled": {in: "9960 / minute", want: 166},
		"per hour, exact":     {in: "7200/h", want: 2},
		"per day, exact":      {in: "86_400/d", want: 1},
		"GPT-4's 10000/min":   {in: "10000/min", wantErr: "is 166.67 units a second"},
		"100 an hour":         {in: "100/h", wantErr: "write 3600/h (1/s)"},
		"unknown period":      {in: "1/fortnight", wantErr: `unknown period "fortnight"`},
		"not a number":        {in: "lots/s", wantErr: "want a whole number of units per period"},
		"decimal":             {in: "1.5/s", wantErr: "want a whole number of units per period"},
		"zero":                {in: "0/min", wantErr: "must be positive"},
		"negative":            {in: "-60/min", wantErr: "must be positive"},
		"overflows 64 bits":   {in: "99999999999999999999/min", wantErr: "99999999999999999999 is too large (at most 1000000000)"},
	}
	for name, tc := range tests {
		t.Run(name, func(t *testing.T) {
			got, err := policy.ParseRate(tc.in)
			if tc.wantErr != "" {
				require.ErrorContains(t, err, tc.wantErr)
				return
			}
			require.NoError(t, err)
			assert.Equal(t, tc.want, got)
		})
	}
}

// TestRefillField: pools and client limits accept refill as a rate; old
// files with refill_per_second stay valid and mean the same.
func TestRefillField(t *testing.T) {
	src := `
pools:
  old: {unit: request, capacity: 10, refill_per_second: 2}
  new: {unit: request, capacity: 10, refill: 120/min}
tiers:
  t:
    priority: 10
    max_concurrent: 5
    client_limits:
      new: {capacity: 5, refill: 3600/h}
`
	set, err := policy.Parse("x.yaml", strings.NewReader(src))
	require.NoError(t, err)
	assert.Equal(t, set.Pools["old"].Limit, set.Pools["new"].Limit)
	assert.Equal(t, int64(2), set.Pools["new"].Limit.Refill)
	assert.Equal(t, int64(1), set.Tiers["t"].ClientLimits["new"].Refill)
}
