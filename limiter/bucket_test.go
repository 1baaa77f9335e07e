package limiter_test

import (
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/tollgate/tollgate/limiter"
)

// t0 is the instant every bucket test starts at, in Unix microseconds.
var t0 = time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC).UnixMicro()

const (
	ms = int64(time.Millisecond / time.Microsecond)
	s  = int64(time.Second / time.Microsecond)
)

// units converts whole units to a bucket level.
func units(n int64) int64 { return n * limiter.Micro }

// empty is a drained bucket at t0.
var empty = limiter.Bucket{Level: 0, At: t0}

func TestNewBucketIsFull(t *testing.T) {
	b := limiter.NewBucket(limiter.Limit{Capacity: 7, Refill: 1}, t0)
	assert.Equal(t, limiter.Bucket{Level: units(7), At: t0}, b)
	assert.True(t, b.Full(limiter.Limit{Capacity: 7, Refill: 1}, t0))
}

func TestBucketAdvance(t *testing.T) {
	odd := limiter.Limit{Capacity: 10_000, Refill: 166}
	tests := map[string]struct {
		limit limiter.Limit
		from  limiter.Bucket
		now   int64
		want  limiter.Bucket
	}{
		"one second refills exactly the rate": {
			limit: odd, from: empty, now: t0 + s,
			want: limiter.Bucket{Level: units(166), At: t0 + s},
		},
		"one microsecond refills rate micro-units": {
			limit: odd, from: empty, now: t0 + 1,
			want: limiter.Bucket{Level: 166, At: t0 + 1},
		},
		// ceil(1e6/166) = 6025: 166·6025 = 1_000_150 ≥ 1e6 > 166·6024 = 999_984.
		"first whole unit after ceil(1e6/rate) µs": {
			limit: odd, from: empty, now: t0 + 6025,
			want: limiter.Bucket{Level: 1_000_150, At: t0 + 6025},
		},
		"one microsecond earlier is short of a unit": {
			limit: odd, from: empty, now: t0 + 6024,
			want: limiter.Bucket{Level: 999_984, At: t0 + 6024},
		},
		"refill stops at capacity": {
			limit: limiter.Limit{Capacity: 10, Refill: 3}, from: empty, now: t0 + 1000*s,
			want: limiter.Bucket{Level: units(10), At: t0 + 1000*s},
		},
		// 10 units at 3/s: 10e6/3 = 3_333_333.3 µs, rounded up.
		"full exactly when the missing level is covered": {
			limit: limiter.Limit{Capacity: 10, Refill: 3}, from: empty, now: t0 + 3_333_334,
			want: limiter.Bucket{Level: units(10), At: t0 + 3_333_334},
		},
		"one microsecond before full": {
			limit: limiter.Limit{Capacity: 10, Refill: 3}, from: empty, now: t0 + 3_333_333,
			want: limiter.Bucket{Level: 9_999_999, At: t0 + 3_333_333},
		},
		"a huge gap does not overflow": {
			limit: limiter.Limit{Capacity: 1_000_000_000, Refill: 1_000_000_000}, from: empty, now: t0 + 100*365*24*3600*s,
			want: limiter.Bucket{Level: units(1_000_000_000), At: t0 + 100*365*24*3600*s},
		},
		"same instant changes nothing": {
			limit: odd, from: limiter.Bucket{Level: 42, At: t0}, now: t0,
			want: limiter.Bucket{Level: 42, At: t0},
		},
		"clock going backwards changes nothing": {
			limit: odd, from: limiter.Bucket{Level: 42, At: t0}, now: t0 - s,
			want: limiter.Bucket{Level: 42, At: t0},
		},
		"capacity lowered clamps the level": {
			limit: limiter.Limit{Capacity: 5, Refill: 1}, from: limiter.Bucket{Level: units(8), At: t0}, now: t0 + s,
			want: limiter.Bucket{Level: units(5), At: t0 + s},
		},
		"capacity lowered clamps even when the clock went backwards": {
			limit: limiter.Limit{Capacity: 5, Refill: 1}, from: limiter.Bucket{Level: units(8), At: t0}, now: t0 - s,
			want: limiter.Bucket{Level: units(5), At: t0},
		},
		"capacity raised keeps the level and refills toward the new capacity": {
			limit: limiter.Limit{Capacity: 20, Refill: 1}, from: limiter.Bucket{Level: units(10), At: t0}, now: t0 + 3*s,
			want: limiter.Bucket{Level: units(13), At: t0 + 3*s},
		},
		"zero refill moves the time only": {
			limit: limiter.Limit{Capacity: 5}, from: limiter.Bucket{Level: units(1), At: t0}, now: t0 + s,
			want: limiter.Bucket{Level: units(1), At: t0 + s},
		},
	}
	for name, tc := range tests {
		t.Run(name, func(t *testing.T) {
			assert.Equal(t, tc.want, tc.from.Advance(tc.limit, tc.now))
		})
	}
}

