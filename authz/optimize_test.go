package authz_test

import (
	"context"
	"encoding/json"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"google.golang.org/genproto/googleapis/rpc/code"

	"github.com/tollgate/tollgate/admission"
	"github.com/tollgate/tollgate/policy"
)

// optimizePolicy: settlePolicy's route and client, with gpt-4o-mini priced
// at the standard and flex tiers, and one rule: batch-class gpt-4o calls go
// as gpt-4o-mini at the flex tier.
const optimizePolicy = `
defaults:
  unknown_client: deny
  reservation_ttl: 1m
pools:
  gpt: {unit: token, capacity: 100000, refill_per_second: 1000}
models:
  "gpt-4o-mini*": {input: "0.15/1M", output: "0.60/1M", cached_input: "0.075/1M", flex_input: "0.075/1M", flex_output: "0.30/1M", flex_cached_input: "0.0375/1M"}
  "gpt-4o*": {input: "2.50/1M", output: "10/1M", cached_input: "1.25/1M"}
routes:
  openai: {host: api.openai.com, path_prefix: /v1/, provider: openai, pools: [gpt]}
tiers:
  team: {priority: 20, max_concurrent: 10, monthly_budget: "100"}
clients:
  acme: {tier: team}
optimize:
  rules:
    - name: batch-to-mini
      when: {classes: [batch], models: ["gpt-4o*"]}
      downgrade: gpt-4o-mini
      flex: true
`

// checkWith is check with extra request headers.
func (ss *settleServer) admitWith(tb testing.TB, client string, body []byte, hdrs map[string]string) admitted {
	tb.Helper()
	req := chatCheck(client, body)
	for k, v := range hdrs {
		req.Attributes.Request.Http.Headers[k] = v
	}
	resp, err := ss.auth.Check(context.Background(), req)
	require.NoError(tb, err)
	require.Equal(tb, int32(code.Code_OK), resp.GetStatus().GetCode(), resp.GetDeniedResponse().GetBody())
	a := admitted{worker: responseHeaders(tb, resp)}
	for _, h := range resp.GetOkResponse().GetHeaders() {
		switch h.GetHeader().GetKey() {
		case "x-tollgate-reservation":
			a.reservation = h.GetHeader().GetValue()
		case "x-tollgate-route":
			a.route = h.GetHeader().GetValue()
		}
	}
	require.NotEmpty(tb, a.reservation)
	return a
}

// sentAs decodes the model and service tier of a body sent upstream.
func sentAs(tb testing.TB, body []byte) (model, tier string) {
	tb.Helper()
	var b struct {
		Model       string `json:"model"`
		ServiceTier string `json:"service_tier"`
	}
	require.NoError(tb, json.Unmarshal(body, &b))
	return b.Model, b.ServiceTier
}

