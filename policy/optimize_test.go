package policy_test

import (
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/tollgate/tollgate/policy"
)

// optimizeBase is a valid policy with a route, two tiers and priced models;
// rules follow it from line 20.
var optimizeBase = []string{
	"pools:",                      // 1
	"  p:",                        // 2
	"    unit: token",             // 3
	"    capacity: 100000",        // 4
	"    refill_per_second: 1000", // 5
	"routes:",                     // 6
	"  r:",                        // 7
	"    host: api.openai.com",    // 8
	"    provider: openai",        // 9
	"    pools: [p]",              // 10
	"tiers:",                      // 11
	"  basic: {priority: 10, max_concurrent: 5, monthly_budget: \"100\"}",    // 12
	"  premium: {priority: 30, max_concurrent: 5, monthly_budget: \"1000\"}", // 13
	"models:", // 14
	`  "gpt-4o-mini*": {input: "0.15/1M", output: "0.60/1M", flex_input: "0.075/1M", flex_output: "0.30/1M"}`, // 15
	`  "gpt-4o*": {input: "2.50/1M", output: "10/1M"}`,                                                        // 16
	`  "*": {input: "5/1M", output: "30/1M"}`,                                                                 // 17
	"optimize:", // 18
	"  rules:",  // 19
}

func withRules(ls ...string) []byte {
	return lines(append(append([]string{}, optimizeBase...), ls...)...)
}

func TestOptimizeCompiles(t *testing.T) {
	s := mustCompile(t, withRules(
		"    - name: batch-to-mini", // 20
		"      when: {tiers: [basic], classes: [batch, deferred], models: [\"gpt-4o*\"], pressure_above: 80%}",
		"      downgrade: gpt-4o-mini",
		"      flex: true",
		"      flex_refused: refuse",
		"    - name: caps",
		"      max_output_tokens: 4096",
		"      fit_pool: true",
		"      forced: true",
		"    - name: cache",
		"      when: {aggressive: true}",
		"      prompt_cache: true",
		"      min_prefix_tokens: 2048",
		"      compact: true",
		"  aggressive: {tiers: [premium], clients: [acme], above: 95%}",
	))
	o := s.Optimize
	require.NotNil(t, o)
	require.Len(t, o.Rules, 3)
	assert.Equal(t, &policy.OptimizeRule{Name: "batch-to-mini", Line: 20, File: "x.yaml", Tiers: []string{"basic"},
		Classes: []policy.Class{policy.Batch, policy.Deferred}, Models: []string{"gpt-4o*"}, PressureAbove: 80,
		Downgrade: "gpt-4o-mini", Flex: true, FlexRefused: policy.FlexRefuse, MinPrefixTokens: policy.DefaultMinPrefixTokens}, o.Rules[0])
	assert.Equal(t, int64(4096), o.Rules[1].MaxOutputTokens)
	assert.True(t, o.Rules[1].FitPool && o.Rules[1].Forced)
	assert.Equal(t, policy.FlexStandard, o.Rules[1].FlexRefused, "the default fallback")
	assert.True(t, o.Rules[2].Aggressive && o.Rules[2].PromptCache && o.Rules[2].Compact)
	assert.Equal(t, int64(2048), o.Rules[2].MinPrefixTokens)
	assert.Equal(t, []string{"premium"}, o.AggressiveTiers)
	assert.Equal(t, []string{"acme"}, o.AggressiveClients)
	assert.Equal(t, int64(95), o.AggressiveAbove)

	mini, _ := s.Model("gpt-4o-mini")
	assert.True(t, mini.HasFlex)
	assert.Equal(t, mini.FlexInput, mini.FlexCachedInput, "no flex cached price stated: the flex input price")
	full, _ := s.Model("gpt-4o")
	assert.False(t, full.HasFlex)
}

func TestOptimizeNoBlock(t *testing.T) {
	s := mustCompile(t, withPool())
	require.NotNil(t, s.Optimize, "an empty Optimize, so callers need no nil check")
	assert.Empty(t, s.Optimize.Rules)
}