func TestBucketAdvanceIsPathIndependent(t *testing.T) {
	// Advancing in many small steps lands on the same level as one big step:
	// refill is exact, with no rounding lost between calls.
	l := limiter.Limit{Capacity: 10_000, Refill: 166}
	stepped := empty
	for now := t0; now <= t0+s; now += 7 {
		stepped = stepped.Advance(l, now)
	}
	stepped = stepped.Advance(l, t0+s)
	assert.Equal(t, empty.Advance(l, t0+s), stepped)
}

func TestBucketCheck(t *testing.T) {
	tests := map[string]struct {
		limit        limiter.Limit
		level        int64
		cost         int64
		ok, possible bool
		wait         time.Duration
	}{
		"zero cost always fits": {
			limit: limiter.Limit{Capacity: 10, Refill: 1}, level: 0, cost: 0,
			ok: true, possible: true,
		},
		"cost equal to level fits": {
			limit: limiter.Limit{Capacity: 10, Refill: 1}, level: units(3), cost: 3,
			ok: true, possible: true,
		},
		"cost equal to capacity fits a full bucket": {
			limit: limiter.Limit{Capacity: 10, Refill: 1}, level: units(10), cost: 10,
			ok: true, possible: true,
		},
		"one micro-unit short waits one refill step": {
			limit: limiter.Limit{Capacity: 10, Refill: 1}, level: units(3) - 1, cost: 3,
			possible: true, wait: time.Microsecond,
		},
		"wait is exact": {
			limit: limiter.Limit{Capacity: 10_000, Refill: 166}, level: 0, cost: 166,
			possible: true, wait: time.Second,
		},
		"wait rounds up to the microsecond": {
			limit: limiter.Limit{Capacity: 10_000, Refill: 166}, level: 0, cost: 1,
			possible: true, wait: 6025 * time.Microsecond,
		},
		"wait counts the partial level": {
			limit: limiter.Limit{Capacity: 10, Refill: 3}, level: units(1) / 2, cost: 1,
			possible: true, wait: 166_667 * time.Microsecond, // 500_000/3 rounded up
		},
		"cost above capacity is never possible": {
			limit: limiter.Limit{Capacity: 10, Refill: 1}, level: units(10), cost: 11,
			wait: 0,
		},
		"no refill and short is never possible": {
			limit: limiter.Limit{Capacity: 10}, level: units(1), cost: 2,
			wait: 0,
		},
	}
	for name, tc := range tests {
		t.Run(name, func(t *testing.T) {
			ok, possible, wait := limiter.Bucket{Level: tc.level, At: t0}.Check(tc.limit, tc.cost)
			assert.Equal(t, tc.ok, ok, "ok")
			assert.Equal(t, tc.possible, possible, "possible")
			assert.Equal(t, tc.wait, wait, "wait")
		})
	}
}

