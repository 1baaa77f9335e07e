package admission

import (
	"context"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/tollgate/tollgate/costing"
	"github.com/tollgate/tollgate/costing/optimize"
	"github.com/tollgate/tollgate/internal/fakeclock"
	"github.com/tollgate/tollgate/limiter"
	"github.com/tollgate/tollgate/limiter/memstore"
	"github.com/tollgate/tollgate/policy"
)

const optimizeTestPolicy = `
defaults: {unknown_client: deny}
pools:
  gpt: {unit: token, capacity: 10000, refill_per_second: 100}
  claude: {unit: token, capacity: 200000, refill_per_second: 1000}
models:
  "gpt-4o-mini*": {input: "0.15/1M", output: "0.60/1M", cached_input: "0.075/1M", flex_input: "0.075/1M", flex_output: "0.30/1M"}
  "gpt-4o*": {input: "2.50/1M", output: "10/1M", cached_input: "1.25/1M"}
  "gpt-4.1*": {input: "2/1M", output: "8/1M"}
  "claude-sonnet-4*": {input: "3/1M", output: "15/1M", cached_input: "0.30/1M", cache_write: "3.75/1M"}
routes:
  openai: {host: api.openai.com, path_prefix: /v1/, provider: openai, pools: [gpt]}
  anthropic: {host: api.anthropic.com, path_prefix: /v1/messages, provider: anthropic, pools: [claude]}
tiers:
  basic: {priority: 10, max_concurrent: 5, monthly_budget: "100"}
  premium: {priority: 30, max_concurrent: 5, monthly_budget: "1000"}
clients:
  acme: {tier: basic}
  bigco: {tier: premium}
  calm: {tier: premium}
optimize:
  aggressive: {clients: [bigco], above: 95%}
  rules:
    - name: pressured
      when: {models: ["gpt-4o*"], pressure_above: 80%}
      downgrade: gpt-4o-mini
    - name: upgrade-never
      when: {models: ["gpt-4o-mini*"]}
      downgrade: gpt-4.1
    - name: cap-basic
      when: {tiers: [basic]}
      max_output_tokens: 500
      forced: true
    - name: cap-basic-tighter
      when: {tiers: [basic]}
      max_output_tokens: 300
    - name: panic
      when: {aggressive: true}
      flex: true
      compact: true
    - name: cache
      prompt_cache: true
      min_prefix_tokens: 100
    - name: fit
      fit_pool: true
`

func newOptimizeService(t *testing.T) (*Service, *policy.Set) {
	t.Helper()
	set := compile(t, optimizeTestPolicy)
	clk := fakeclock.New(time.Date(2026, 11, 14, 12, 0, 0, 0, time.UTC))
	store, err := memstore.New(memstore.Config{Clock: clk})
	require.NoError(t, err)
	t.Cleanup(func() { _ = store.Close() })
	s, err := New(Config{Settlement: SettleDeferred}, Deps{Policies: StaticPolicy{Set: set}, Store: store,
		Registerer: prometheus.NewRegistry(), Clock: clk})
	require.NoError(t, err)
	t.Cleanup(func() { require.NoError(t, s.Close()) })
	return s, set
}

func strategiesOf(edits []optimize.Edit) []optimize.Strategy {
	out := make([]optimize.Strategy, len(edits))
	for i, e := range edits {
		out[i] = e.Strategy
	}
	return out
}