func TestOptimizeRefusals(t *testing.T) {
	tests := map[string]struct {
		src  []byte
		want wantErr
	}{
		"downgrade to an unpriced model": {
			src:  withRules("    - name: d", "      downgrade: gpt-9-ultra"),
			want: wantErr{line: 21, path: "optimize.rules.d.downgrade", msg: `model "gpt-9-ultra" is not priced by any entry of models: (other than "*"); a downgrade goes only to a priced model`},
		},
		"downgrade to a pattern": {
			src:  withRules("    - name: d", "      downgrade: gpt-4o*"),
			want: wantErr{line: 21, path: "optimize.rules.d.downgrade", msg: `must be a model name, got "gpt-4o*"`},
		},
		"rule without a name": {
			src:  withRules("    - downgrade: gpt-4o-mini"),
			want: wantErr{line: 20, path: "optimize.rules[0].name", msg: "is required (a name for policy check, metrics and the optimize API)"},
		},
		"rule that does nothing": {
			src:  withRules("    - name: idle", "      when: {classes: [batch]}"),
			want: wantErr{line: 20, path: "optimize.rules.idle", msg: "does nothing: give it downgrade, flex, max_output_tokens, fit_pool, prompt_cache or compact"},
		},
		"two rules of one name": {
			src:  withRules("    - name: d", "      compact: true", "    - name: d", "      compact: true"),
			want: wantErr{line: 22, path: "rules.d", msg: `rule "d" is already defined at x.yaml:20`},
		},
		"unknown tier": {
			src:  withRules("    - name: d", "      when: {tiers: [gold]}", "      compact: true"),
			want: wantErr{line: 21, path: "optimize.rules.d.when.tiers", msg: `tier "gold" does not exist`},
		},
		"unknown route": {
			src:  withRules("    - name: d", "      when: {routes: [nope]}", "      compact: true"),
			want: wantErr{line: 21, path: "optimize.rules.d.when.routes", msg: `route "nope" does not exist`},
		},
		"unknown class": {
			src:  withRules("    - name: d", "      when: {classes: [slow]}", "      compact: true"),
			want: wantErr{line: 21, path: "optimize.rules.d.when.classes", msg: `unknown class "slow" (one of immediate, fast, normal, batch, deferred)`},
		},
		"bad client id": {
			src:  withRules("    - name: d", "      when: {clients: [\"a b\"]}", "      compact: true"),
			want: wantErr{line: 21, path: "optimize.rules.d.when.clients"},
		},
		"pressure over 100": {
			src:  withRules("    - name: d", "      when: {pressure_above: 120%}", "      compact: true"),
			want: wantErr{line: 21, path: "optimize.rules.d.when.pressure_above", msg: `must be a whole percent between 1% and 100%, such as "80%", got "120%"`},
		},
		"pressure as a fraction": {
			src:  withRules("    - name: d", "      when: {pressure_above: 0.8}", "      compact: true"),
			want: wantErr{line: 21, path: "optimize.rules.d.when.pressure_above", msg: `must be a whole percent between 1% and 100%, such as "80%", got "0.8"`},
		},
		"zero token cap": {
			src:  withRules("    - name: d", "      max_output_tokens: 0"),
			want: wantErr{line: 21, path: "optimize.rules.d.max_output_tokens", msg: "must be between 1 and 1000000000, got 0"},
		},
		"unknown fallback": {
			src:  withRules("    - name: d", "      flex: true", "      flex_refused: retry"),
			want: wantErr{line: 22, path: "optimize.rules.d.flex_refused", msg: `must be one of standard, refuse, got "retry"`},
		},
		"fallback without flex": {
			src:  withRules("    - name: d", "      compact: true", "      flex_refused: refuse"),
			want: wantErr{line: 22, path: "optimize.rules.d.flex_refused", msg: "applies only to a rule with flex: true"},
		},
		"prefix length without prompt caching": {
			src:  withRules("    - name: d", "      compact: true", "      min_prefix_tokens: 10"),
			want: wantErr{line: 22, path: "optimize.rules.d.min_prefix_tokens", msg: "applies only to a rule with prompt_cache: true"},
		},
		"unknown rule key": {
			src:  withRules("    - name: d", "      downgrad: gpt-4o-mini"),
			want: wantErr{line: 21, path: "optimize.rules[0]", msg: `unknown field "downgrad" (did you mean "downgrade"?)`},
		},
		"aggressive given twice": {
			src: withRules("    - name: d", "      compact: true", "  aggressive: {above: 90%}",
				"---", "optimize:", "  aggressive: {above: 80%}"),
			want: wantErr{line: 25, path: "optimize.aggressive", msg: "is already set at x.yaml:22"},
		},
		"flex output without flex input": {
			src: lines(append(append([]string{}, optimizeBase[:14]...),
				`  "gpt-4o*": {input: "2.50/1M", output: "10/1M", flex_output: "5/1M"}`)...),
			want: wantErr{line: 15, path: "models.gpt-4o*.flex_input", msg: "is required with flex_output and flex_cached_input"},
		},
	}
	for name, tc := range tests {
		t.Run(name, func(t *testing.T) {
			_, err := compile(tc.src)
			errs := policyErrors(t, err)
			tc.want.file = "x.yaml"
			requireHasError(t, errs, tc.want)
		})
	}
}