func TestBucketCheckWaitIsTight(t *testing.T) {
	// After exactly the wait Check reports, the cost fits; one microsecond
	// earlier it does not.
	for name, tc := range map[string]struct {
		limit limiter.Limit
		level int64
		cost  int64
	}{
		"166/s one unit":         {limit: limiter.Limit{Capacity: 10_000, Refill: 166}, cost: 1},
		"3/s from half a unit":   {limit: limiter.Limit{Capacity: 10, Refill: 3}, level: units(1) / 2, cost: 2},
		"7/s whole bucket":       {limit: limiter.Limit{Capacity: 9, Refill: 7}, cost: 9},
		"1e9/s one unit":         {limit: limiter.Limit{Capacity: 1_000_000_000, Refill: 1_000_000_000}, cost: 1},
		"1/s almost a whole one": {limit: limiter.Limit{Capacity: 1, Refill: 1}, level: 1, cost: 1},
	} {
		t.Run(name, func(t *testing.T) {
			b := limiter.Bucket{Level: tc.level, At: t0}
			ok, possible, wait := b.Check(tc.limit, tc.cost)
			require.False(t, ok)
			require.True(t, possible)
			w := wait.Microseconds()
			require.Positive(t, w)

			ok, _, _ = b.Advance(tc.limit, t0+w).Check(tc.limit, tc.cost)
			assert.True(t, ok, "fits after the wait")
			ok, _, rest := b.Advance(tc.limit, t0+w-1).Check(tc.limit, tc.cost)
			assert.False(t, ok, "short one microsecond before")
			assert.Equal(t, time.Microsecond, rest, "the remaining wait is one microsecond")
		})
	}
}

func TestBucketState(t *testing.T) {
	tests := map[string]struct {
		limit      limiter.Limit
		level      int64
		remaining  int64
		resetAfter time.Duration
	}{
		"full": {
			limit: limiter.Limit{Capacity: 10, Refill: 1}, level: units(10),
			remaining: 10, resetAfter: 0,
		},
		"empty": {
			limit: limiter.Limit{Capacity: 10, Refill: 4}, level: 0,
			remaining: 0, resetAfter: 2500 * time.Millisecond,
		},
		"partial units round down": {
			limit: limiter.Limit{Capacity: 10, Refill: 1}, level: units(3) + 999_999,
			remaining: 3, resetAfter: 6*time.Second + time.Microsecond,
		},
		"reset rounds up": {
			limit: limiter.Limit{Capacity: 10, Refill: 3}, level: 0,
			remaining: 0, resetAfter: 3_333_334 * time.Microsecond,
		},
		"no refill never resets": {
			limit: limiter.Limit{Capacity: 10}, level: units(2),
			remaining: 2, resetAfter: 0,
		},
	}
	for name, tc := range tests {
		t.Run(name, func(t *testing.T) {
			remaining, resetAfter := limiter.Bucket{Level: tc.level, At: t0}.State(tc.limit)
			assert.Equal(t, tc.remaining, remaining, "remaining")
			assert.Equal(t, tc.resetAfter, resetAfter, "resetAfter")
		})
	}
}

func TestBucketFull(t *testing.T) {
	l := limiter.Limit{Capacity: 10, Refill: 2}
	tests := map[string]struct {
		b    limiter.Bucket
		now  int64
		want bool
	}{
		"new bucket":                 {b: limiter.NewBucket(l, t0), now: t0, want: true},
		"drained":                    {b: empty, now: t0, want: false},
		"drained, refilled":          {b: empty, now: t0 + 5*s, want: true},
		"drained, one µs short":      {b: empty, now: t0 + 5*s - 1, want: false},
		"above a lowered capacity":   {b: limiter.Bucket{Level: units(20), At: t0}, now: t0, want: true},
		"clock behind the last call": {b: empty, now: t0 - 10*s, want: false},
	}
	for name, tc := range tests {
		t.Run(name, func(t *testing.T) {
			assert.Equal(t, tc.want, tc.b.Full(l, tc.now))
		})
	}
}

func TestMicros(t *testing.T) {
	at := time.Date(2026, 1, 1, 0, 0, 1, 2500, time.UTC) // 2.5 µs past the second
	assert.Equal(t, t0+s+2, limiter.Micros(at))
}

// take is a Take on pool/client with limit l and cost c.
func take(pool, client string, l limiter.Limit, c int64) limiter.Take {
	return limiter.Take{Key: limiter.Key{Pool: pool, Client: client}, Limit: l, Cost: c}
}

func shadow(t limiter.Take) limiter.Take { t.Shadow = true; return t }

