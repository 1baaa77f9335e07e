package authz_test

import (
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/tollgate/tollgate/authz"
	"github.com/tollgate/tollgate/policy"
)

// requestPoolPolicy: an OpenAI route whose only pool counts requests and
// has no price; gpt-4.1-nano is priced in models:.
const requestPoolPolicy = `
defaults:
  unknown_client: deny
  reservation_ttl: 1m
pools:
  calls:
    unit: request
    capacity: 100
    refill_per_second: 10
models:
  "gpt-4.1-nano": {input: "0.10/1M", output: "0.40/1M", cached_input: "0.025/1M"}
routes:
  openai:
    host: api.openai.com
    path_prefix: /v1/
    provider: openai
    pools: [calls]
tiers:
  team:
    priority: 20
    max_concurrent: 10
    monthly_budget: "100"
clients:
  acme: {tier: team}
`

// TestRequestPoolPricedByModel: a call through a request-counting pool
// with no price is estimated and settled at its model's prices, so the
// budget moves by exactly the usage's cost.
func TestRequestPoolPricedByModel(t *testing.T) {
	for name, newStore := range storeKinds {
		t.Run(name, func(t *testing.T) {
			ss := startSettle(t, newStore, requestPoolPolicy)
			body := chatBody("gpt-4.1-nano", 300, "Describe the picture.")
			a := ss.admit(t, "acme", body)
			est := money(t, a.worker[authz.HeaderEstimatedCost])
			require.Positive(t, est, "estimated from the model's prices")
			ss.process(t, a, body, upstream{status: 200, headers: []string{"content-type", "application/json"}, body: recorded(t, "openai-chat.json")})
			// 1117 prompt tokens, 1024 cached, 46 out at gpt-4.1-nano's prices.
			want := policy.Money(93*100 + 1024*25 + 46*400)
			u := ss.usage(t)
			assert.Equal(t, want, u.Spent)
			assert.Zero(t, u.Reserved)
		})
	}
}
