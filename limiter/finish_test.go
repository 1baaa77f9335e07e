package limiter_test

import (
	"strings"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/tollgate/tollgate/limiter"
)

func TestCharged(t *testing.T) {
	l := limiter.Limit{Capacity: 10, Refill: 1}
	p, c, s := limiter.Key{Pool: "p"}, limiter.Key{Pool: "p", Client: "c"}, limiter.Key{Pool: "s", Client: "c"}
	takes := []limiter.Take{{Key: p, Limit: l, Cost: 3}, {Key: c, Limit: l, Cost: 0}, {Key: s, Limit: l, Cost: 9, Shadow: true}}
	tests := map[string]struct {
		d    limiter.Decision
		want []limiter.Charge
	}{
		"granted": {
			d:    limiter.Decision{Allowed: true, Buckets: make([]limiter.BucketState, 3)},
			want: []limiter.Charge{{Key: p, Limit: l, Units: 3}, {Key: c, Limit: l, Units: 0}, {Key: s, Limit: l, Units: 9}},
		},
		"a short shadow bucket was not charged": {
			d:    limiter.Decision{Allowed: true, Buckets: []limiter.BucketState{{}, {}, {Short: true}}},
			want: []limiter.Charge{{Key: p, Limit: l, Units: 3}, {Key: c, Limit: l, Units: 0}},
		},
		"denied": {d: limiter.Decision{Buckets: make([]limiter.BucketState, 3)}},
	}
	for name, tc := range tests {
		t.Run(name, func(t *testing.T) {
			assert.Equal(t, tc.want, limiter.Charged(takes, tc.d))
		})
	}
}

func TestEndingRefunds(t *testing.T) {
	l := limiter.Limit{Capacity: 10, Refill: 1}
	charges := []limiter.Charge{
		{Key: limiter.Key{Pool: "gpt"}, Limit: l, Units: 5},
		{Key: limiter.Key{Pool: "gpt", Client: "acme"}, Limit: l, Units: 5},
		{Key: limiter.Key{Pool: "sms"}, Limit: l, Units: 2},
	}
	tests := map[string]struct {
		used []limiter.PoolUse
		want []limiter.Refund
	}{
		"nothing named keeps every charge": {},
		"each bucket of a named pool": {
			used: []limiter.PoolUse{{Pool: "gpt", Units: 1}},
			want: []limiter.Refund{{Key: charges[0].Key, Limit: l, Units: 4}, {Key: charges[1].Key, Limit: l, Units: 4}},
		},
		"more than charged is a charge": {
			used: []limiter.PoolUse{{Pool: "sms", Units: 7}, {Pool: "other", Units: 1}},
			want: []limiter.Refund{{Key: charges[2].Key, Limit: l, Units: -5}},
		},
	}
	for name, tc := range tests {
		t.Run(name, func(t *testing.T) {
			assert.Equal(t, tc.want, limiter.Ending{ID: "x", Outcome: limiter.OutcomeSettled, Used: tc.used}.Refunds(charges))
		})
	}
}

func TestEndingValidate(t *testing.T) {
	l := limiter.Limit{Capacity: 10, Refill: 1}
	ok := func() limiter.Ending {
		return limiter.Ending{ID: "x", Outcome: limiter.OutcomeSettled, Actual: 5, Used: []limiter.PoolUse{{Pool: "p", Units: 1}},
			Throttles: []limiter.Throttle{{Key: limiter.Key{Pool: "p"}, Limit: l, Cap: 3}}}
	}
	require.NoError(t, ok().Validate())
	tests := map[string]struct {
		spoil func(e *limiter.Ending)
		want  string
	}{
		"empty id":           {func(e *limiter.Ending) { e.ID = "" }, "reservation id"},
		"expired":            {func(e *limiter.Ending) { e.Outcome = limiter.OutcomeExpired }, "outcome"},
		"negative actual":    {func(e *limiter.Ending) { e.Actual = -1 }, "actual cost"},
		"negative use":       {func(e *limiter.Ending) { e.Used[0].Units = -1 }, "used -1 units"},
		"pool twice":         {func(e *limiter.Ending) { e.Used = append(e.Used, e.Used[0]) }, "named twice"},
		"bad throttle":       {func(e *limiter.Ending) { e.Throttles[0].Limit.Capacity = 0 }, "throttles"},
		"too many throttles": {func(e *limiter.Ending) { e.Throttles = make([]limiter.Throttle, limiter.MaxCharges+1) }, "more than"},
	}
	for name, tc := range tests {
		t.Run(name, func(t *testing.T) {
			e := ok()
			tc.spoil(&e)
			err := e.Validate()
			require.Error(t, err)
			assert.True(t, strings.HasPrefix(err.Error(), "limiter: finish"), err.Error())
			assert.Contains(t, err.Error(), tc.want)
		})
	}
}

func TestRequestValidateBoundsCharges(t *testing.T) {
	l := limiter.Limit{Capacity: 10, Refill: 1}
	takes := func(n, keyLen int) []limiter.Take {
		out := make([]limiter.Take, n)
		for i := range out {
			out[i] = limiter.Take{Key: limiter.Key{Pool: strings.Repeat("p", keyLen), Client: string(rune('a'+i%26)) + strings.Repeat("c", i)}, Limit: l}
		}
		return out
	}
	hold := func() *limiter.Hold { return &limiter.Hold{ID: "h", TTL: 1} }
	tests := map[string]struct {
		req limiter.Request
		ok  bool
	}{
		"at the bound":             {limiter.Request{Takes: takes(limiter.MaxCharges, 1), Hold: hold()}, true},
		"over the bound":           {limiter.Request{Takes: takes(limiter.MaxCharges+1, 1), Hold: hold()}, false},
		"a key too long":           {limiter.Request{Takes: takes(1, 1100), Hold: hold()}, false},
		"no hold: nothing records": {limiter.Request{Takes: takes(limiter.MaxCharges+1, 1100)}, true},
		"commit: nothing records":  {limiter.Request{Takes: takes(limiter.MaxCharges+1, 1100), Hold: &limiter.Hold{Commit: true}}, true},
	}
	for name, tc := range tests {
		t.Run(name, func(t *testing.T) {
			if tc.ok {
				assert.NoError(t, tc.req.Validate())
			} else {
				assert.Error(t, tc.req.Validate())
			}
		})
	}
}