func TestApply(t *testing.T) {
	ten := limiter.Limit{Capacity: 10, Refill: 1}
	hundred := limiter.Limit{Capacity: 100, Refill: 10}
	type state struct {
		remaining  int64
		short      bool
		retryAfter time.Duration
	}
	tests := map[string]struct {
		levels []int64 // bucket levels in micro-units, one per take
		takes  []limiter.Take

		allowed    bool
		reason     limiter.Reason
		blocking   int
		retryAfter time.Duration
		after      []int64 // levels after Apply
		states     []state
	}{
		"no takes": {
			allowed: true, blocking: -1, after: []int64{}, states: []state{},
		},
		"burst: a full bucket grants its whole capacity at once": {
			levels: []int64{units(10)}, takes: []limiter.Take{take("p", "", ten, 10)},
			allowed: true, blocking: -1, after: []int64{0},
			states: []state{{remaining: 0}},
		},
		"burst: not capacity+1": {
			levels: []int64{units(10)}, takes: []limiter.Take{take("p", "", ten, 11)},
			reason: limiter.ReasonExceedsCapacity, blocking: 0, after: []int64{units(10)},
			states: []state{{remaining: 10, short: true}},
		},
		"short bucket: retry after is exact": {
			levels: []int64{units(2)}, takes: []limiter.Take{take("p", "", hundred, 5)},
			reason: limiter.ReasonRateLimited, blocking: 0, retryAfter: 300 * time.Millisecond,
			after:  []int64{units(2)},
			states: []state{{remaining: 2, short: true, retryAfter: 300 * time.Millisecond}},
		},
		"short bucket: retry after rounds up": {
			levels: []int64{0}, takes: []limiter.Take{take("p", "", limiter.Limit{Capacity: 10_000, Refill: 166}, 1)},
			reason: limiter.ReasonRateLimited, blocking: 0, retryAfter: 6025 * time.Microsecond,
			after:  []int64{0},
			states: []state{{short: true, retryAfter: 6025 * time.Microsecond}},
		},
		"cost above capacity: exceeds_capacity with no retry": {
			levels: []int64{0}, takes: []limiter.Take{take("p", "", ten, 11)},
			reason: limiter.ReasonExceedsCapacity, blocking: 0, retryAfter: 0,
			after:  []int64{0},
			states: []state{{short: true}},
		},
		"all takes debited when all fit": {
			levels:  []int64{units(100), units(10)},
			takes:   []limiter.Take{take("p", "", hundred, 4), take("p", "c", ten, 4)},
			allowed: true, blocking: -1, after: []int64{units(96), units(6)},
			states: []state{{remaining: 96}, {remaining: 6}},
		},
		"atomic: second bucket short leaves the first untouched": {
			levels: []int64{units(100), units(3)},
			takes:  []limiter.Take{take("p", "", hundred, 4), take("p", "c", ten, 4)},
			reason: limiter.ReasonRateLimited, blocking: 1, retryAfter: time.Second,
			after:  []int64{units(100), units(3)},
			states: []state{{remaining: 100}, {remaining: 3, short: true, retryAfter: time.Second}},
		},
		"atomic: first bucket short leaves the second untouched": {
			levels: []int64{units(3), units(100)},
			takes:  []limiter.Take{take("p", "", ten, 4), take("p", "c", hundred, 4)},
			reason: limiter.ReasonRateLimited, blocking: 0, retryAfter: time.Second,
			after:  []int64{units(3), units(100)},
			states: []state{{remaining: 3, short: true, retryAfter: time.Second}, {remaining: 100}},
		},
		"shadow short: allowed, reported, not debited": {
			levels:  []int64{units(100), units(3)},
			takes:   []limiter.Take{take("p", "", hundred, 4), shadow(take("p", "c", ten, 4))},
			allowed: true, blocking: -1,
			after:  []int64{units(96), units(3)},
			states: []state{{remaining: 96}, {remaining: 3, short: true, retryAfter: time.Second}},
		},
		"shadow ok: debited": {
			levels:  []int64{units(100), units(10)},
			takes:   []limiter.Take{take("p", "", hundred, 4), shadow(take("p", "c", ten, 4))},
			allowed: true, blocking: -1,
			after:  []int64{units(96), units(6)},
			states: []state{{remaining: 96}, {remaining: 6}},
		},
		"shadow above capacity: allowed, not debited": {
			levels:  []int64{units(10)},
			takes:   []limiter.Take{shadow(take("p", "", ten, 11))},
			allowed: true, blocking: -1,
			after:  []int64{units(10)},
			states: []state{{remaining: 10, short: true}},
		},
		"shadow ok but a real bucket short: nothing debited": {
			levels: []int64{units(10), units(1)},
			takes:  []limiter.Take{shadow(take("p", "", ten, 2)), take("p", "c", ten, 2)},
			reason: limiter.ReasonRateLimited, blocking: 1, retryAfter: time.Second,
			after:  []int64{units(10), units(1)},
			states: []state{{remaining: 10}, {remaining: 1, short: true, retryAfter: time.Second}},
		},
		"several short: exceeds_capacity beats an earlier rate_limited": {
			levels: []int64{0, units(10)},
			takes:  []limiter.Take{take("p", "", ten, 5), take("p", "c", ten, 11)},
			reason: limiter.ReasonExceedsCapacity, blocking: 1, retryAfter: 0,
			after:  []int64{0, units(10)},
			states: []state{{short: true, retryAfter: 5 * time.Second}, {remaining: 10, short: true}},
		},
		"several short: exceeds_capacity beats a later rate_limited": {
			levels: []int64{units(10), 0},
			takes:  []limiter.Take{take("p", "", ten, 11), take("p", "c", ten, 5)},
			reason: limiter.ReasonExceedsCapacity, blocking: 0, retryAfter: 0,
			after:  []int64{units(10), 0},
			states: []state{{remaining: 10, short: true}, {short: true, retryAfter: 5 * time.Second}},
		},
		"several short: the longer wait wins": {
			levels: []int64{0, 0, 0},
			takes:  []limiter.Take{take("a", "", ten, 2), take("b", "", ten, 7), take("c", "", ten, 3)},
			reason: limiter.ReasonRateLimited, blocking: 1, retryAfter: 7 * time.Second,
			after: []int64{0, 0, 0},
			states: []state{
				{short: true, retryAfter: 2 * time.Second},
				{short: true, retryAfter: 7 * time.Second},
				{short: true, retryAfter: 3 * time.Second},
			},
		},
		"several short: equal waits keep the first": {
			levels: []int64{0, 0},
			takes:  []limiter.Take{take("a", "", ten, 2), take("b", "", ten, 2)},
			reason: limiter.ReasonRateLimited, blocking: 0, retryAfter: 2 * time.Second,
			after:  []int64{0, 0},
			states: []state{{short: true, retryAfter: 2 * time.Second}, {short: true, retryAfter: 2 * time.Second}},
		},
		"several short: a shadow's longer wait does not block": {
			levels: []int64{0, 0},
			takes:  []limiter.Take{take("a", "", ten, 2), shadow(take("b", "", ten, 9))},
			reason: limiter.ReasonRateLimited, blocking: 0, retryAfter: 2 * time.Second,
			after:  []int64{0, 0},
			states: []state{{short: true, retryAfter: 2 * time.Second}, {short: true, retryAfter: 9 * time.Second}},
		},
		"zero cost on an empty bucket is granted": {
			levels: []int64{0}, takes: []limiter.Take{take("p", "", ten, 0)},
			allowed: true, blocking: -1, after: []int64{0},
			states: []state{{}},
		},
	}
	for name, tc := range tests {
		t.Run(name, func(t *testing.T) {
			buckets := make([]limiter.Bucket, len(tc.levels))
			for i, lv := range tc.levels {
				buckets[i] = limiter.Bucket{Level: lv, At: t0}
			}
			d := limiter.Apply(buckets, tc.takes)

			assert.Equal(t, tc.allowed, d.Allowed, "allowed")
			assert.Equal(t, tc.reason, d.Reason, "reason")
			assert.Equal(t, tc.blocking, d.Blocking, "blocking")
			assert.Equal(t, tc.retryAfter, d.RetryAfter, "retryAfter")

			after := make([]int64, len(buckets))
			for i, b := range buckets {
				after[i] = b.Level
				assert.Equal(t, t0, b.At, "Apply never moves the time")
			}
			assert.Equal(t, tc.after, after, "levels after")

			require.Len(t, d.Buckets, len(tc.takes))
			for i, st := range d.Buckets {
				assert.Equal(t, tc.takes[i].Key, st.Key, "bucket %d key", i)
				assert.Equal(t, tc.takes[i].Limit, st.Limit, "bucket %d limit", i)
				assert.Equal(t, tc.states[i].remaining, st.Remaining, "bucket %d remaining", i)
				assert.Equal(t, tc.states[i].short, st.Short, "bucket %d short", i)
				assert.Equal(t, tc.states[i].retryAfter, st.RetryAfter, "bucket %d retryAfter", i)
				// ResetAfter describes the bucket after the decision.
				_, reset := limiter.Bucket{Level: tc.after[i]}.State(tc.takes[i].Limit)
				assert.Equal(t, reset, st.ResetAfter, "bucket %d resetAfter", i)
			}
		})
	}
}

