package limiter_test

import (
	"math/big"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/tollgate/tollgate/limiter"
)

// Rates that are no whole number of units a second: Refill units every Per.
var (
	perMinute10k = limiter.Limit{Capacity: 10_000, Refill: 500, Per: 3 * time.Second} // 10000/min
	perHour100   = limiter.Limit{Capacity: 100, Refill: 1, Per: 36 * time.Second}     // 100/h
	perDay1      = limiter.Limit{Capacity: 5, Refill: 1, Per: 24 * time.Hour}         // 1/d
)

func TestLimitDenAndScale(t *testing.T) {
	tests := map[string]struct {
		limit      limiter.Limit
		den, scale int64
	}{
		"no period is a second":   {limit: limiter.Limit{Capacity: 1, Refill: 166}, den: 1, scale: limiter.Micro},
		"a second":                {limit: limiter.Limit{Capacity: 1, Refill: 166, Per: time.Second}, den: 1, scale: limiter.Micro},
		"10000/min is 500 per 3s": {limit: perMinute10k, den: 3, scale: 3 * limiter.Micro},
		"100/h is 1 per 36s":      {limit: perHour100, den: 36, scale: 36 * limiter.Micro},
		"1/d":                     {limit: perDay1, den: 86_400, scale: 86_400 * limiter.Micro},
	}
	for name, tc := range tests {
		t.Run(name, func(t *testing.T) {
			assert.Equal(t, tc.den, tc.limit.Den())
			assert.Equal(t, tc.scale, tc.limit.Scale())
		})
	}
}

// drain takes every whole unit the bucket holds at now and returns how
// many it took.
func drain(b *limiter.Bucket, l limiter.Limit, now int64) int64 {
	*b = b.Advance(l, now)
	n, _ := b.State(l)
	d := limiter.Apply([]limiter.Bucket{*b}, []limiter.Take{{Key: limiter.Key{Pool: "p"}, Limit: l, Cost: n}})
	if !d.Allowed {
		panic("a bucket refused the units it reported")
	}
	b.Level -= n * l.Scale()
	return n
}

// TestFractionalRatesOverALongRun: a bucket drained at every step, over a
// long run of small, uneven steps, hands out exactly its capacity plus the
// rate times the time: 10,000 a minute (not 166·60 = 9,960), 100 an hour,
// one a day. Nothing is lost or gained between steps.
func TestFractionalRatesOverALongRun(t *testing.T) {
	tests := map[string]struct {
		limit  limiter.Limit
		period time.Duration // the rate's own period
		per    int64         // units per period
		runs   int64         // periods run
		step   int64         // µs, the first step; steps vary around it
	}{
		"10000/min for an hour in steps of about 70 ms": {limit: perMinute10k, period: time.Minute, per: 10_000, runs: 60, step: 70_001},
		"10000/min unreduced (10000 every 60s)": {
			limit: limiter.Limit{Capacity: 10_000, Refill: 10_000, Per: time.Minute}, period: time.Minute, per: 10_000, runs: 10, step: 13_337,
		},
		"100/h for a day in steps of about 1.3 s": {limit: perHour100, period: time.Hour, per: 100, runs: 24, step: 1_300_001},
		"1/d for a month in steps of about 7 min": {limit: perDay1, period: 24 * time.Hour, per: 1, runs: 30, step: 7*60*s + 3},
		"166/s for a minute, as before":           {limit: limiter.Limit{Capacity: 10_000, Refill: 166}, period: time.Second, per: 166, runs: 60, step: 997},
	}
	for name, tc := range tests {
		t.Run(name, func(t *testing.T) {
			b := limiter.NewBucket(tc.limit, t0)
			taken := drain(&b, tc.limit, t0)
			require.Equal(t, tc.limit.Capacity, taken, "a new bucket is full")
			p := tc.period.Microseconds()
			now, step := t0, tc.step
			for k := int64(1); k <= tc.runs; k++ {
				for end := t0 + k*p; now+step < end; step = tc.step + (now % 11) {
					now += step
					taken += drain(&b, tc.limit, now)
				}
				now = t0 + k*p
				taken += drain(&b, tc.limit, now)
				require.Equal(t, tc.limit.Capacity+k*tc.per, taken, "after %d periods", k)
				require.Zero(t, b.Level, "after %d periods, no part of a unit is left over or missing", k)
			}
		})
	}
}

