package costing_test

import (
	"net/url"
	"strings"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/tollgate/tollgate/costing"
	"github.com/tollgate/tollgate/policy"
)

const estimatePolicy = `
defaults: {reservation: optimistic}
pools:
  tpm:   {unit: token, capacity: 1000000, refill_per_second: 1000, price: "0.03/1K"}
  rpm:   {unit: request, capacity: 100, refill_per_second: 1}
  sms:   {unit: segment, capacity: 500, refill_per_second: 8, price: "0.0075"}
  email: {unit: email, capacity: 1000, refill_per_second: 16, price: "0.0001"}
models:
  gpt-4o: {input: "2.50/1M", output: "10/1M", image: "0.001", audio: "0.002", max_output_tokens: 500}
  text-embedding-3-small: {input: "0.02/1M", output: "0"}
routes:
  openai:   {host: api.openai.com, path_prefix: /v1/, provider: openai, pools: [tpm, rpm], default_max_tokens: 100}
  twilio:   {host: api.twilio.com, path_prefix: /, provider: twilio, pools: [sms]}
  sendgrid: {host: api.sendgrid.com, path_prefix: /, provider: sendgrid, pools: [email]}
`

func TestEstimatorByProvider(t *testing.T) {
	set, err := policy.Compile(policy.Source{Name: "e.yaml", Data: []byte(estimatePolicy)})
	require.NoError(t, err)
	tok, err := costing.SharedTokenizer()
	require.NoError(t, err)
	est := costing.Estimator{Tok: tok}
	route := func(h string) *policy.Route { return set.MatchRoute(h, "/v1/x", "") }

	chat := func(model, extra string) []byte {
		return []byte(`{"model":"` + model + `","messages":[{"role":"user","content":"hello there"}]` + extra + `}`)
	}
	input := func(body []byte) int64 {
		q, err := costing.ParseOpenAI("/v1/chat/completions", body, tok)
		require.NoError(t, err)
		return q.InputTokens
	}

	t.Run("priced model: input and output at the model's prices, once", func(t *testing.T) {
		body := chat("gpt-4o", `,"max_tokens":200`)
		e := est.Estimate(set, route("api.openai.com"), costing.Call{Path: "/v1/chat/completions", Body: body, BodySize: int64(len(body))})
		in := input(body)
		assert.True(t, e.Exact)
		assert.True(t, e.ModelKnown)
		assert.Equal(t, in, e.InputTokens)
		assert.Equal(t, int64(200), e.OutputTokens)
		assert.Equal(t, []int64{in + 200, 1}, []int64{e.Pools[0].Units, e.Pools[1].Units}, "tokens for tpm, one request for rpm")
		want := policy.Price{Nanos: 2_500_000_000, Per: 1_000_000}.Cost(in) + policy.Price{Nanos: 10_000_000_000, Per: 1_000_000}.Cost(200)
		assert.Equal(t, want, e.Cost)
		assert.Equal(t, costing.ApplyStrategy(want, 105), e.Reserve, "optimistic reserves 105%")
	})
	t.Run("no max_tokens: the model's allowance beats the route's", func(t *testing.T) {
		body := chat("gpt-4o", "")
		e := est.Estimate(set, route("api.openai.com"), costing.Call{Path: "/v1/chat/completions", Body: body, BodySize: int64(len(body))})
		assert.Equal(t, int64(500), e.OutputTokens)
	})
	t.Run("n choices: the assumed allowance for each", func(t *testing.T) {
		body := chat("gpt-4o", `,"n":3`)
		e := est.Estimate(set, route("api.openai.com"), costing.Call{Path: "/v1/chat/completions", Body: body, BodySize: int64(len(body))})
		assert.Equal(t, int64(1500), e.OutputTokens)
		assert.Equal(t, int64(3), e.N)
	})
	t.Run("embeddings: input tokens only", func(t *testing.T) {
		body := []byte(`{"model":"text-embedding-3-small","input":["one","two"]}`)
		e := est.Estimate(set, route("api.openai.com"), costing.Call{Path: "/v1/embeddings", Body: body, BodySize: int64(len(body))})
		assert.Equal(t, int64(2), e.InputTokens)
		assert.Zero(t, e.OutputTokens, "an embedding has no output allowance")
		assert.Equal(t, policy.Money(40), e.Cost, "2 tokens at $0.02/1M")
	})
	t.Run("images and audio parts priced by the model", func(t *testing.T) {
		body := []byte(`{"model":"gpt-4o","max_tokens":10,"messages":[{"role":"user","content":[{"type":"text","text":"what is this?"},` +
			`{"type":"image_url","image_url":{"url":"data:image/png;base64,AAAA"}},{"type":"input_audio","input_audio":{"data":"AAAA","format":"wav"}}]}]}`)
		e := est.Estimate(set, route("api.openai.com"), costing.Call{Path: "/v1/chat/completions", Body: body, BodySize: int64(len(body))})
		assert.Equal(t, int64(1), e.Images)
		assert.Equal(t, int64(1), e.AudioParts)
		assert.Equal(t, policy.Money(1_000_000), e.ImageCost)
		assert.Equal(t, policy.Money(2_000_000), e.AudioCost)
		assert.Equal(t, e.InputCost+e.OutputCost+e.ImageCost+e.AudioCost, e.Cost)
	})
	t.Run("unknown model: pool price, counted as a miss", func(t *testing.T) {
		body := chat("gpt-9", `,"max_tokens":10`)
		e := est.Estimate(set, route("api.openai.com"), costing.Call{Path: "/v1/chat/completions", Body: body, BodySize: int64(len(body))})
		assert.False(t, e.ModelKnown)
		assert.Equal(t, policy.Money((input(body)+10)*30_000), e.Cost, "$0.03/1K on input plus output")
	})
	t.Run("truncated body: size-based, not exact", func(t *testing.T) {
		body := chat("gpt-4o", `,"max_tokens":10`)
		e := est.Estimate(set, route("api.openai.com"), costing.Call{Path: "/v1/chat/completions", Body: body[:20], BodySize: 4000})
		assert.False(t, e.Exact)
		assert.Equal(t, int64(1000), e.InputTokens, "a token per 4 bytes of the full body")
		assert.Equal(t, int64(100), e.OutputTokens, "the route default: the body's own allowance was not read")
	})
	t.Run("twilio: segments times recipients", func(t *testing.T) {
		form := url.Values{"To": {"+15550001", "+15550002"}, "From": {"+15559999"}, "Body": {strings.Repeat("a", 161)}}
		body := []byte(form.Encode())
		e := est.Estimate(set, route("api.twilio.com"), costing.Call{ContentType: "application/x-www-form-urlencoded", Body: body, BodySize: int64(len(body))})
		assert.Equal(t, int64(4), e.Pools[0].Units, "161 GSM-7 characters are 2 segments, to 2 recipients")
		assert.Equal(t, policy.Money(4*7_500_000), e.Cost)
	})
	t.Run("sendgrid: recipients across personalizations", func(t *testing.T) {
		body := []byte(`{"personalizations":[{"to":[{"email":"a@x"},{"email":"b@x"}],"cc":[{"email":"c@x"}]},{"to":[{"email":"d@x"}]}],"from":{"email":"f@x"},"subject":"s","content":[{"type":"text/plain","value":"v"}]}`)
		e := est.Estimate(set, route("api.sendgrid.com"), costing.Call{Body: body, BodySize: int64(len(body))})
		assert.Equal(t, int64(4), e.Pools[0].Units)
		assert.Equal(t, policy.Money(4*100_000), e.Cost)
	})
	t.Run("unreadable SMS form: one segment", func(t *testing.T) {
		e := est.Estimate(set, route("api.twilio.com"), costing.Call{ContentType: "application/json", Body: []byte("{}"), BodySize: 2})
		assert.Equal(t, int64(1), e.Pools[0].Units)
	})
}

func TestApplyStrategy(t *testing.T) {
	for name, tc := range map[string]struct {
		cost    policy.Money
		percent int64
		want    policy.Money
	}{
		"120% exact":     {1000, 120, 1200},
		"rounds up":      {1, 120, 2},
		"zero":           {0, 120, 0},
		"saturates":      {policy.Money(1 << 62), 120, policy.Money(1<<63 - 1)},
		"105% of 100 ns": {100, 105, 105},
	} {
		t.Run(name, func(t *testing.T) { assert.Equal(t, tc.want, costing.ApplyStrategy(tc.cost, tc.percent)) })
	}
}