// TestPlanEdits: which rules fire, and what each strategy takes from them.
func TestPlanEdits(t *testing.T) {
	s, set := newOptimizeService(t)
	tests := map[string]struct {
		ctx       policy.OptimizeContext
		provider  policy.Provider
		want      []optimize.Edit
		wantRules []string
		fit       bool
	}{
		"calm basic client: the forced and the tighter cap, the smaller wins": {
			ctx:      policy.OptimizeContext{Tier: "basic", Client: "acme", Model: "gpt-4o", PressurePercent: 10},
			provider: policy.ProviderOpenAI,
			want:     []optimize.Edit{{Strategy: optimize.TokenCap, MaxTokens: 300}}, wantRules: []string{"cap-basic-tighter", "fit"}, fit: true,
		},
		"opted out: only the forced cap": {
			ctx:      policy.OptimizeContext{Tier: "basic", Client: "acme", Model: "gpt-4o", PressurePercent: 10, OptedOut: true},
			provider: policy.ProviderOpenAI,
			want:     []optimize.Edit{{Strategy: optimize.TokenCap, MaxTokens: 500}}, wantRules: []string{"cap-basic"},
		},
		"under pressure: downgraded": {
			ctx:      policy.OptimizeContext{Tier: "premium", Client: "x", Model: "gpt-4o-2024-08-06", PressurePercent: 85},
			provider: policy.ProviderOpenAI,
			want:     []optimize.Edit{{Strategy: optimize.Downgrade, Model: "gpt-4o-mini"}}, wantRules: []string{"pressured", "fit"}, fit: true,
		},
		"a rule that would upgrade does not": {
			ctx:      policy.OptimizeContext{Tier: "premium", Client: "x", Model: "gpt-4o-mini", PressurePercent: 0},
			provider: policy.ProviderOpenAI,
			want:     nil, wantRules: []string{"fit"}, fit: true,
		},
		"aggressive: thresholds lifted, flex on the downgraded model, compaction": {
			ctx:       policy.OptimizeContext{Tier: "premium", Client: "bigco", Model: "gpt-4o", PressurePercent: 0, Aggressive: true},
			provider:  policy.ProviderOpenAI,
			want:      []optimize.Edit{{Strategy: optimize.Compact}, {Strategy: optimize.Downgrade, Model: "gpt-4o-mini"}, {Strategy: optimize.Flex}},
			wantRules: []string{"pressured", "panic", "fit"}, fit: true,
		},
		"aggressive on a model without flex prices: no flex": {
			ctx:      policy.OptimizeContext{Tier: "premium", Client: "bigco", Model: "gpt-4.1", Aggressive: true},
			provider: policy.ProviderOpenAI,
			want:     []optimize.Edit{{Strategy: optimize.Compact}}, wantRules: []string{"panic", "fit"}, fit: true,
		},
		"anthropic: prompt caching": {
			ctx:      policy.OptimizeContext{Tier: "premium", Client: "x", Model: "claude-sonnet-4-5"},
			provider: policy.ProviderAnthropic,
			want:     []optimize.Edit{{Strategy: optimize.PromptCache, MinPrefixTokens: 100}}, wantRules: []string{"cache", "fit"}, fit: true,
		},
	}
	for name, tc := range tests {
		t.Run(name, func(t *testing.T) {
			p := s.planEdits(set, tc.ctx, tc.provider)
			assert.Equal(t, tc.want, p.edits, "%v", strategiesOf(p.edits))
			applied := make([]optimize.Applied, len(p.edits))
			for i, e := range p.edits {
				applied[i] = optimize.Applied{Edit: e}
			}
			assert.Equal(t, tc.wantRules, p.names(set, applied, p.fit > 0), "the rules whose edits change the call")
			assert.Equal(t, tc.fit, p.fit > 0)
		})
	}
}

// TestFlexPausedForModel: after a flex refusal, flex is not planned for
// that model until the pause ends.
func TestFlexPausedForModel(t *testing.T) {
	s, set := newOptimizeService(t)
	ctx := policy.OptimizeContext{Tier: "premium", Client: "bigco", Model: "gpt-4o-mini", Aggressive: true}
	assert.Contains(t, strategiesOf(s.planEdits(set, ctx, policy.ProviderOpenAI).edits), optimize.Flex)
	s.flex.pause("gpt-4o-mini", s.clock.Now())
	assert.NotContains(t, strategiesOf(s.planEdits(set, ctx, policy.ProviderOpenAI).edits), optimize.Flex)
	s.clock.(*fakeclock.Clock).Advance(flexPause)
	assert.Contains(t, strategiesOf(s.planEdits(set, ctx, policy.ProviderOpenAI).edits), optimize.Flex, "the pause ends")
}