func TestApplyDrainsOneByOne(t *testing.T) {
	// A full bucket of 10 grants ten single units at one instant, then
	// denies the eleventh with the exact wait for one unit.
	l := limiter.Limit{Capacity: 10, Refill: 3}
	b := []limiter.Bucket{limiter.NewBucket(l, t0)}
	takes := []limiter.Take{take("p", "", l, 1)}
	for i := range 10 {
		d := limiter.Apply(b, takes)
		require.True(t, d.Allowed, "take %d", i+1)
		assert.Equal(t, int64(9-i), d.Buckets[0].Remaining)
	}
	d := limiter.Apply(b, takes)
	assert.False(t, d.Allowed)
	assert.Equal(t, limiter.ReasonRateLimited, d.Reason)
	assert.Equal(t, 333_334*time.Microsecond, d.RetryAfter)
	assert.Equal(t, int64(0), b[0].Level)
}

func TestDecisionShadowDenied(t *testing.T) {
	l := limiter.Limit{Capacity: 10, Refill: 1}
	tests := map[string]struct {
		levels []int64
		takes  []limiter.Take
		want   int
		ok     bool
	}{
		"no shadow": {
			levels: []int64{0}, takes: []limiter.Take{take("p", "", l, 1)},
			want: -1,
		},
		"shadow fits": {
			levels: []int64{units(10)}, takes: []limiter.Take{shadow(take("p", "", l, 1))},
			want: -1,
		},
		"second take is a short shadow": {
			levels: []int64{units(10), 0},
			takes:  []limiter.Take{take("p", "", l, 1), shadow(take("p", "c", l, 1))},
			want:   1, ok: true,
		},
	}
	for name, tc := range tests {
		t.Run(name, func(t *testing.T) {
			buckets := make([]limiter.Bucket, len(tc.levels))
			for i, lv := range tc.levels {
				buckets[i] = limiter.Bucket{Level: lv, At: t0}
			}
			d := limiter.Apply(buckets, tc.takes)
			i, ok := d.ShadowDenied(tc.takes)
			assert.Equal(t, tc.want, i)
			assert.Equal(t, tc.ok, ok)
		})
	}
}

