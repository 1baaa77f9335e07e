package authz_test

import (
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/tollgate/tollgate/costing"
	"github.com/tollgate/tollgate/policy"
)

// TestSettleUsageBeyondBounds: a response claiming prompt_tokens of 2^63-1
// is held to costing.MaxUsageTokens on both stores alike (they agree to the
// nano-dollar), counted and logged; it no longer books billions nor fails
// the settle on Redis.
func TestSettleUsageBeyondBounds(t *testing.T) {
	spent := map[string]policy.Money{}
	for name, newStore := range storeKinds {
		t.Run(name, func(t *testing.T) {
			ss := startSettle(t, newStore, settlePolicy)
			body := chatBody("gpt-4o", 10, "hi")
			a := ss.admit(t, "acme", body)
			resp := []byte(`{"id":"x","object":"chat.completion","model":"gpt-4o-2024-08-06","choices":[],"usage":{"prompt_tokens":9223372036854775807,"completion_tokens":99999999999,"total_tokens":1,"prompt_tokens_details":{"cached_tokens":9223372036854775807}}}`)
			ss.process(t, a, body, upstream{status: 200, headers: []string{"content-type", "application/json"}, body: resp})
			u := ss.usage(t)
			// 10M input tokens all cached at $1.25/1M, 10M output at $10/1M.
			want := policy.Money(costing.MaxUsageTokens*1250 + costing.MaxUsageTokens*10_000)
			assert.Equal(t, want, u.Spent)
			assert.Zero(t, u.Reserved)
			spent[name] = u.Spent
			assert.Equal(t, 1.0, metricValue(t, ss.reg, "tollgate_settle_usage_capped_total", map[string]string{"route": "openai"}))
			assert.Equal(t, 1.0, metricValue(t, ss.reg, "tollgate_settle_calls_total", map[string]string{"outcome": "actual", "reason": "usage"}))
		})
	}
	require.Len(t, spent, 2)
	assert.Equal(t, spent["memory"], spent["redis"], "both stores agree")
}
