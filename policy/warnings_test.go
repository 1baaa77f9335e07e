package policy_test

import (
	"fmt"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/tollgate/tollgate/policy"
)

func TestWarnings(t *testing.T) {
	const tmpl = `
pools:
  calls: {unit: request, capacity: 10, refill_per_second: 1%s}
%s
routes:
  r:
    host: api.openai.com
    path_prefix: /v1/
    provider: %s
    pools: [calls]
%s
`
	warn := "routes.r: an LLM route whose pools have no price and whose models no entry of models: prices; its calls cost $0 and budgets never move"
	tests := map[string]struct {
		poolPrice, models, provider, routeModels string
		want                                     []string
	}{
		"no price, no models":            {provider: "openai", want: []string{warn}},
		"anthropic too":                  {provider: "anthropic", want: []string{warn}},
		"pool price":                     {poolPrice: `, price: "0.01"`, provider: "openai"},
		"models priced":                  {models: "models:\n  gpt-4.1-nano: {input: \"0.10/1M\", output: \"0.40/1M\"}", provider: "openai"},
		"route models none priced":       {models: "models:\n  gpt-4o: {input: \"2.50/1M\", output: \"10/1M\"}", provider: "openai", routeModels: "    models: [o3]", want: []string{warn}},
		"route models prefix priced":     {models: "models:\n  \"gpt-4.1*\": {input: \"2/1M\", output: \"8/1M\"}", provider: "openai", routeModels: "    models: [\"gpt-4.1*\"]"},
		"wildcard prices everything":     {models: "models:\n  \"*\": {input: \"1/1M\", output: \"1/1M\"}", provider: "openai", routeModels: "    models: [o3]"},
		"not an LLM provider: no advice": {provider: "twilio"},
	}
	for name, tc := range tests {
		t.Run(name, func(t *testing.T) {
			src := fmt.Sprintf(tmpl, tc.poolPrice, tc.models, tc.provider, tc.routeModels)
			set, err := policy.Compile(policy.Source{Name: "w.yaml", Data: []byte(src)})
			require.NoError(t, err, src)
			assert.Equal(t, tc.want, set.Warnings())
		})
	}
	assert.Empty(t, policy.Default().Warnings(), "the bundled default prices every LLM route")
}