// TestFractionalRateIsPathIndependent: advancing in many tiny steps lands on
// the very level one big step gives.
func TestFractionalRateIsPathIndependent(t *testing.T) {
	for name, l := range map[string]limiter.Limit{"10000/min": perMinute10k, "100/h": perHour100, "1/d": perDay1} {
		t.Run(name, func(t *testing.T) {
			empty := limiter.BucketHolding(l, 0, t0)
			stepped := empty
			end := t0 + 3*s
			for now := t0; now <= end; now += 13 {
				stepped = stepped.Advance(l, now)
			}
			stepped = stepped.Advance(l, end)
			assert.Equal(t, empty.Advance(l, end), stepped)
		})
	}
}

func TestFractionalRateWaitAndReset(t *testing.T) {
	tests := map[string]struct {
		limit      limiter.Limit
		units      int64 // the bucket holds
		part       int64 // and this many parts of a unit more
		cost       int64
		wait       time.Duration
		remaining  int64
		resetAfter time.Duration
	}{
		// 10000/min is a unit every 6 ms exactly.
		"10000/min, one unit from empty": {limit: perMinute10k, cost: 1, wait: 6 * time.Millisecond, resetAfter: time.Minute},
		"10000/min, the whole bucket":    {limit: perMinute10k, cost: 10_000, wait: time.Minute, resetAfter: time.Minute},
		"10000/min, one part short":      {limit: perMinute10k, units: 4, part: 3*limiter.Micro - 1, cost: 5, wait: time.Microsecond, remaining: 4, resetAfter: time.Minute - 30*time.Millisecond + time.Microsecond},
		"10000/min, two parts short":     {limit: perMinute10k, units: 4, part: 3*limiter.Micro - 2, cost: 5, wait: time.Microsecond, remaining: 4, resetAfter: time.Minute - 30*time.Millisecond + time.Microsecond},
		"10000/min, 501 parts short":     {limit: perMinute10k, units: 4, part: 3*limiter.Micro - 501, cost: 5, wait: 2 * time.Microsecond, remaining: 4, resetAfter: time.Minute - 30*time.Millisecond + 2*time.Microsecond},
		"100/h, one from empty":          {limit: perHour100, cost: 1, wait: 36 * time.Second, resetAfter: time.Hour},
		"100/h, seven from empty":        {limit: perHour100, cost: 7, wait: 7 * 36 * time.Second, resetAfter: time.Hour},
		"100/h, half a unit held":        {limit: perHour100, part: 18 * limiter.Micro, cost: 1, wait: 18 * time.Second, resetAfter: time.Hour - 18*time.Second},
		"1/d, one from empty":            {limit: perDay1, cost: 1, wait: 24 * time.Hour, resetAfter: 5 * 24 * time.Hour},
		"1/d, three held, two more":      {limit: perDay1, units: 3, cost: 5, wait: 48 * time.Hour, remaining: 3, resetAfter: 48 * time.Hour},
	}
	for name, tc := range tests {
		t.Run(name, func(t *testing.T) {
			b := limiter.BucketHolding(tc.limit, tc.units, t0)
			b.Level += tc.part
			ok, possible, wait := b.Check(tc.limit, tc.cost)
			assert.False(t, ok)
			assert.True(t, possible)
			assert.Equal(t, tc.wait, wait, "wait")
			remaining, resetAfter := b.State(tc.limit)
			assert.Equal(t, tc.remaining, remaining, "remaining")
			assert.Equal(t, tc.resetAfter, resetAfter, "reset after")

			// The wait is tight: the cost fits after it, not a microsecond before.
			ok, _, _ = b.Advance(tc.limit, t0+wait.Microseconds()).Check(tc.limit, tc.cost)
			assert.True(t, ok, "fits after the wait")
			ok, _, _ = b.Advance(tc.limit, t0+wait.Microseconds()-1).Check(tc.limit, tc.cost)
			assert.False(t, ok, "short a microsecond before")
			// And so is the reset.
			assert.True(t, b.Full(tc.limit, t0+resetAfter.Microseconds()), "full after the reset")
			assert.False(t, b.Full(tc.limit, t0+resetAfter.Microseconds()-1), "not full a microsecond before")
		})
	}
}

