package costing_test

import (
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/tollgate/tollgate/costing"
	"github.com/tollgate/tollgate/policy"
)

// flexPolicy prices gpt-5 at the standard and flex tiers (flex at half),
// and gpt-4o at the standard tier only.
func flexPolicy(t *testing.T) *policy.Set {
	t.Helper()
	s, err := policy.Compile(policy.Source{Name: "flex.yaml", Data: []byte(`
pools:
  tok: {unit: token, capacity: 1000000, refill_per_second: 1000}
routes:
  openai: {host: api.openai.com, provider: openai, pools: [tok]}
models:
  "gpt-5*":  {input: "1.25/1M", output: "10/1M", cached_input: "0.125/1M", flex_input: "0.625/1M", flex_output: "5/1M", flex_cached_input: "0.0625/1M"}
  "gpt-4o*": {input: "2.50/1M", output: "10/1M"}
`)})
	require.NoError(t, err)
	return s
}

func TestFlexPricing(t *testing.T) {
	set := flexPolicy(t)
	route := set.Route("openai")
	est := costing.Estimator{Tok: tokenizer(t)}
	tests := map[string]struct {
		body          string
		flex          bool
		output        policy.Money // the estimate's output cost, for 1,000 output tokens
		settledOutput policy.Money // for 2,000 output tokens
		settledCached policy.Money // 1,000 cached of 3,000 input tokens
	}{
		"standard": {`{"model":"gpt-5","messages":[{"role":"user","content":"hi"}],"max_completion_tokens":1000}`,
			false, 10_000_000, 20_000_000, 2_500_000 + 125_000},
		"flex": {`{"model":"gpt-5","service_tier":"flex","messages":[{"role":"user","content":"hi"}],"max_completion_tokens":1000}`,
			true, 5_000_000, 10_000_000, 1_250_000 + 62_500},
		"flex on a model without flex prices": {`{"model":"gpt-4o","service_tier":"flex","messages":[{"role":"user","content":"hi"}],"max_completion_tokens":1000}`,
			true, 10_000_000, 20_000_000, 5_000_000 + 2_500_000},
		"flex on the responses API": {`{"model":"gpt-5","service_tier":"flex","input":"hi","max_output_tokens":1000}`,
			true, 5_000_000, 10_000_000, 1_250_000 + 62_500},
		"a tier that is not flex": {`{"model":"gpt-5","service_tier":"priority","messages":[{"role":"user","content":"hi"}],"max_completion_tokens":1000}`,
			false, 10_000_000, 20_000_000, 2_500_000 + 125_000},
	}
	for name, tc := range tests {
		t.Run(name, func(t *testing.T) {
			path := "/v1/chat/completions"
			if name == "flex on the responses API" {
				path = "/v1/responses"
			}
			e := est.Estimate(set, route, costing.NewCall(path, "application/json", []byte(tc.body), int64(len(tc.body))))
			require.True(t, e.Exact)
			assert.Equal(t, tc.flex, e.Flex)
			assert.Equal(t, tc.output, e.OutputCost)
			a := costing.Price(set, route, e, costing.Usage{InputTokens: 3000, CachedInputTokens: 1000, OutputTokens: 2000})
			assert.Equal(t, tc.settledOutput, a.OutputCost)
			assert.Equal(t, tc.settledCached, a.InputCost, "2,000 plain and 1,000 cached input tokens")
		})
	}
}
