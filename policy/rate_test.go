package policy_test

import (
	"encoding/json"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/tollgate/tollgate/policy"
)

// TestParseRate: a rate per period is kept exactly, in lowest terms, as
// the limiter refills it: Refill units every Per (zero: a second).
func TestParseRate(t *testing.T) {
	tests := map[string]struct {
		in      string
		refill  int64
		per     time.Duration
		wantErr string
	}{
		"per second":              {in: "5/s", refill: 5},
		"bare number":             {in: "7", refill: 7},
		"per minute, whole":       {in: "600/min", refill: 10},
		"per minute, spelled":     {in: "9960 / minute", refill: 166},
		"per hour, whole":         {in: "7200/h", refill: 2},
		"per day, whole":          {in: "86_400/d", refill: 1},
		"GPT-4's 10000/min":       {in: "10000/min", refill: 500, per: 3 * time.Second},
		"100 an hour":             {in: "100/h", refill: 1, per: 36 * time.Second},
		"one a day":               {in: "1/d", refill: 1, per: 24 * time.Hour},
		"one a day, spelled":      {in: "1/day", refill: 1, per: 24 * time.Hour},
		"a prime per day":         {in: "86399/d", refill: 86_399, per: 24 * time.Hour},
		"40000/min":               {in: "40000/min", refill: 2000, per: 3 * time.Second},
		"1000/min":                {in: "1000/min", refill: 50, per: 3 * time.Second},
		"upper case period":       {in: "100/H", refill: 1, per: 36 * time.Second},
		"the most a second":       {in: "60_000_000_000/min", refill: 1_000_000_000},
		"just under the most":     {in: "59_999_999_999/min", refill: 59_999_999_999, per: time.Minute},
		"more than the most":      {in: "60_000_000_001/min", wantErr: `rate "60_000_000_001/min" is more than 1000000000 units a second`},
		"unknown period":          {in: "1/fortnight", wantErr: `unknown period "fortnight"`},
		"not a number":            {in: "lots/s", wantErr: "want a whole number of units per period"},
		"decimal":                 {in: "1.5/s", wantErr: "want a whole number of units per period"},
		"zero":                    {in: "0/min", wantErr: "must be positive"},
		"negative":                {in: "-60/min", wantErr: "must be positive"},
		"overflows 64 bits":       {in: "99999999999999999999/min", wantErr: "99999999999999999999 is too large (at most 1000000000 a second)"},
		"negative beyond 64 bits": {in: "-99999999999999999999/min", wantErr: `rate "-99999999999999999999/min": must be positive`},
	}
	for name, tc := range tests {
		t.Run(name, func(t *testing.T) {
			refill, per, err := policy.ParseRate(tc.in)
			if tc.wantErr != "" {
				require.ErrorContains(t, err, tc.wantErr)
				return
			}
			require.NoError(t, err)
			assert.Equal(t, tc.refill, refill, "refill")
			assert.Equal(t, tc.per, per, "per")
		})
	}
}