// TestBucketRescaled: a bucket kept at one rate's denominator is converted
// once when its limit's changes (a policy reload from 166/s to 10000/min),
// rounding down, never gaining a part of a unit.
func TestBucketRescaled(t *testing.T) {
	perSecond := limiter.Limit{Capacity: 10_000, Refill: 166}
	tests := map[string]struct {
		from limiter.Bucket
		to   limiter.Limit
		want limiter.Bucket
	}{
		"same denominator is untouched": {
			from: limiter.Bucket{Level: 12_345, At: t0}, to: perSecond,
			want: limiter.Bucket{Level: 12_345, At: t0},
		},
		"per second to per 3 s is exact": {
			from: limiter.Bucket{Level: units(7) + 5, At: t0}, to: perMinute10k,
			want: limiter.Bucket{Level: 3*units(7) + 15, At: t0, Den: 3},
		},
		"per 3 s to per second rounds down": {
			from: limiter.Bucket{Level: 3*units(7) + 17, At: t0, Den: 3}, to: perSecond,
			want: limiter.Bucket{Level: units(7) + 5, At: t0},
		},
		"per 3 s to per 36 s": {
			from: limiter.Bucket{Level: 3*units(2) + 1, At: t0, Den: 3}, to: perHour100,
			want: limiter.Bucket{Level: 36*units(2) + 12, At: t0, Den: 36},
		},
		"per 36 s to per 3 s rounds down": {
			from: limiter.Bucket{Level: 36*units(2) + 23, At: t0, Den: 36}, to: perMinute10k,
			want: limiter.Bucket{Level: 3*units(2) + 1, At: t0, Den: 3},
		},
		"a debt rounds down too (deeper)": {
			from: limiter.Bucket{Level: -(3*units(2) + 1), At: t0, Den: 3}, to: perSecond,
			want: limiter.Bucket{Level: -(units(2) + 1), At: t0},
		},
		"above the new capacity is full": {
			from: limiter.Bucket{Level: units(900), At: t0}, to: perHour100,
			want: limiter.Bucket{Level: 36 * units(100), At: t0, Den: 36},
		},
		"a debt beyond the floor stops at MinLevel": {
			from: limiter.Bucket{Level: limiter.MinLevel, At: t0}, to: perDay1,
			want: limiter.Bucket{Level: limiter.MinLevel, At: t0, Den: 86_400},
		},
		"the floor converts to the floor": {
			from: limiter.Bucket{Level: limiter.MinLevel, At: t0, Den: 86_400}, to: perSecond,
			want: limiter.Bucket{Level: limiter.MinLevel/86_400 - 1, At: t0}, // ⌊-81,018,518,518.5⌋
		},
	}
	for name, tc := range tests {
		t.Run(name, func(t *testing.T) {
			assert.Equal(t, tc.want, tc.from.Rescaled(tc.to))
			// Advance rescales first (at the same instant: no refill).
			assert.Equal(t, tc.want, tc.from.Advance(tc.to, t0))
		})
	}
}

// TestBucketRescaledIsFloor checks the conversion against exact rational
// arithmetic over many levels and denominators: ⌊level·to/from⌋, clamped.
func TestBucketRescaledIsFloor(t *testing.T) {
	dens := []int64{1, 2, 3, 36, 60, 3600, 86_399, 86_400}
	levels := []int64{0, 1, -1, 59, -59, 86_401, -86_401, units(1) - 1, units(5) + 7, -units(5) - 7, 1_000_000_000_000 - 3, limiter.MinLevel, limiter.MinLevel + 1, limiter.MinLevel/2 + 12_345}
	for _, from := range dens {
		for _, to := range dens {
			capacity := int64(1_000_000_000) / max(from, to)
			l := limiter.Limit{Capacity: capacity, Refill: 1, Per: time.Duration(to) * time.Second}
			for _, lv := range levels {
				full := capacity * limiter.Micro * from
				if lv > full {
					continue
				}
				want := new(big.Int).Mul(big.NewInt(lv), big.NewInt(to))
				want.Div(want, big.NewInt(from)) // Euclidean: the floor, for a positive divisor
				if hi := big.NewInt(capacity * limiter.Micro * to); want.Cmp(hi) > 0 {
					want = hi
				}
				if lo := big.NewInt(limiter.MinLevel); want.Cmp(lo) < 0 {
					want = lo
				}
				got := limiter.Bucket{Level: lv, Den: from}.Rescaled(l)
				require.Equal(t, want.Int64(), got.Level, "level %d from %d to %d", lv, from, to)
			}
		}
	}
}

