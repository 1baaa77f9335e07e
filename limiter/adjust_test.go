package limiter_test

import (
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/tollgate/tollgate/limiter"
)

func TestApplyAdjust(t *testing.T) {
	l := limiter.Limit{Capacity: 100, Refill: 10}
	at := func(level int64) limiter.Bucket { return limiter.Bucket{Level: level, At: t0} }
	adj := func(refund, cap int64, pause time.Duration) limiter.Adjustment {
		return limiter.Adjustment{Limit: l, Refund: refund, Cap: cap, Pause: pause}
	}
	tests := map[string]struct {
		from limiter.Bucket
		a    limiter.Adjustment
		want int64 // level after
	}{
		"nothing":                 {at(units(40)), adj(0, limiter.NoCap, 0), units(40)},
		"refund":                  {at(units(40)), adj(25, limiter.NoCap, 0), units(65)},
		"refund stops at full":    {at(units(90)), adj(25, limiter.NoCap, 0), units(100)},
		"charge":                  {at(units(40)), adj(-25, limiter.NoCap, 0), units(15)},
		"charge into debt":        {at(units(10)), adj(-25, limiter.NoCap, 0), units(-15)},
		"debt floor":              {at(limiter.MinLevel + 5), adj(-1000, limiter.NoCap, 0), limiter.MinLevel},
		"cap below":               {at(units(40)), adj(0, 15, 0), units(15)},
		"cap above keeps":         {at(units(40)), adj(0, 60, 0), units(40)},
		"cap zero":                {at(units(40)), adj(0, 0, 0), 0},
		"cap keeps a debt":        {at(units(-5)), adj(0, 10, 0), units(-5)},
		"cap over capacity":       {at(units(100)), adj(0, 500, 0), units(100)},
		"refund then cap":         {at(units(40)), adj(50, 70, 0), units(70)},
		"pause is refill's worth": {at(units(40)), adj(0, limiter.NoCap, 3*time.Second), units(-30)},
		"a deeper debt stays":     {at(units(-50)), adj(0, limiter.NoCap, time.Second), units(-50)},
		"sub-microsecond pause":   {at(units(40)), adj(0, limiter.NoCap, time.Nanosecond), units(40)},
		"refund then pause":       {at(units(40)), adj(60, limiter.NoCap, time.Second), units(-10)},
	}
	for name, tc := range tests {
		t.Run(name, func(t *testing.T) {
			got := limiter.ApplyAdjust(tc.from, tc.a)
			assert.Equal(t, tc.want, got.Level)
			assert.Equal(t, tc.from.At, got.At, "an adjustment never moves the bucket's time")
		})
	}
}

func TestApplyAdjustPauseLimits(t *testing.T) {
	fast := limiter.Limit{Capacity: 1_000_000_000, Refill: 1_000_000_000}
	b := limiter.ApplyAdjust(limiter.NewBucket(fast, t0), limiter.Adjustment{Limit: fast, Cap: limiter.NoCap, Pause: 24 * time.Hour})
	assert.Equal(t, int64(limiter.MinLevel), b.Level, "a pause that would overflow stops at the floor")

	never := limiter.Limit{Capacity: 5, Refill: 0}
	b = limiter.ApplyAdjust(limiter.NewBucket(never, t0), limiter.Adjustment{Limit: never, Cap: limiter.NoCap, Pause: time.Minute})
	assert.Zero(t, b.Level, "a bucket that never refills is only emptied")
}

// TestBucketInDebt: a bucket below zero refills, answers and reports like
// any other, with the debt counted in every wait.
func TestBucketInDebt(t *testing.T) {
	l := limiter.Limit{Capacity: 10, Refill: 2}
	b := limiter.Bucket{Level: units(-4), At: t0}
	ok, possible, wait := b.Check(l, 1)
	assert.False(t, ok)
	assert.True(t, possible)
	assert.Equal(t, 2500*time.Millisecond, wait)
	rem, reset := b.State(l)
	assert.Zero(t, rem)
	assert.Equal(t, 7*time.Second, reset)
	b = b.Advance(l, t0+2500*ms)
	assert.Equal(t, units(1), b.Level)
	b = limiter.Bucket{Level: units(-4), At: t0}.Advance(l, t0+1000*s)
	assert.Equal(t, units(10), b.Level)
}

func TestValidateAdjustments(t *testing.T) {
	l := limiter.Limit{Capacity: 10, Refill: 1}
	k := limiter.Key{Pool: "p"}
	ok := limiter.Adjustment{Key: k, Limit: l, Refund: 3, Cap: limiter.NoCap}
	require.NoError(t, limiter.ValidateAdjustments([]limiter.Adjustment{ok, {Key: limiter.Key{Pool: "p", Client: "c"}, Limit: l, Cap: 4}}))
	for name, a := range map[string]limiter.Adjustment{
		"no capacity":        {Key: k, Limit: limiter.Limit{}, Cap: limiter.NoCap},
		"negative refill":    {Key: k, Limit: limiter.Limit{Capacity: 1, Refill: -1}, Cap: limiter.NoCap},
		"refund too large":   {Key: k, Limit: l, Refund: 2_000_000_000, Cap: limiter.NoCap},
		"charge too large":   {Key: k, Limit: l, Refund: -2_000_000_000, Cap: limiter.NoCap},
		"cap too large":      {Key: k, Limit: l, Cap: 2_000_000_000},
		"negative pause":     {Key: k, Limit: l, Cap: limiter.NoCap, Pause: -1},
		"pause beyond a day": {Key: k, Limit: l, Cap: limiter.NoCap, Pause: 25 * time.Hour},
	} {
		assert.Error(t, limiter.ValidateAdjustments([]limiter.Adjustment{a}), name)
	}
	assert.Error(t, limiter.ValidateAdjustments([]limiter.Adjustment{ok, ok}), "a bucket twice")
}