// TestOptimizeEndToEnd: through Check and ext_proc over gRPC, a batch-class
// gpt-4o call leaves as gpt-4o-mini at the flex tier, is settled at the
// prices of what ran, and books what each strategy saved; an opted-out call
// and a call of another class go untouched; a flex call the provider
// refuses for capacity pauses no pool, tells the SDK to retry, and the
// retry goes at the standard tier.
func TestOptimizeEndToEnd(t *testing.T) {
	batch := map[string]string{"x-tollgate-priority": "batch"}
	optedOut := map[string]string{"x-tollgate-priority": "batch", admission.HeaderOptimize: "off"}
	okJSON := upstream{status: 200, headers: []string{"content-type", "application/json"}, body: recorded(t, "openai-chat.json")}
	// openai-chat.json: 1117 prompt tokens, 1024 of them cached, 46 out.
	const (
		asSent = 93*2500 + 1024*1250 + 46*10_000 // gpt-4o, standard
		mini   = 93*150 + 1024*75 + 46*600       // gpt-4o-mini, standard
		flex   = 93*75 + 1024*37.5 + 46*300      // gpt-4o-mini, flex
	)
	for name, newStore := range storeKinds {
		t.Run(name, func(t *testing.T) {
			ss := startSettle(t, newStore, optimizePolicy)
			body := chatBody("gpt-4o", 300, "Summarize the quarterly report.")
			var spent policy.Money

			// 1. Downgraded and sent at flex; priced and saved exactly.
			a := ss.admitWith(t, "acme", body, batch)
			ex := ss.process(t, a, body, okJSON)
			model, tier := sentAs(t, ex.requestBody)
			assert.Equal(t, "gpt-4o-mini", model)
			assert.Equal(t, "flex", tier)
			assert.Equal(t, "downgrade,flex", ex.workerHeaders[admission.HeaderOptimized])
			assert.Equal(t, "gpt-4o", ex.workerHeaders[admission.HeaderDowngradedFrom])
			assert.Equal(t, okJSON.body, ex.forwarded, "the response is the provider's, naming the model that ran")
			spent += flex
			assert.Equal(t, spent, ss.usage(t).Spent, "booked at gpt-4o-mini's flex prices")
			assert.Equal(t, map[string]policy.Money{"downgrade": asSent - mini, "flex": mini - flex}, ss.savings(t))
			assert.Equal(t, 1.0, metricValue(t, ss.reg, "tollgate_optimize_rewrites_total", map[string]string{"strategy": "downgrade", "tier": "team"}))

			// 2. Opted out: the body goes as sent, at gpt-4o's prices.
			a = ss.admitWith(t, "acme", body, optedOut)
			ex = ss.process(t, a, body, okJSON)
			assert.Equal(t, string(body), string(ex.requestBody), "untouched")
			assert.Empty(t, ex.workerHeaders[admission.HeaderOptimized])
			spent += asSent
			assert.Equal(t, spent, ss.usage(t).Spent)

			// 3. Another class: no rule matches.
			a = ss.admitWith(t, "acme", body, nil)
			ex = ss.process(t, a, body, okJSON)
			assert.Equal(t, string(body), string(ex.requestBody))
			spent += asSent
			assert.Equal(t, spent, ss.usage(t).Spent)
			assert.Equal(t, map[string]policy.Money{"downgrade": asSent - mini, "flex": mini - flex}, ss.savings(t), "nothing more saved")

			// 4. The provider refuses the flex call for capacity.
			a = ss.admitWith(t, "acme", body, batch)
			ex = ss.process(t, a, body, upstream{status: 429, body: recorded(t, "openai-429.json"),
				headers: []string{"content-type", "application/json", "retry-after", "20"}})
			assert.Equal(t, "true", ex.workerHeaders["x-should-retry"], "the SDK retries, at the standard tier")
			assert.Equal(t, spent, ss.usage(t).Spent, "a refused call costs nothing")
			assert.Zero(t, metricValue(t, ss.reg, "tollgate_upstream_signals_total", map[string]string{"pool": "gpt", "kind": "pause"}),
				"flex capacity says nothing of the account's rate limits")
			assert.Equal(t, 1.0, metricValue(t, ss.reg, "tollgate_optimize_flex_refused_total", nil))
			a = ss.admitWith(t, "acme", body, batch) // the retry: admitted at once
			ex = ss.process(t, a, body, okJSON)
			model, tier = sentAs(t, ex.requestBody)
			assert.Equal(t, "gpt-4o-mini", model, "still downgraded")
			assert.Empty(t, tier, "flex is paused for the model")
			assert.Equal(t, "downgrade", ex.workerHeaders[admission.HeaderOptimized])
			spent += mini
			assert.Equal(t, spent, ss.usage(t).Spent)
			requireLint(t, ss.reg)
		})
	}
}

// savings returns acme's savings this period by strategy, as the store
// booked them.
func (ss *settleServer) savings(tb testing.TB) map[string]policy.Money {
	tb.Helper()
	set := ss.srv.Service().Policy()
	c, _ := set.Client("acme")
	u, err := ss.store.Usage(context.Background(), set.Defaults.Period(ss.clk.Now()), admission.Chain(c), time.Time{})
	require.NoError(tb, err)
	out := map[string]policy.Money{}
	for _, sv := range u.Savings {
		out[sv.Strategy] = sv.Amount
	}
	return out
}