// TestRescaledThenBackNeverGains: converting to another denominator and
// back never gives a bucket more than it had.
func TestRescaledThenBackNeverGains(t *testing.T) {
	perSecond := limiter.Limit{Capacity: 10_000, Refill: 166}
	for lv := int64(-7_000_003); lv <= 7_000_003; lv += 999_983 {
		b := limiter.Bucket{Level: lv, At: t0}
		for _, via := range []limiter.Limit{perMinute10k, perHour100} {
			back := b.Rescaled(via).Rescaled(perSecond)
			assert.LessOrEqual(t, back.Level, lv, "level %d via %v", lv, via.Per)
			assert.Equal(t, lv, b.Rescaled(via).Level/via.Den(), "per second to a finer scale is exact")
		}
	}
}

// TestFractionalApply: an admission at a fractional rate charges whole
// units at the rate's scale, and a reload to another rate mid-way keeps
// what the bucket held.
func TestFractionalApply(t *testing.T) {
	k := limiter.Key{Pool: "gpt-4"}
	perSecond := limiter.Limit{Capacity: 10_000, Refill: 166}
	b := limiter.BucketHolding(perSecond, 100, t0)

	// Reloaded to 10000/min: the 100 units stay 100 units.
	d := limiter.Apply([]limiter.Bucket{b}, []limiter.Take{{Key: k, Limit: perMinute10k, Cost: 60}})
	require.True(t, d.Allowed)
	assert.Equal(t, int64(40), d.Buckets[0].Remaining)
	assert.Equal(t, time.Minute-40*6*time.Millisecond, d.Buckets[0].ResetAfter)

	// 41 is short by one unit: 6 ms at 10000/min.
	b2 := limiter.BucketHolding(perMinute10k, 40, t0)
	d = limiter.Apply([]limiter.Bucket{b2}, []limiter.Take{{Key: k, Limit: perMinute10k, Cost: 41}})
	require.False(t, d.Allowed)
	assert.Equal(t, 6*time.Millisecond, d.RetryAfter)
}

