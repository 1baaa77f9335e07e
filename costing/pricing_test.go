package costing_test

import (
	"bytes"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/tollgate/tollgate/costing"
	"github.com/tollgate/tollgate/policy"
)

// pricingPolicy: the same OpenAI request pool priced by the model (the
// default) and by the pool (pricing: pool), with a "*" model entry that
// prices any name, as the bundled policy has.
const pricingPolicy = `
pools:
  files:  {unit: request, capacity: 100, refill: 100/min, price: "0"}
  images: {unit: request, capacity: 50, refill: 50/min, price: "0.08"}
  tpm:    {unit: token, capacity: 1000000, refill: 1000000/min, price: "1/1M"}
models:
  "*": {input: "5/1M", output: "30/1M"}
routes:
  by-model: {host: api.openai.com, path_prefix: /v1/files, provider: openai, pools: [files]}
  by-pool:  {host: api.openai.com, path_prefix: /v1/uploads, provider: openai, pools: [files], pricing: pool}
  images:   {host: api.openai.com, path_prefix: /v1/images/, provider: openai, pools: [images], pricing: pool}
  tokens:   {host: api.openai.com, path_prefix: /v1/moderations, provider: openai, pools: [tpm], pricing: pool}
`

func TestEstimatePricingPool(t *testing.T) {
	set, err := policy.Compile(policy.Source{Name: "p.yaml", Data: []byte(pricingPolicy)})
	require.NoError(t, err)
	tok, err := costing.SharedTokenizer()
	require.NoError(t, err)
	est := costing.Estimator{Tok: tok}
	upload := bytes.Repeat([]byte("x"), 135_000) // a multipart upload: no model, no prompt

	tests := map[string]struct {
		path      string
		body      []byte
		size      int64
		wantUnits int64
		wantCost  policy.Money
		wantModel bool // priced by a models: entry
	}{
		"default pricing: a file upload's bytes are priced as a prompt by *": {
			path: "/v1/files", body: upload, wantUnits: 1, wantModel: true,
		},
		"pricing pool: a file upload costs its pool's price": {
			path: "/v1/uploads", body: upload, wantUnits: 1, wantCost: 0,
		},
		"pricing pool: partial body of 50 MB, still one request at its price": {
			path: "/v1/uploads", body: upload[:1000], size: 50 << 20, wantUnits: 1, wantCost: 0,
		},
		"pricing pool: an image at the pool's price, the model aside": {
			path: "/v1/images/generations", body: []byte(`{"model":"dall-e-3","prompt":"a cat","size":"1024x1024"}`),
			wantUnits: 1, wantCost: 80_000_000,
		},
		"pricing pool on a token pool: tokens counted, priced by the pool": {
			path: "/v1/moderations", body: []byte(`{"model":"omni-moderation-latest","input":"hello"}`),
			wantUnits: -1, wantCost: -1,
		},
	}
	for name, tc := range tests {
		t.Run(name, func(t *testing.T) {
			r := set.MatchRoute("api.openai.com", tc.path, "")
			require.NotNil(t, r)
			size := tc.size
			if size == 0 {
				size = int64(len(tc.body))
			}
			e := est.Estimate(set, r, costing.NewCall(tc.path, "application/json", tc.body, size))
			require.Len(t, e.Pools, 1)
			if tc.wantUnits >= 0 {
				assert.Equal(t, tc.wantUnits, e.Pools[0].Units)
			} else {
				assert.Positive(t, e.Pools[0].Units)
			}
			if tc.wantModel {
				assert.Equal(t, "*", e.PriceEntry)
				assert.Greater(t, e.Cost, policy.Money(100_000_000), "135 KB read as 33,750 tokens at $5/1M")
				return
			}
			assert.Empty(t, e.PriceEntry, "no models: entry prices it")
			if tc.wantCost >= 0 {
				assert.Equal(t, tc.wantCost, e.Cost)
			} else {
				assert.Equal(t, r.Pools[0].Price.Cost(e.Pools[0].Units), e.Cost)
			}

			// Settling prices it the same way, whatever usage says.
			a := costing.Price(set, r, e, costing.Usage{Model: "gpt-4o", InputTokens: 1000, OutputTokens: 1000})
			if r.LLM() {
				assert.Equal(t, r.Pools[0].Price.Cost(2000), a.Cost)
			} else {
				assert.Equal(t, e.Cost, a.Cost)
			}
		})
	}
}