// TestLimitRate: a limit's refill is written back as the rate over the
// shortest period that makes it whole, which ParseRate reads back.
func TestLimitRate(t *testing.T) {
	tests := map[string]struct {
		limit      policy.Limit
		rate, text string
	}{
		"per second":        {limit: policy.Limit{Refill: 166}, rate: "166/s", text: "166 per second"},
		"a second, written": {limit: policy.Limit{Refill: 166, Per: time.Second}, rate: "166/s", text: "166 per second"},
		"10000/min":         {limit: policy.Limit{Refill: 500, Per: 3 * time.Second}, rate: "10000/min", text: "10000 per minute"},
		"100/h":             {limit: policy.Limit{Refill: 1, Per: 36 * time.Second}, rate: "100/h", text: "100 per hour"},
		"1/d":               {limit: policy.Limit{Refill: 1, Per: 24 * time.Hour}, rate: "1/d", text: "1 per day"},
		"no day divides it": {limit: policy.Limit{Refill: 2, Per: 7 * time.Second}, rate: "2 every 7s", text: "2 every 7 seconds"},
	}
	for name, tc := range tests {
		t.Run(name, func(t *testing.T) {
			assert.Equal(t, tc.rate, tc.limit.Rate())
			assert.Equal(t, tc.text, tc.limit.RefillText())
			if !strings.Contains(tc.rate, "every") {
				refill, per, err := policy.ParseRate(tc.rate)
				require.NoError(t, err)
				assert.Equal(t, tc.limit.Refill, refill)
				want := tc.limit.Per
				if want == time.Second {
					want = 0 // as a compiled limit writes a second
				}
				assert.Equal(t, want, per, "reads back")
			}
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
  gpt-4: {unit: token, capacity: 10000, refill: 10000/min}
  slow: {unit: request, capacity: 100, refill: 100/h}
tiers:
  t:
    priority: 10
    max_concurrent: 5
    client_limits:
      new: {capacity: 5, refill: 3600/h}
      slow: {capacity: 3, refill: 1/d}
`
	set, err := policy.Parse("x.yaml", strings.NewReader(src))
	require.NoError(t, err)
	assert.Equal(t, set.Pools["old"].Limit, set.Pools["new"].Limit)
	assert.Equal(t, policy.Limit{Capacity: 10, Refill: 2}, set.Pools["new"].Limit)
	assert.Equal(t, policy.Limit{Capacity: 10_000, Refill: 500, Per: 3 * time.Second}, set.Pools["gpt-4"].Limit)
	assert.Equal(t, policy.Limit{Capacity: 100, Refill: 1, Per: 36 * time.Second}, set.Pools["slow"].Limit)
	assert.Equal(t, policy.Limit{Capacity: 5, Refill: 1}, set.Tiers["t"].ClientLimits["new"])
	assert.Equal(t, policy.Limit{Capacity: 3, Refill: 1, Per: 24 * time.Hour}, set.Tiers["t"].ClientLimits["slow"])
}

// TestRefillForms: every way a refill may be written, in a pool and in a
// tier's client limits, and the limit it compiles to.
func TestRefillForms(t *testing.T) {
	perMinute := policy.Limit{Capacity: 10_000, Refill: 500, Per: 3 * time.Second}
	perHour := policy.Limit{Capacity: 10_000, Refill: 1, Per: 36 * time.Second}
	perDay := policy.Limit{Capacity: 10_000, Refill: 1, Per: 24 * time.Hour}
	perSecond := policy.Limit{Capacity: 10_000, Refill: 166}
	tests := map[string]struct {
		field string
		want  policy.Limit
	}{
		"refill_per_second":      {field: "refill_per_second: 166", want: perSecond},
		"a bare number":          {field: "refill: 166", want: perSecond},
		"per s":                  {field: "refill: 166/s", want: perSecond},
		"per sec":                {field: "refill: 166/sec", want: perSecond},
		"per second":             {field: "refill: 166/second", want: perSecond},
		"per min":                {field: "refill: 10000/min", want: perMinute},
		"per minute":             {field: "refill: 10000/minute", want: perMinute},
		"per minute, as 166/s":   {field: "refill: 9960/min", want: perSecond},
		"per h":                  {field: "refill: 100/h", want: perHour},
		"per hour":               {field: "refill: 100/hour", want: perHour},
		"per d":                  {field: "refill: 1/d", want: perDay},
		"per day":                {field: "refill: 1/day", want: perDay},
		"quoted":                 {field: `refill: "10000/min"`, want: perMinute},
		"spaces and underscores": {field: "refill: 10_000 / min", want: perMinute},
	}
	for name, tc := range tests {
		t.Run(name, func(t *testing.T) {
			src := "pools:\n  p:\n    unit: token\n    capacity: 10000\n    " + tc.field +
				"\ntiers:\n  t:\n    priority: 1\n    max_concurrent: 1\n    client_limits:\n      p:\n        capacity: 10000\n        " + tc.field + "\n"
			set, err := policy.Parse("x.yaml", strings.NewReader(src))
			require.NoError(t, err)
			assert.Equal(t, tc.want, set.Pools["p"].Limit)
			assert.Equal(t, tc.want, set.Tiers["t"].ClientLimits["p"])
		})
	}
}

// FuzzParseRate checks that ParseRate never panics, that what it accepts
// is a rate the limiter keeps exactly (in lowest terms, at most
// MaxCapacity a second, a period dividing a day), and that Rate writes it
// back as a rate that parses to the same.
func FuzzParseRate(f *testing.F) {
	for _, s := range []string{"5/s", "7", "600/min", "10000/min", "100/h", "1/d", "86_400/d", "1/fortnight", "1.5/s",
		"-60/min", "0/h", "99999999999999999999/min", "60_000_000_000/min", " 3 / Hour ", "/", "1/", "/s"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		refill, per, err := policy.ParseRate(s)
		if err != nil {
			return
		}
		den := max(int64(per/time.Second), 1)
		if refill <= 0 || per < 0 || per%time.Second != 0 || per == time.Second || 86_400%den != 0 || refill > policy.MaxCapacity*den {
			t.Fatalf("ParseRate(%q) = %d every %v", s, refill, per)
		}
		for d := int64(2); d <= den; d++ {
			if refill%d == 0 && den%d == 0 {
				t.Fatalf("ParseRate(%q) = %d every %v, not in lowest terms", s, refill, per)
			}
		}
		l := policy.Limit{Refill: refill, Per: per}
		r2, p2, err := policy.ParseRate(l.Rate())
		if err != nil || r2 != refill || p2 != per {
			t.Fatalf("ParseRate(%q) = %d every %v, Rate %q parses back as %d every %v, %v", s, refill, per, l.Rate(), r2, p2, err)
		}
	})
}

// TestSummaryShowsRates: policy check and /debug/policy show each refill
// exactly, as a rate.
func TestSummaryShowsRates(t *testing.T) {
	src := `
pools:
  gpt-4: {unit: token, capacity: 10000, refill: 10000/min}
  old:   {unit: request, capacity: 10, refill_per_second: 166}
  slow:  {unit: request, capacity: 100, refill: 100/h}
tiers:
  t:
    priority: 10
    max_concurrent: 5
    client_limits:
      gpt-4: {capacity: 2000, refill: 2000/min}
`
	set, err := policy.Parse("x.yaml", strings.NewReader(src))
	require.NoError(t, err)
	sum := set.Summary()
	rates := map[string]string{}
	for _, p := range sum.Pools {
		rates[p.Name] = p.Refill
	}
	assert.Equal(t, map[string]string{"gpt-4": "10000/min", "old": "166/s", "slow": "100/h"}, rates)
	require.Len(t, sum.Tiers, 1)
	assert.Equal(t, []string{"gpt-4 2000 at 2000/min"}, sum.Tiers[0].ClientLimits)

	var text strings.Builder
	require.NoError(t, sum.WriteText(&text))
	assert.Regexp(t, `(?m)^POOL +UNIT +CAPACITY +REFILL +PRICE +SHADOW$`, text.String())
	assert.Regexp(t, `(?m)^gpt-4 +token +10000 +10000/min `, text.String())
	assert.Regexp(t, `(?m)^slow +request +100 +100/h `, text.String())
	j, err := json.Marshal(sum.Pools[0])
	require.NoError(t, err)
	assert.Contains(t, string(j), `"refill":"10000/min"`)
}