func TestFractionalApplyAdjust(t *testing.T) {
	k := limiter.Key{Pool: "p"}
	tests := map[string]struct {
		limit limiter.Limit
		from  int64 // whole units
		adj   limiter.Adjustment
		want  int64 // level
	}{
		"refund at 10000/min": {
			limit: perMinute10k, from: 10, adj: limiter.Adjustment{Refund: 5, Cap: limiter.NoCap},
			want: 15 * perMinute10k.Scale(),
		},
		"charge into debt at 100/h": {
			limit: perHour100, from: 10, adj: limiter.Adjustment{Refund: -30, Cap: limiter.NoCap},
			want: -20 * perHour100.Scale(),
		},
		"the largest refund fills a per-day bucket, with no overflow": {
			limit: perDay1, from: 0, adj: limiter.Adjustment{Refund: 1_000_000_000, Cap: limiter.NoCap},
			want: 5 * perDay1.Scale(),
		},
		"the largest charge stops at the floor, with no overflow": {
			limit: perDay1, from: 5, adj: limiter.Adjustment{Refund: -1_000_000_000, Cap: limiter.NoCap},
			want: limiter.MinLevel,
		},
		"a charge just short of the floor is kept exactly": {
			limit: perDay1, from: 0, adj: limiter.Adjustment{Refund: limiter.MinLevel/perDay1.Scale() + 1, Cap: limiter.NoCap},
			want: (limiter.MinLevel/perDay1.Scale() + 1) * perDay1.Scale(),
		},
		"cap at 10000/min": {
			limit: perMinute10k, from: 900, adj: limiter.Adjustment{Cap: 12},
			want: 12 * perMinute10k.Scale(),
		},
		// A pause of 36 s at 100/h is one unit of debt: back at zero when it ends.
		"pause at 100/h": {
			limit: perHour100, from: 50, adj: limiter.Adjustment{Cap: limiter.NoCap, Pause: 36 * time.Second},
			want: -perHour100.Scale(),
		},
		"pause of a minute at 10000/min": {
			limit: perMinute10k, from: 50, adj: limiter.Adjustment{Cap: limiter.NoCap, Pause: time.Minute},
			want: -10_000 * perMinute10k.Scale(),
		},
	}
	for name, tc := range tests {
		t.Run(name, func(t *testing.T) {
			tc.adj.Key, tc.adj.Limit = k, tc.limit
			require.NoError(t, tc.adj.Validate())
			got := limiter.ApplyAdjust(limiter.BucketHolding(tc.limit, tc.from, t0), tc.adj)
			assert.Equal(t, tc.want, got.Level)
			if tc.adj.Pause > 0 {
				_, reset := got.State(tc.limit)
				assert.Equal(t, tc.adj.Pause+time.Duration(tc.limit.Capacity)*tc.limit.Per/time.Duration(tc.limit.Refill), reset,
					"full again after the pause and a whole refill")
			}
		})
	}
}

func TestFractionalApplyLease(t *testing.T) {
	k := limiter.Key{Pool: "p"}
	b := limiter.BucketHolding(perHour100, 3, t0)
	b.Level += perHour100.Scale() / 2 // three and a half units
	b, g := limiter.ApplyLease(b, limiter.LeaseAsk{Key: k, Limit: perHour100, Want: 10, Need: 2})
	assert.Equal(t, int64(3), g.Granted, "whole units only")
	assert.Equal(t, perHour100.Scale()/2, b.Level, "the half unit stays")
	_, g = limiter.ApplyLease(b, limiter.LeaseAsk{Key: k, Limit: perHour100, Want: 1, Need: 1})
	assert.Zero(t, g.Granted)
	assert.Equal(t, 18*time.Second, g.RetryAfter)
}

func TestLimitValidation(t *testing.T) {
	k := limiter.Key{Pool: "p"}
	tests := map[string]struct {
		limit   limiter.Limit
		wantErr string
	}{
		"per second":             {limit: limiter.Limit{Capacity: 1_000_000_000, Refill: 1_000_000_000}},
		"10000/min":              {limit: perMinute10k},
		"1/d":                    {limit: perDay1},
		"largest capacity per 3": {limit: limiter.Limit{Capacity: 333_333_333, Refill: 500, Per: 3 * time.Second}},
		"capacity too large for the period": {
			limit:   limiter.Limit{Capacity: 333_333_334, Refill: 500, Per: 3 * time.Second},
			wantErr: "capacity 333333334 is too large for a refill every 3s: at most 333333333",
		},
		"capacity too large for a day": {
			limit:   limiter.Limit{Capacity: 11_575, Refill: 1, Per: 24 * time.Hour},
			wantErr: "at most 11574",
		},
		"part of a second": {limit: limiter.Limit{Capacity: 1, Refill: 1, Per: 1500 * time.Millisecond}, wantErr: "not a whole number of seconds"},
		"below a second":   {limit: limiter.Limit{Capacity: 1, Refill: 1, Per: time.Millisecond}, wantErr: "not a whole number of seconds"},
		"beyond a day":     {limit: limiter.Limit{Capacity: 1, Refill: 1, Per: 25 * time.Hour}, wantErr: "not a whole number of seconds up to 24h0m0s"},
		"negative period":  {limit: limiter.Limit{Capacity: 1, Refill: 1, Per: -time.Second}, wantErr: "not a whole number of seconds"},
		"rate above 1e9 a second": {
			limit:   limiter.Limit{Capacity: 1, Refill: 3_000_000_001, Per: 3 * time.Second},
			wantErr: "more than 1000000000 a second",
		},
	}
	for name, tc := range tests {
		t.Run(name, func(t *testing.T) {
			errs := []error{
				limiter.Request{Takes: []limiter.Take{{Key: k, Limit: tc.limit, Cost: 1}}}.Validate(),
				limiter.Adjustment{Key: k, Limit: tc.limit, Cap: limiter.NoCap}.Validate(),
				limiter.LeaseAsk{Key: k, Limit: tc.limit, Want: 1, Need: 1}.Validate(),
			}
			for _, err := range errs {
				if tc.wantErr == "" {
					assert.NoError(t, err)
				} else {
					assert.ErrorContains(t, err, tc.wantErr)
				}
			}
		})
	}
}