func TestOptimizeRuleMatches(t *testing.T) {
	rule := &policy.OptimizeRule{Name: "r", Tiers: []string{"basic"}, Classes: []policy.Class{policy.Batch},
		Models: []string{"gpt-4o*"}, PressureAbove: 80, Downgrade: "gpt-4o-mini"}
	base := policy.OptimizeContext{Tier: "basic", Client: "acme", Route: "r", Model: "gpt-4o-2024-08-06", Class: policy.Batch, PressurePercent: 85}
	tests := map[string]struct {
		rule *policy.OptimizeRule
		edit func(*policy.OptimizeContext)
		want bool
	}{
		"all match":                     {rule, func(*policy.OptimizeContext) {}, true},
		"other tier":                    {rule, func(c *policy.OptimizeContext) { c.Tier = "premium" }, false},
		"other class":                   {rule, func(c *policy.OptimizeContext) { c.Class = policy.Normal }, false},
		"other model":                   {rule, func(c *policy.OptimizeContext) { c.Model = "gpt-4.1" }, false},
		"no model":                      {rule, func(c *policy.OptimizeContext) { c.Model = "" }, false},
		"pressure below":                {rule, func(c *policy.OptimizeContext) { c.PressurePercent = 79 }, false},
		"pressure exactly at threshold": {rule, func(c *policy.OptimizeContext) { c.PressurePercent = 80 }, true},
		"pressure unknown":              {rule, func(c *policy.OptimizeContext) { c.PressurePercent = -1 }, false},
		"aggressive lifts the threshold": {rule, func(c *policy.OptimizeContext) {
			c.PressurePercent, c.Aggressive = 10, true
		}, true},
		"opted out":                    {rule, func(c *policy.OptimizeContext) { c.OptedOut = true }, false},
		"opted out of a forced rule":   {&policy.OptimizeRule{Forced: true, Compact: true}, func(c *policy.OptimizeContext) { c.OptedOut = true }, true},
		"aggressive rule, calm client": {&policy.OptimizeRule{Aggressive: true, Compact: true}, func(*policy.OptimizeContext) {}, false},
		"aggressive rule, aggressive client": {&policy.OptimizeRule{Aggressive: true, Compact: true}, func(c *policy.OptimizeContext) {
			c.Aggressive = true
		}, true},
		"client list": {&policy.OptimizeRule{Clients: []string{"other"}, Compact: true}, func(*policy.OptimizeContext) {}, false},
		"route list":  {&policy.OptimizeRule{Routes: []string{"r"}, Compact: true}, func(*policy.OptimizeContext) {}, true},
	}
	for name, tc := range tests {
		t.Run(name, func(t *testing.T) {
			c := base
			tc.edit(&c)
			assert.Equal(t, tc.want, tc.rule.Matches(c))
		})
	}
}