// TestPressureBook: pressure is the largest share of any budget of the
// chain, from the latest decision; unknown is -1; the book stays bounded.
func TestPressureBook(t *testing.T) {
	var b pressureBook
	assert.Equal(t, int64(-1), b.get("acme"))
	b.note("acme", []limiter.BudgetState{
		{Owner: "acme", Limit: 100 * policy.NanosPerDollar, Spent: 30 * policy.NanosPerDollar, Reserved: 10 * policy.NanosPerDollar},
		{Owner: "org", Limit: 1000 * policy.NanosPerDollar, Spent: 900 * policy.NanosPerDollar},
	})
	assert.Equal(t, int64(90), b.get("acme"))
	b.note("acme", []limiter.BudgetState{{Owner: "acme", Limit: limiter.Unlimited, Spent: 5}})
	assert.Equal(t, int64(-1), b.get("acme"), "unbudgeted")
	for i := range maxPressureEntries + 10 {
		b.note(string(rune('a'+i%26))+string(rune(i)), nil)
	}
	assert.LessOrEqual(t, len(b.m), maxPressureEntries)
}

// TestSavings: each strategy's saving, exactly, and that they add up to
// the call as sent less the call as run.
func TestSavings(t *testing.T) {
	set := compile(t, optimizeTestPolicy)
	usage := costing.Usage{InputTokens: 1117, CachedInputTokens: 1024, OutputTokens: 46}
	est := func(model string, flex bool) costing.Estimate {
		m, _ := set.Model(model)
		return costing.Estimate{Model: model, PriceEntry: m.Name, Flex: flex}
	}
	did := func(ss ...optimize.Strategy) []optimize.Applied {
		out := make([]optimize.Applied, len(ss))
		for i, s := range ss {
			out[i] = optimize.Applied{Edit: optimize.Edit{Strategy: s}}
		}
		return out
	}
	const (
		gpt4o     = 93*2500 + 1024*1250 + 46*10_000
		mini      = 93*150 + 1024*75 + 46*600
		miniFlex  = 93*75 + 1024*75 + 46*300 // no flex cached price: the flex input price
		sonnetRaw = 3000*3000 + 200*15_000   // 3,000 input as plain, 200 output
	)
	tests := map[string]struct {
		o     *optimized
		ran   costing.Estimate
		u     costing.Usage
		want  []limiter.Saving
		total policy.Money // as sent less as run
	}{
		"downgrade": {&optimized{orig: est("gpt-4o", false), applied: did(optimize.Downgrade)}, est("gpt-4o-mini", false), usage,
			[]limiter.Saving{{Strategy: "downgrade", Amount: gpt4o - mini}}, gpt4o - mini},
		"downgrade and flex": {&optimized{orig: est("gpt-4o", false), applied: did(optimize.Downgrade, optimize.Flex)}, est("gpt-4o-mini", true), usage,
			[]limiter.Saving{{Strategy: "downgrade", Amount: gpt4o - mini}, {Strategy: "flex", Amount: mini - miniFlex}}, gpt4o - miniFlex},
		"compaction removed 120 tokens": {&optimized{orig: est("gpt-4o", false), applied: did(optimize.Compact), removed: 120},
			est("gpt-4o", false), usage, []limiter.Saving{{Strategy: "compact", Amount: 120 * 2500}}, 120 * 2500},
		"a cache write costs more than it saves": {&optimized{orig: est("claude-sonnet-4-5", false), applied: did(optimize.PromptCache)},
			est("claude-sonnet-4-5", false), costing.Usage{InputTokens: 3000, CacheWriteTokens: 3000, OutputTokens: 200},
			[]limiter.Saving{{Strategy: "prompt_cache", Amount: sonnetRaw - (3000*3750 + 200*15_000)}}, -3000 * 750},
		"a cache read saves": {&optimized{orig: est("claude-sonnet-4-5", false), applied: did(optimize.PromptCache)},
			est("claude-sonnet-4-5", false), costing.Usage{InputTokens: 3000, CachedInputTokens: 3000, OutputTokens: 200},
			[]limiter.Saving{{Strategy: "prompt_cache", Amount: 3000 * 2700}}, 3000 * 2700},
		"a token cap books nothing": {&optimized{orig: est("gpt-4o", false), applied: did(optimize.TokenCap)}, est("gpt-4o", false), usage, nil, 0},
		"nothing done":              {nil, est("gpt-4o", false), usage, nil, 0},
	}
	for name, tc := range tests {
		t.Run(name, func(t *testing.T) {
			got := savings(set, tc.o, tc.ran, tc.u)
			assert.Equal(t, tc.want, got)
			var sum policy.Money
			for _, s := range got {
				sum += s.Amount
			}
			assert.Equal(t, tc.total, sum, "the parts add up to the whole")
		})
	}
}