func TestDecisionTightest(t *testing.T) {
	st := func(remaining, capacity int64) limiter.BucketState {
		return limiter.BucketState{Remaining: remaining, Limit: limiter.Limit{Capacity: capacity, Refill: 1}}
	}
	tests := map[string]struct {
		d    limiter.Decision
		want int
	}{
		"no buckets": {
			d: limiter.Decision{Allowed: true, Blocking: -1}, want: -1,
		},
		"one bucket": {
			d: limiter.Decision{Allowed: true, Blocking: -1, Buckets: []limiter.BucketState{st(3, 10)}}, want: 0,
		},
		"least share, not least units": {
			// 30 of 1000 (3%) is tighter than 5 of 10 (50%).
			d:    limiter.Decision{Allowed: true, Blocking: -1, Buckets: []limiter.BucketState{st(5, 10), st(30, 1000)}},
			want: 1,
		},
		"least share first": {
			d:    limiter.Decision{Allowed: true, Blocking: -1, Buckets: []limiter.BucketState{st(1, 10), st(30, 100), st(9, 10)}},
			want: 0,
		},
		"equal shares keep the first": {
			d:    limiter.Decision{Allowed: true, Blocking: -1, Buckets: []limiter.BucketState{st(50, 100), st(5, 10)}},
			want: 0,
		},
		"blocking bucket wins over a tighter one": {
			d:    limiter.Decision{Reason: limiter.ReasonRateLimited, Blocking: 0, Buckets: []limiter.BucketState{st(9, 10), st(0, 10)}},
			want: 0,
		},
		"zero capacity is skipped": {
			d:    limiter.Decision{Allowed: true, Blocking: -1, Buckets: []limiter.BucketState{st(0, 0), st(9, 10)}},
			want: 1,
		},
		"only zero capacities": {
			d:    limiter.Decision{Allowed: true, Blocking: -1, Buckets: []limiter.BucketState{st(0, 0)}},
			want: -1,
		},
		"largest capacities do not overflow": {
			d: limiter.Decision{Allowed: true, Blocking: -1, Buckets: []limiter.BucketState{
				st(999_999_999, 1_000_000_000), st(999_999_998, 1_000_000_000),
			}},
			want: 1,
		},
	}
	for name, tc := range tests {
		t.Run(name, func(t *testing.T) {
			assert.Equal(t, tc.want, tc.d.Tightest())
		})
	}
}

