package admission

import (
	"time"

	"github.com/tollgate/tollgate/policy"
)

// A forecast projects a client's spend to the end of its budget period
// from what it has used so far and the rate it used it at lately. The
// store's usage is fleet-wide, so samples of it taken by any one member
// give the fleet's rate. All money math is in integer nano-dollars: a
// 128-bit product and quotient (mulDiv), never float64.

// Forecast is one client's projection.
type Forecast struct {
	// Spend is the projected use (spent and reserved) at the period's end.
	Spend policy.Money
	// Window is the span of the samples the rate comes from; zero: too
	// few samples yet, Spend is what is used now.
	Window time.Duration
	// PerHour is the recent rate of use.
	PerHour policy.Money
	// Exceeds is set when Spend is above a capped budget's limit, and
	// Crosses is then when the budget would run out at the recent rate
	// (zero: it already has).
	Exceeds bool
	Crosses time.Time
}

// spendSample is a client's use at one instant.
type spendSample struct {
	at   time.Time
	used policy.Money
}

// ringSize bounds the samples kept per client: a window is sampled at
// most this many times, however often the store is read.
const ringSize = 64

// spendRing keeps a client's recent samples, oldest first, within one
// budget period.
type spendRing struct {
	period  string
	samples []spendSample
}

// add records a sample taken in period, forgets samples older than window
// (and all of them when the period changed: spend starts over), and keeps
// at most ringSize, at least window/ringSize apart.
func (r *spendRing) add(period string, s spendSample, window time.Duration) {
	if r.period != period {
		r.period, r.samples = period, r.samples[:0]
	}
	cut := 0
	for cut < len(r.samples) && s.at.Sub(r.samples[cut].at) > window {
		cut++
	}
	r.samples = append(r.samples[:0], r.samples[cut:]...)
	if n := len(r.samples); n > 0 && s.at.Sub(r.samples[n-1].at) < window/ringSize {
		if n > 1 {
			r.samples[n-1] = s // too soon after the last: it moves up to now
		} else {
			r.samples = append(r.samples, s)
		}
		return
	}
	if len(r.samples) == ringSize {
		r.samples = append(r.samples[:0], r.samples[1:]...)
	}
	r.samples = append(r.samples, s)
}

// minForecastShare is the share of the window the samples must span
// before their rate is trusted (a twelfth: 5 min of the default hour).
const minForecastShare = 12

// project forecasts the use at periodEnd of a budget of limit (Unlimited:
// never exceeded) from samples, the last of which is now.
func project(samples []spendSample, limit policy.Money, periodEnd time.Time, window time.Duration) Forecast {
	if len(samples) == 0 {
		return Forecast{}
	}
	first, last := samples[0], samples[len(samples)-1]
	f := Forecast{Spend: last.used}
	elapsed := last.at.Sub(first.at)
	if elapsed <= 0 || elapsed < window/minForecastShare {
		return f
	}
	f.Window = elapsed
	delta := max(last.used-first.used, 0)
	f.PerHour = policy.Money(mulDiv(int64(delta), int64(time.Hour), int64(elapsed)))
	left := periodEnd.Sub(last.at)
	if left > 0 {
		f.Spend = policy.Money(satAdd(int64(last.used), mulDiv(int64(delta), int64(left), int64(elapsed))))
	}
	if limit >= 0 && f.Spend > limit {
		f.Exceeds = true
		if last.used < limit && delta > 0 {
			f.Crosses = last.at.Add(time.Duration(mulDiv(int64(limit-last.used), int64(elapsed), int64(delta))))
		}
	}
	return f
}