// FuzzFractionalBucket drives a bucket of a random rate and period through
// random advances, takes, refunds and a change of period, and checks that
// it never hands out more than its capacity plus the rate times the time,
// and that what it holds is never more than its capacity.
func FuzzFractionalBucket(f *testing.F) {
	f.Add(uint16(500), uint32(3), uint32(10_000), []byte{1, 2, 3, 200, 7, 9})
	f.Add(uint16(1), uint32(36), uint32(100), []byte{255, 255, 0, 17})
	f.Add(uint16(1), uint32(86_400), uint32(5), []byte{9, 9, 9, 9, 9, 9, 9, 9})
	f.Add(uint16(166), uint32(1), uint32(10_000), []byte{0, 1, 0, 1, 128})
	f.Fuzz(func(t *testing.T, refill uint16, per, capacity uint32, ops []byte) {
		den := int64(per%86_400) + 1
		l := limiter.Limit{Capacity: max(int64(capacity)%(1_000_000_000/den), 1), Refill: int64(refill) + 1, Per: time.Duration(den) * time.Second}
		if err := (limiter.LeaseAsk{Key: limiter.Key{Pool: "p"}, Limit: l}).Validate(); err != nil {
			t.Fatalf("a limit built in range is refused: %v", err)
		}
		b := limiter.NewBucket(l, t0)
		now, given, returned := t0, int64(0), int64(0)
		for i, op := range ops {
			switch op % 4 {
			case 0, 1: // advance by a power-of-two-ish step
				now += int64(op) << (i % 24)
				b = b.Advance(l, now)
			case 2: // take what fits of op units
				c := min(int64(op), l.Capacity)
				d := limiter.Apply([]limiter.Bucket{b}, []limiter.Take{{Key: limiter.Key{Pool: "p"}, Limit: l, Cost: c}})
				if d.Allowed {
					b.Level -= c * l.Scale()
					given += c
				}
			case 3: // give some back
				r := min(int64(op), given-returned)
				b = limiter.ApplyAdjust(b, limiter.Adjustment{Key: limiter.Key{Pool: "p"}, Limit: l, Refund: r, Cap: limiter.NoCap})
				returned += r
			}
			if b.Level > l.Capacity*l.Scale() {
				t.Fatalf("level %d above capacity %d·%d", b.Level, l.Capacity, l.Scale())
			}
			// Units refilled in (now - t0) µs: Refill every den s, rounded down.
			refilled := new(big.Int).Mul(big.NewInt(now-t0), big.NewInt(l.Refill))
			refilled.Div(refilled, big.NewInt(l.Scale()))
			bound := new(big.Int).Add(refilled, big.NewInt(l.Capacity+returned))
			if big.NewInt(given).Cmp(bound) > 0 {
				t.Fatalf("gave %d units in %d µs, more than capacity %d + refill %d + returned %d", given, now-t0, l.Capacity, refilled, returned)
			}
		}
		// A change of period (a reload) never adds a part of a unit.
		other := limiter.Limit{Capacity: l.Capacity, Refill: l.Refill, Per: time.Duration(den%7+1) * time.Second}
		back := b.Rescaled(other).Rescaled(l)
		if back.Level > b.Level {
			t.Fatalf("rescaling %d via %v and back gave %d", b.Level, other.Per, back.Level)
		}
	})
}