func TestIsAggressive(t *testing.T) {
	o := &policy.Optimize{AggressiveTiers: []string{"basic"}, AggressiveClients: []string{"acme"}, AggressiveAbove: 90}
	assert.True(t, o.IsAggressive("basic", "x", -1))
	assert.True(t, o.IsAggressive("premium", "acme", -1))
	assert.True(t, o.IsAggressive("premium", "x", 90))
	assert.False(t, o.IsAggressive("premium", "x", 89))
	assert.False(t, (&policy.Optimize{}).IsAggressive("basic", "acme", 100), "no threshold: never automatically")
	assert.False(t, (*policy.Optimize)(nil).IsAggressive("basic", "acme", 100))
}

func TestPressurePercent(t *testing.T) {
	const d = policy.NanosPerDollar
	tests := []struct {
		spent, held, limit policy.Money
		want               int64
	}{
		{0, 0, 100 * d, 0},
		{80 * d, 0, 100 * d, 80},
		{79*d + d - 1, 0, 100 * d, 79}, // rounds down: 79.99…% is not 80%
		{40 * d, 40 * d, 100 * d, 80},  // held counts
		{150 * d, 0, 100 * d, 150},
		{0, 0, 0, -1},               // no budget
		{5, 0, -1, -1},              // unlimited
		{1 << 62, 1 << 62, 1, 1000}, // far beyond, without overflow
		{-5, 0, 100, 0},             // never negative
	}
	for _, tc := range tests {
		assert.Equal(t, tc.want, policy.PressurePercent(tc.spent, tc.held, tc.limit), "%d+%d of %d", tc.spent, tc.held, tc.limit)
	}
}

func TestPriceCmp(t *testing.T) {
	p := func(s string) policy.Price {
		pr, err := policy.ParsePrice(s)
		require.NoError(t, err)
		return pr
	}
	assert.Equal(t, 0, p("0.03/1K").Cmp(p("30/1M")))
	assert.Equal(t, -1, p("0.15/1M").Cmp(p("2.50/1M")))
	assert.Equal(t, 1, p("10/1M").Cmp(p("0.60/1M")))
	assert.Equal(t, -1, p("0").Cmp(p("0.000000001")))
}

func TestOptimizeSummaryAndWarnings(t *testing.T) {
	s := mustCompile(t, withRules(
		"    - name: up",
		"      when: {models: [\"gpt-4o-mini*\"], classes: [batch]}",
		"      downgrade: gpt-4o",
		"    - name: flexless",
		"      when: {models: [\"gpt-4o*\"], pressure_above: 80%}",
		"      flex: true",
		"      forced: true",
		"    - name: flexy",
		"      when: {models: [\"gpt-4o*\"]}",
		"      downgrade: gpt-4o-mini",
		"      flex: true",
		"  aggressive: {tiers: [basic], above: 90%}",
	))
	sum := s.Summary().Optimize
	assert.Equal(t, []policy.SummaryRule{
		{Name: "up", When: "classes batch; models gpt-4o-mini*", Do: "downgrade to gpt-4o"},
		{Name: "flexless", When: "models gpt-4o*; budget >= 80%", Do: "flex (refused: standard)", Forced: true},
		{Name: "flexy", When: "models gpt-4o*", Do: "downgrade to gpt-4o-mini; flex (refused: standard)"},
	}, sum.Rules)
	assert.Equal(t, "tiers basic; any client at 90% of its budget", sum.Aggressive)
	assert.Equal(t, []string{
		"optimize.rules.up: downgrades gpt-4o-mini* to gpt-4o, whose prices are higher (2.5/1M in, 10/1M out against 0.15/1M, 0.6/1M)",
		"optimize.rules.flexless: flex, but none of its models has flex prices in models: (flex_input, flex_output), so it never applies",
	}, s.Warnings())
}
