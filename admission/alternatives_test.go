package admission

import (
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/tollgate/tollgate/costing"
	"github.com/tollgate/tollgate/limiter"
	"github.com/tollgate/tollgate/policy"
)

const altPolicy = `
pools:
  gpt:
    unit: token
    capacity: 1000
    refill: 1000/min
    reserved:
      - {tier: gold, share: 20%}
      - {client: acme, share: 40%, lend: idle, keep: 25%}
  plain: {unit: request, capacity: 10, refill_per_second: 1}
  gpt-bob:
    unit: token
    capacity: 50
    refill: 50/min
    dedicated: {client: bob, instead_of: gpt}
routes:
  openai:
    host: api.openai.com
    path_prefix: /v1/
    provider: openai
    pools: [gpt, plain]
tiers:
  gold:
    priority: 30
    max_concurrent: 4
    client_limits:
      gpt: {capacity: 500, refill: 500/min}
  basic: {priority: 10, max_concurrent: 4}
clients:
  acme: {tier: basic}
  goldie: {tier: gold}
  bob: {tier: basic}
  carol: {tier: basic}
`

// TestAlternatives: which buckets each client's call tries, in order.
func TestAlternatives(t *testing.T) {
	set := compile(t, altPolicy)
	gpt, plain := set.Pools["gpt"], set.Pools["plain"]
	key := func(c string) limiter.Key { return limiter.Key{Pool: "gpt", Client: c} }
	plainTake := limiter.Take{Key: limiter.Key{Pool: "plain"}, Limit: limiter.Limit{Capacity: 10, Refill: 1}, Cost: 1}
	shared := limiter.Take{Key: key(""), Limit: limiter.Limit(gpt.SharedLimit()), Cost: 100}
	acmeLend := limiter.Take{Key: key("#client:acme#lend"), Limit: limiter.Limit(gpt.Reserved[1].Lent.Limit), Cost: 100}
	acmeKeep := limiter.Take{Key: key("#client:acme#keep"), Limit: limiter.Limit(gpt.Reserved[1].Kept.Limit), Cost: 100}
	gold := limiter.Take{Key: key("#tier:gold"), Limit: limiter.Limit(gpt.Reserved[0].Kept.Limit), Cost: 100}
	goldieCap := limiter.Take{Key: key("goldie"), Limit: limiter.Limit(set.Tiers["gold"].ClientLimits["gpt"]), Cost: 100}
	require.Equal(t, policy.Limit{Capacity: 400, Refill: 20, Per: 3 * time.Second}, gpt.SharedLimit(), "1000/min less 20% and 40%")

	tests := map[string]struct {
		client  string
		alts    [][]limiter.Take
		varies  []bool
		borrows []bool
	}{
		"another client: shared, then acme's lent part (never gold's)": {
			client:  "carol",
			alts:    [][]limiter.Take{{shared, plainTake}, {acmeLend, plainTake}},
			varies:  []bool{true, false},
			borrows: []bool{false, true},
		},
		"the owning client: lent, kept, shared": {
			client:  "acme",
			alts:    [][]limiter.Take{{acmeLend, plainTake}, {acmeKeep, plainTake}, {shared, plainTake}},
			varies:  []bool{true, false},
			borrows: []bool{false, false, false},
		},
		"the owning tier: its share, shared, acme's lent part; its client cap every time": {
			client:  "goldie",
			alts:    [][]limiter.Take{{gold, goldieCap, plainTake}, {shared, goldieCap, plainTake}, {acmeLend, goldieCap, plainTake}},
			varies:  []bool{true, false, false},
			borrows: []bool{false, false, true},
		},
	}
	for name, tc := range tests {
		t.Run(name, func(t *testing.T) {
			c, _ := set.Client(tc.client)
			est := &costing.Estimate{Pools: []costing.PoolCost{{Pool: gpt, Units: 100}, {Pool: plain, Units: 1}}, Cost: 10, Reserve: 12}
			require.True(t, reservedIn(est))
			p := makePlan(set, c, policy.Normal, est, SettleDeferred, "r1", time.Unix(0, 0), time.Time{})
			assert.Equal(t, tc.alts, p.alts)
			assert.Equal(t, tc.varies, p.varies)
			assert.Equal(t, tc.borrows, p.borrows)
			assert.Equal(t, tc.alts[0], p.req.Takes)
			for i := range p.alts {
				require.NoError(t, p.alt(i).Validate())
			}
		})
	}

	t.Run("a dedicated client: its own pool alone, no alternatives", func(t *testing.T) {
		bob, _ := set.Client("bob")
		route := set.RouteFor(set.Route("openai"), bob)
		require.Equal(t, "gpt-bob", route.Pools[0].Name)
		est := &costing.Estimate{Pools: []costing.PoolCost{{Pool: route.Pools[0], Units: 10}, {Pool: plain, Units: 1}}}
		p := makePlan(set, bob, policy.Normal, est, SettleDeferred, "r1", time.Unix(0, 0), time.Time{})
		assert.Nil(t, p.alts)
		assert.Equal(t, []limiter.Take{
			{Key: limiter.Key{Pool: "gpt-bob"}, Limit: limiter.Limit(set.Pools["gpt-bob"].Limit), Cost: 10},
			{Key: limiter.Key{Pool: "plain"}, Limit: limiter.Limit{Capacity: 10, Refill: 1}, Cost: 1},
		}, p.req.Takes)
	})
	t.Run("a pool without reservations plans as before", func(t *testing.T) {
		carol, _ := set.Client("carol")
		est := &costing.Estimate{Pools: []costing.PoolCost{{Pool: plain, Units: 1}}}
		require.False(t, reservedIn(est))
		p := makePlan(set, carol, policy.Normal, est, SettleDeferred, "r1", time.Unix(0, 0), time.Time{})
		assert.Nil(t, p.alts)
		assert.Equal(t, takes(set, carol, est), p.req.Takes)
	})
}