// TestFitToPool: a call whose output allowance can never fit its pool is
// capped to what the pool holds after its input; one that fits, or whose
// input alone is too large, is left alone.
func TestFitToPool(t *testing.T) {
	s, set := newOptimizeService(t)
	client, _ := set.Client("bigco")
	route := set.Route("openai")
	for _, tc := range []struct {
		name   string
		body   string
		capped bool
	}{
		{"max_tokens beyond the pool", `{"model":"gpt-4o","max_tokens":16384,"messages":[{"role":"user","content":"hi"}]}`, true},
		{"fits", `{"model":"gpt-4o","max_tokens":1000,"messages":[{"role":"user","content":"hi"}]}`, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			call := costing.NewCall("/v1/chat/completions", "application/json", []byte(tc.body), int64(len(tc.body)))
			e := s.est.Estimate(set, route, call)
			out, o, ok := s.fitToPool(set, route, client, call, e, nil, 7) // fit is the seventh rule
			require.Equal(t, tc.capped, ok)
			if !ok {
				assert.Nil(t, o)
				return
			}
			after := s.est.Estimate(set, route, out)
			assert.Equal(t, int64(10_000), after.InputTokens+after.OutputTokens, "exactly the pool's capacity")
			assert.Equal(t, []string{"fit"}, o.rules)
			assert.Equal(t, int64(16384), o.applied[0].FromMaxTokens)
			assert.Equal(t, e, o.orig, "the call as sent is remembered")
		})
	}
}

// TestDecideFitsPool: through Decide, the capped call is admitted where it
// was refused before, and an opted-out worker is refused as before.
func TestDecideFitsPool(t *testing.T) {
	s, _ := newOptimizeService(t)
	body := `{"model":"gpt-4o","max_tokens":16384,"messages":[{"role":"user","content":"hi"}]}`
	req := func(optOut bool) *Request {
		r := &Request{ID: "r", Client: "calm", Method: "POST", Host: "api.openai.com", Path: "/v1/chat/completions",
			Body: []byte(body), BodySize: int64(len(body)), Headers: map[string]string{"content-type": "application/json"}}
		if optOut {
			r.Headers[HeaderOptimize] = "off"
		}
		return r
	}
	v := s.Decide(context.Background(), req(false))
	require.True(t, v.Allowed, v.Reason)
	require.NotNil(t, v.Optimized)
	assert.Equal(t, []string{"token_cap"}, v.Optimized.Strategies)
	assert.Equal(t, int64(10_000), v.Estimate.InputTokens+v.Estimate.OutputTokens)
	v = s.Decide(context.Background(), req(true))
	assert.False(t, v.Allowed)
	assert.Equal(t, string(limiter.ReasonExceedsCapacity), v.Reason)
}
