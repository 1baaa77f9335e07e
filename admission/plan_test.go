package admission

import (
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/tollgate/tollgate/costing"
	"github.com/tollgate/tollgate/limiter"
	"github.com/tollgate/tollgate/policy"
)

const planPolicy = `
defaults:
  unknown_client: basic
  reservation_ttl: 90s
pools:
  gpt: {unit: token, capacity: 1000, refill_per_second: 10}
  sms: {unit: segment, capacity: 3, refill_per_second: 2, shadow: true}
routes:
  openai:
    host: api.openai.com
    path_prefix: /v1/
    provider: openai
    pools: [gpt]
    class: normal
tiers:
  basic:
    priority: 10
    max_concurrent: 4
    monthly_budget: "100"
    client_limits:
      gpt: {capacity: 200, refill_per_second: 2}
  batchy:
    priority: 5
    max_concurrent: 2
    max_class: batch
clients:
  org: {tier: basic}
  team: {tier: basic, parent: org}
  slow: {tier: batchy}
queue:
  classes:
    normal: {max_wait: 30s}
    batch: {max_wait: 2m}
`

func compile(t *testing.T, y string) *policy.Set {
	t.Helper()
	s, err := policy.Compile(policy.Source{Name: "plan.yaml", Data: []byte(y)})
	require.NoError(t, err)
	return s
}

func TestChain(t *testing.T) {
	set := compile(t, planPolicy)
	team, ok := set.Client("team")
	require.True(t, ok)
	got := Chain(team)
	require.Len(t, got, 2)
	assert.Equal(t, "team", got[0].Owner)
	assert.Equal(t, "org", got[1].Owner)
	assert.Equal(t, 100*policy.NanosPerDollar, got[0].Limit, "the tier's budget caps the client")

	slow, _ := set.Client("slow")
	assert.Equal(t, []limiter.Budget{{Owner: "slow", Limit: limiter.Unlimited}}, Chain(slow), "an unbudgeted client is tracked, not capped")
}

// TestMakePlan: the policy becomes the limiter's request (pool and client
// buckets, shadow flags, budgets, hold) and the call's room to wait.
func TestMakePlan(t *testing.T) {
	set := compile(t, planPolicy)
	now := time.Date(2026, 12, 6, 10, 0, 0, 0, time.UTC)
	gpt, sms := set.Pools["gpt"], set.Pools["sms"]
	est := &costing.Estimate{Pools: []costing.PoolCost{{Pool: gpt, Units: 120}, {Pool: sms, Units: 1}}, Cost: 1000, Reserve: 1200}
	team, _ := set.Client("team")
	slow, _ := set.Client("slow")

	tests := map[string]struct {
		client   *policy.Client
		class    policy.Class
		settle   Settlement
		envoy    time.Time
		takes    []limiter.Take
		cost     policy.Money
		commit   bool
		slot     *limiter.Slot
		deadline time.Time
		canWait  bool
	}{
		"deferred: a hold of the reserve, a slot, the client bucket": {
			client: team, class: policy.Normal, settle: SettleDeferred,
			takes: []limiter.Take{
				{Key: limiter.Key{Pool: "gpt"}, Limit: limiter.Limit{Capacity: 1000, Refill: 10}, Cost: 120},
				{Key: limiter.Key{Pool: "gpt", Client: "team"}, Limit: limiter.Limit{Capacity: 200, Refill: 2}, Cost: 120},
				{Key: limiter.Key{Pool: "sms"}, Limit: limiter.Limit{Capacity: 3, Refill: 2}, Cost: 1, Shadow: true},
			},
			cost: 1200, slot: &limiter.Slot{Client: "team", Max: 4},
			deadline: now.Add(30 * time.Second), canWait: true,
		},
		"immediate: the expected cost, committed, no slot": {
			client: slow, class: policy.Batch, settle: SettleImmediate,
			takes: []limiter.Take{
				{Key: limiter.Key{Pool: "gpt"}, Limit: limiter.Limit{Capacity: 1000, Refill: 10}, Cost: 120},
				{Key: limiter.Key{Pool: "sms"}, Limit: limiter.Limit{Capacity: 3, Refill: 2}, Cost: 1, Shadow: true},
			},
			cost: 1000, commit: true, deadline: now.Add(2 * time.Minute), canWait: true,
		},
		"Envoy's deadline comes first: answered a margin before it": {
			client: team, class: policy.Normal, settle: SettleDeferred, envoy: now.Add(5 * time.Second),
			cost: 1200, slot: &limiter.Slot{Client: "team", Max: 4},
			deadline: now.Add(5*time.Second - deadlineMargin), canWait: true,
		},
		"an immediate call never waits": {
			client: team, class: policy.Immediate, settle: SettleDeferred,
			cost: 1200, slot: &limiter.Slot{Client: "team", Max: 4}, deadline: now,
		},
	}
	for name, tc := range tests {
		t.Run(name, func(t *testing.T) {
			p := makePlan(set, tc.client, tc.class, est, tc.settle, "r1", now, tc.envoy)
			if tc.takes != nil {
				assert.Equal(t, tc.takes, p.req.Takes)
			}
			h := p.req.Hold
			require.NotNil(t, h)
			assert.Equal(t, tc.cost, h.Cost)
			assert.Equal(t, tc.commit, h.Commit)
			assert.Equal(t, tc.slot, h.Slot)
			assert.Equal(t, "2026-12", h.Period)
			assert.Equal(t, Chain(tc.client), h.Budgets)
			if !tc.commit {
				assert.Equal(t, "r1", h.ID)
				assert.Equal(t, 90*time.Second, h.TTL)
			}
			assert.Equal(t, tc.deadline, p.deadline)
			assert.Equal(t, tc.canWait, p.canWait)
			require.NoError(t, p.req.Validate())
		})
	}
}

// TestClassOf: the header may ask for a class, the tier caps it.
func TestClassOf(t *testing.T) {
	set := compile(t, planPolicy)
	route := set.Route("openai")
	team, _ := set.Client("team")
	slow, _ := set.Client("slow")
	hdr := set.Queue.PriorityHeader
	tests := map[string]struct {
		client *policy.Client
		header string
		want   policy.Class
	}{
		"the route's class":           {client: team, want: policy.Normal},
		"asked by header":             {client: team, header: "fast", want: policy.Fast},
		"an unknown header is unread": {client: team, header: "asap", want: policy.Normal},
		"capped by the tier":          {client: slow, header: "immediate", want: policy.Batch},
	}
	for name, tc := range tests {
		t.Run(name, func(t *testing.T) {
			r := &Request{Headers: map[string]string{}}
			if tc.header != "" {
				r.Headers[hdr] = tc.header
			}
			assert.Equal(t, tc.want, classOf(set, r, route, tc.client))
		})
	}
}