// TestFallsBack: only a short bucket that differs between alternatives
// moves a call on to the next.
func TestFallsBack(t *testing.T) {
	p := &plan{varies: []bool{true, false}}
	tests := map[string]struct {
		dec  limiter.Decision
		want bool
	}{
		"rate limited by the split pool":   {limiter.Decision{Reason: limiter.ReasonRateLimited, Blocking: 0}, true},
		"too large for the part":           {limiter.Decision{Reason: limiter.ReasonExceedsCapacity, Blocking: 0}, true},
		"rate limited by the client's cap": {limiter.Decision{Reason: limiter.ReasonRateLimited, Blocking: 1}, false},
		"budget":                           {limiter.Decision{Reason: limiter.ReasonBudgetExceeded, Blocking: -1}, false},
		"concurrency":                      {limiter.Decision{Reason: limiter.ReasonConcurrency, Blocking: -1}, false},
		"granted":                          {limiter.Decision{Allowed: true, Blocking: -1}, false},
	}
	for name, tc := range tests {
		t.Run(name, func(t *testing.T) { assert.Equal(t, tc.want, p.fallsBack(tc.dec)) })
	}
}

// TestFitToSplitPool: fit_pool trims a call to the largest part of a split
// pool its client may spend, not to the whole pool.
func TestFitToSplitPool(t *testing.T) {
	y := strings.Replace(optimizeTestPolicy, "gpt: {unit: token, capacity: 10000, refill_per_second: 100}",
		"gpt: {unit: token, capacity: 10000, refill: 6000/min, reserved: [{client: calm, share: 30%}]}", 1)
	set := compile(t, y)
	s, _ := newOptimizeService(t)
	route := set.Route("openai")
	body := `{"model":"gpt-4o","max_tokens":16384,"messages":[{"role":"user","content":"hi"}]}`
	for client, want := range map[string]int64{"bigco": 7000, "calm": 7000} { // calm: its 3000, or the shared 7000
		t.Run(client, func(t *testing.T) {
			c, _ := set.Client(client)
			call := costing.NewCall("/v1/chat/completions", "application/json", []byte(body), int64(len(body)))
			e := s.est.Estimate(set, route, call)
			out, _, ok := s.fitToPool(set, route, c, call, e, nil, 7)
			require.True(t, ok)
			after := s.est.Estimate(set, route, out)
			assert.Equal(t, want, after.InputTokens+after.OutputTokens)
		})
	}
}