func TestKeyString(t *testing.T) {
	tests := map[string]struct {
		key  limiter.Key
		want string
	}{
		"pool only":       {key: limiter.Key{Pool: "chat"}, want: "4:chat:0:"},
		"pool and client": {key: limiter.Key{Pool: "chat", Client: "alice"}, want: "4:chat:5:alice"},
		"empty":           {key: limiter.Key{}, want: "0::0:"},
		"lengths in bytes": {
			key: limiter.Key{Pool: "é", Client: "日本"}, want: "2:é:6:日本",
		},
	}
	for name, tc := range tests {
		t.Run(name, func(t *testing.T) {
			assert.Equal(t, tc.want, tc.key.String())
		})
	}
}

func TestKeyStringNoCollisions(t *testing.T) {
	// Each pair collides when pool and client are naively joined with sep;
	// the length-prefixed encoding tells them apart.
	tests := map[string]struct {
		a, b limiter.Key
		sep  string
	}{
		"colon moves between parts": {
			a: limiter.Key{Pool: "a:b", Client: "c"}, b: limiter.Key{Pool: "a", Client: "b:c"}, sep: ":",
		},
		"underscore moves between parts": {
			a: limiter.Key{Pool: "chat_gpt", Client: "4"}, b: limiter.Key{Pool: "chat", Client: "gpt_4"}, sep: "_",
		},
		"no separator": {
			a: limiter.Key{Pool: "ab", Client: ""}, b: limiter.Key{Pool: "a", Client: "b"}, sep: "",
		},
		"pool-wide versus client with empty pool": {
			a: limiter.Key{Pool: "ab"}, b: limiter.Key{Client: "ab"}, sep: "",
		},
		"trailing separator in pool": {
			a: limiter.Key{Pool: "p:", Client: ""}, b: limiter.Key{Pool: "p", Client: ":"}, sep: ":",
		},
		"client forging a length prefix": {
			a: limiter.Key{Pool: "p", Client: "1:x"}, b: limiter.Key{Pool: "p:1", Client: "x"}, sep: ":",
		},
		"digits that look like lengths": {
			a: limiter.Key{Pool: "1:a:1", Client: "b"}, b: limiter.Key{Pool: "1", Client: "a:1:b"}, sep: ":",
		},
		"hash tag braces": {
			a: limiter.Key{Pool: "{p}", Client: "c"}, b: limiter.Key{Pool: "{p", Client: "}c"}, sep: "",
		},
	}
	for name, tc := range tests {
		t.Run(name, func(t *testing.T) {
			require.Equal(t, tc.a.Pool+tc.sep+tc.a.Client, tc.b.Pool+tc.sep+tc.b.Client, "the pair collides when joined naively")
			require.NotEqual(t, tc.a, tc.b)
			assert.NotEqual(t, tc.a.String(), tc.b.String())
		})
	}
}

func TestKeyStringInjective(t *testing.T) {
	// Every way to split a handful of strings into pool and client encodes
	// differently.
	parts := []string{"", "a", "b", ":", "0", "1", "1:", ":0", "a:b", "0:", "_", "10"}
	seen := make(map[string]limiter.Key)
	for _, p1 := range parts {
		for _, p2 := range parts {
			for _, c := range parts {
				k := limiter.Key{Pool: p1 + p2, Client: c}
				enc := k.String()
				if prev, ok := seen[enc]; ok {
					require.Equal(t, prev, k, "%q encodes two keys", enc)
				}
				seen[enc] = k
				require.True(t, strings.HasSuffix(enc, c))
			}
		}
	}
}
