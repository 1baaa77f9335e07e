package admission

import (
	"math"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"

	"github.com/tollgate/tollgate/policy"
)

func TestProject(t *testing.T) {
	t0 := time.Date(2026, 12, 10, 0, 0, 0, 0, time.UTC)
	end := time.Date(2027, 1, 1, 0, 0, 0, 0, time.UTC) // 22 days after t0
	usd := func(d int64) policy.Money { return policy.Money(d) * policy.NanosPerDollar }
	s := func(at time.Duration, used policy.Money) spendSample { return spendSample{at: t0.Add(at), used: used} }
	tests := map[string]struct {
		samples []spendSample
		limit   policy.Money
		want    Forecast
	}{
		"no samples":              {nil, usd(100), Forecast{}},
		"one sample: the use now": {[]spendSample{s(0, usd(7))}, usd(100), Forecast{Spend: usd(7)}},
		"too short a span: no rate yet": {[]spendSample{s(0, usd(1)), s(4*time.Minute, usd(2))}, usd(100),
			Forecast{Spend: usd(2)}},
		// $1 an hour for the 22 days left but one hour: $10 + $527.
		"a steady rate past the budget": {[]spendSample{s(0, usd(9)), s(time.Hour, usd(10))}, usd(100),
			Forecast{Spend: usd(10 + 22*24 - 1), Window: time.Hour, PerHour: usd(1), Exceeds: true, Crosses: t0.Add(91 * time.Hour)}},
		"a steady rate within the budget": {[]spendSample{s(0, usd(9)), s(time.Hour, usd(10))}, usd(1000),
			Forecast{Spend: usd(537), Window: time.Hour, PerHour: usd(1)}},
		"unlimited never exceeds": {[]spendSample{s(0, usd(9)), s(time.Hour, usd(10))}, policy.Money(-1),
			Forecast{Spend: usd(537), Window: time.Hour, PerHour: usd(1)}},
		"already over: no crossing time": {[]spendSample{s(0, usd(99)), s(time.Hour, usd(120))}, usd(100),
			Forecast{Spend: usd(120 + 21*(22*24-1)), Window: time.Hour, PerHour: usd(21), Exceeds: true}},
		"spend fell (a refund): rate zero": {[]spendSample{s(0, usd(9)), s(time.Hour, usd(5))}, usd(100),
			Forecast{Spend: usd(5), Window: time.Hour}},
		"huge amounts saturate, never wrap": {[]spendSample{s(0, 0), s(time.Hour, math.MaxInt64/2)}, policy.Money(-1),
			Forecast{Spend: math.MaxInt64, Window: time.Hour, PerHour: math.MaxInt64 / 2}},
	}
	for name, tc := range tests {
		t.Run(name, func(t *testing.T) {
			got := project(tc.samples, tc.limit, end, time.Hour)
			if !tc.want.Crosses.IsZero() && !got.Crosses.IsZero() {
				assert.WithinDuration(t, tc.want.Crosses, got.Crosses, time.Second)
				got.Crosses = tc.want.Crosses
			}
			assert.Equal(t, tc.want, got)
		})
	}
}

func TestSpendRing(t *testing.T) {
	t0 := time.Date(2026, 12, 10, 0, 0, 0, 0, time.UTC)
	var r spendRing
	for i := range 200 { // a sample a minute for 200 minutes, a one-hour window
		r.add("2026-12", spendSample{at: t0.Add(time.Duration(i) * time.Minute), used: policy.Money(i)}, time.Hour)
	}
	assert.LessOrEqual(t, len(r.samples), ringSize)
	assert.Equal(t, t0.Add(199*time.Minute), r.samples[len(r.samples)-1].at, "the last sample is the newest")
	assert.Equal(t, t0.Add(139*time.Minute), r.samples[0].at, "samples older than the window are forgotten")
	// Samples closer than window/ringSize replace the newest, keeping the oldest.
	r.add("2026-12", spendSample{at: t0.Add(199*time.Minute + time.Second), used: 500}, time.Hour)
	assert.Equal(t, policy.Money(500), r.samples[len(r.samples)-1].used)
	assert.Equal(t, t0.Add(140*time.Minute), r.samples[0].at, "the window moved on a second")
	// A new period starts over.
	r.add("2027-01", spendSample{at: t0.Add(300 * time.Minute), used: 1}, time.Hour)
	assert.Len(t, r.samples, 1)
}
