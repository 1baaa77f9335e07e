package authz_test

import (
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/tollgate/tollgate/admission"
	"github.com/tollgate/tollgate/policy"
)

// postJSON POSTs body to an API path with the token, and returns the
// status and body.
func (ts *testServer) postJSON(tb testing.TB, path, body string) (int, string) {
	tb.Helper()
	resp, err := ts.http.Post(ts.base+path, "application/json", strings.NewReader(body))
	require.NoError(tb, err)
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	require.NoError(tb, err)
	return resp.StatusCode, string(b)
}

// decodeAs requires status 200 and decodes body into a T.
func decodeAs[T any](tb testing.TB, status int, body string) T {
	tb.Helper()
	require.Equal(tb, http.StatusOK, status, body)
	var v T
	require.NoError(tb, json.Unmarshal([]byte(body), &v), body)
	return v
}

// TestAnalyzeAPI: POST /api/optimize/analyze says what the optimizer
// would do to a call (rules, strategies, the body that would go, the
// estimates before and after) and reserves nothing; bad input is a clear
// 400, an unknown client or route 404, an oversize request 413, and no
// token 401.
func TestAnalyzeAPI(t *testing.T) {
	ts := startServer(t, serverOpts{policy: optimizePolicy})
	body := chatBody("gpt-4o", 300, "Summarize the quarterly report.")
	in := tokens(0, body)
	before := in*2500 + 300*10_000 // gpt-4o
	after := in*75 + 300*300       // gpt-4o-mini at flex
	const url = "https://api.openai.com/v1/chat/completions"
	analyze := func(t *testing.T, req string) admission.AnalyzeReport {
		t.Helper()
		sc, out := ts.postJSON(t, "/api/optimize/analyze", req)
		return decodeAs[admission.AnalyzeReport](t, sc, out)
	}

	t.Run("a batch call goes as gpt-4o-mini at flex", func(t *testing.T) {
		for name, req := range map[string]string{
			"class field":     fmt.Sprintf(`{"client":"acme","url":%q,"class":"batch","body":%s}`, url, body),
			"priority header": fmt.Sprintf(`{"client":"acme","url":%q,"headers":{"X-Tollgate-Priority":"batch"},"body":%s}`, url, body),
		} {
			t.Run(name, func(t *testing.T) {
				rep := analyze(t, req)
				assert.Equal(t, "acme", rep.Client)
				assert.Equal(t, "team", rep.Tier)
				assert.Equal(t, "batch", rep.Class)
				assert.Equal(t, int64(0), rep.PressurePercent, "nothing spent of a $100 month")
				assert.Equal(t, []string{"batch-to-mini"}, rep.Rules)
				assert.Equal(t, []string{"downgrade", "flex"}, rep.Strategies)
				assert.Equal(t, "gpt-4o", rep.DowngradedFrom)
				model, tier := sentAs(t, rep.Body)
				assert.Equal(t, "gpt-4o-mini", model)
				assert.Equal(t, "flex", tier)
				assert.Equal(t, "gpt-4o", rep.Before.Model)
				assert.Equal(t, moneyString(before), rep.Before.Cost)
				assert.Equal(t, "gpt-4o-mini", rep.After.Model)
				assert.Equal(t, moneyString(after), rep.After.Cost)
				assert.Equal(t, moneyString(before-after), rep.Saving)
			})
		}
		assert.Zero(t, ts.srv.Service().Pending(), "an analysis reserves nothing")
		assert.Zero(t, metricValue(t, ts.reg, "tollgate_optimize_rewrites_total", map[string]string{"strategy": "downgrade", "tier": "team"}),
			"an analysis rewrites no call")
		assert.Equal(t, "0", ts.usageOf(t, "acme").Budgets[0].Reserved)
	})

	t.Run("a call no rule matches goes as sent", func(t *testing.T) {
		rep := analyze(t, fmt.Sprintf(`{"client":"acme","url":%q,"body":%s}`, url, body))
		assert.Equal(t, "normal", rep.Class)
		assert.Empty(t, rep.Rules)
		assert.Empty(t, rep.Strategies)
		assert.JSONEq(t, string(body), string(rep.Body))
		assert.Equal(t, rep.Before, rep.After)
		assert.Equal(t, "0", rep.Saving)
	})

	t.Run("a body that is not JSON is given as a string", func(t *testing.T) {
		rep := analyze(t, fmt.Sprintf(`{"client":"acme","url":%q,"class":"batch","body":"not json"}`, url))
		assert.Empty(t, rep.Strategies, "nothing to rewrite")
		assert.JSONEq(t, `"not json"`, string(rep.Body))
		assert.False(t, rep.Before.Exact)
	})

	tests := map[string]struct {
		req        string
		wantStatus int
		wantError  string
	}{
		"not JSON":          {`{"client":`, http.StatusBadRequest, `the body must be {"client": "acme"`},
		"an unknown field":  {fmt.Sprintf(`{"client":"acme","url":%q,"model":"gpt-4o"}`, url), http.StatusBadRequest, `unknown field "model"`},
		"two objects":       {fmt.Sprintf(`{"client":"acme","url":%q} {}`, url), http.StatusBadRequest, "nothing after it"},
		"no client":         {fmt.Sprintf(`{"url":%q}`, url), http.StatusBadRequest, "client is required"},
		"no url":            {`{"client":"acme"}`, http.StatusBadRequest, "url is required"},
		"a relative url":    {`{"client":"acme","url":"/v1/chat/completions"}`, http.StatusBadRequest, "want an absolute URL"},
		"a bad class":       {fmt.Sprintf(`{"client":"acme","url":%q,"class":"urgent"}`, url), http.StatusBadRequest, `class "urgent"`},
		"a bad client id":   {fmt.Sprintf(`{"client":"acme corp","url":%q}`, url), http.StatusBadRequest, "only A-Z a-z 0-9"},
		"a bad string body": {fmt.Sprintf(`{"client":"acme","url":%q,"body":"\u00"}`, url), http.StatusBadRequest, "the body must be"},
		"an unknown client": {fmt.Sprintf(`{"client":"stranger","url":%q}`, url), http.StatusNotFound, "unknown client"},
		"no route":          {`{"client":"acme","url":"https://example.com/x"}`, http.StatusNotFound, "no route matches example.com/x"},
		"too large": {fmt.Sprintf(`{"client":"acme","url":%q,"body":"%s"}`, url, strings.Repeat("x", 4<<20+64<<10)),
			http.StatusRequestEntityTooLarge, "over"},
	}
	for name, tc := range tests {
		t.Run(name, func(t *testing.T) {
			status, out := ts.postJSON(t, "/api/optimize/analyze", tc.req)
			assert.Equal(t, tc.wantStatus, status, out)
			var e struct{ Error string }
			require.NoError(t, json.Unmarshal([]byte(out), &e), out)
			assert.Contains(t, e.Error, tc.wantError)
		})
	}

	t.Run("without the token", func(t *testing.T) {
		resp, out := callAPI(t, ts.srv, http.MethodPost, "/api/optimize/analyze", fmt.Sprintf(`{"client":"acme","url":%q}`, url), "")
		assert.Equal(t, http.StatusUnauthorized, resp.StatusCode, out)
	})
}

// TestOptimizeStatsAPI: a client's savings this month by strategy, as the
// store booked them at settle, against its spend, and its rewrites
// counted; on both stores, through Check and ext_proc.
func TestOptimizeStatsAPI(t *testing.T) {
	batch := map[string]string{"x-tollgate-priority": "batch"}
	okJSON := upstream{status: 200, headers: []string{"content-type", "application/json"}, body: recorded(t, "openai-chat.json")}
	// openai-chat.json: 1117 prompt tokens, 1024 of them cached, 46 out.
	const (
		asSent = 93*2500 + 1024*1250 + 46*10_000 // gpt-4o, standard: $0.0019725
		flex   = 93*75 + 1024*37.5 + 46*300      // gpt-4o-mini at flex: $0.000059175
		mini   = 93*150 + 1024*75 + 46*600       // gpt-4o-mini, standard
	)
	for name, newStore := range storeKinds {
		t.Run(name, func(t *testing.T) {
			ss := startSettle(t, newStore, optimizePolicy)
			stats := func() admission.OptimizeStats {
				t.Helper()
				sc, out := ss.get(t, "/api/optimize/stats/acme")
				return decodeAs[admission.OptimizeStats](t, sc, out)
			}
			assert.Equal(t, admission.OptimizeStats{Client: "acme", Period: "2026-01", Savings: map[string]string{}, SavingsTotal: "0",
				Spent: "0", WouldHaveCost: "0", SavedPercent: "0", Rewrites: map[string]int64{}}, stats(), "nothing yet")

			body := chatBody("gpt-4o", 300, "Summarize the quarterly report.")
			ss.process(t, ss.admitWith(t, "acme", body, batch), body, okJSON) // downgraded, at flex
			ss.process(t, ss.admitWith(t, "acme", body, nil), body, okJSON)   // as sent
			// Saved: $0.0019725 - $0.000059175 of the $0.003945 the two
			// would have cost as sent, 48.5%.
			assert.Equal(t, admission.OptimizeStats{
				Client: "acme", Period: "2026-01",
				Savings:      map[string]string{"downgrade": moneyString(asSent - mini), "flex": moneyString(mini - flex)},
				SavingsTotal: moneyString(asSent - flex), Spent: moneyString(asSent + flex), WouldHaveCost: moneyString(2 * asSent),
				SavedBasisPoints: 4850, SavedPercent: "48.5",
				Rewrites: map[string]int64{"downgrade": 1, "flex": 1}, ObservedCalls: 2,
			}, stats())
		})
	}

	t.Run("unknown client, no token", func(t *testing.T) {
		ts := startServer(t, serverOpts{policy: optimizePolicy})
		for _, path := range []string{"/api/optimize/stats/stranger", "/api/optimize/recommendations/stranger"} {
			sc, out := ts.get(t, path)
			assert.Equal(t, http.StatusNotFound, sc, out)
			assert.Contains(t, out, "unknown client")
			resp, out := callAPI(t, ts.srv, http.MethodGet, strings.Replace(path, "stranger", "acme", 1), "", "")
			assert.Equal(t, http.StatusUnauthorized, resp.StatusCode, out)
		}
	})
}

// recommendPolicy: gpt-4o and gpt-5 with their -mini siblings (gpt-5's
// with flex prices), one OpenAI route, and acme on a monthly budget of
// the given dollars; no optimize rules.
func recommendPolicy(budget string) string {
	return fmt.Sprintf(`
defaults:
  unknown_client: deny
  reservation_ttl: 1m
pools:
  gpt: {unit: token, capacity: 1000000, refill_per_second: 100000}
models:
  "gpt-4o-mini*": {input: "0.15/1M", output: "0.60/1M", cached_input: "0.075/1M"}
  "gpt-4o*": {input: "2.50/1M", output: "10/1M", cached_input: "1.25/1M"}
  "gpt-5-mini*": {input: "0.25/1M", output: "2/1M", cached_input: "0.025/1M", flex_input: "0.125/1M", flex_output: "1/1M", flex_cached_input: "0.0125/1M"}
  "gpt-5*": {input: "1.25/1M", output: "10/1M", cached_input: "0.125/1M", flex_input: "0.625/1M", flex_output: "5/1M", flex_cached_input: "0.0625/1M"}
routes:
  openai: {host: api.openai.com, path_prefix: /v1/, provider: openai, pools: [gpt]}
tiers:
  team: {priority: 20, max_concurrent: 10, monthly_budget: %q}
clients:
  acme: {tier: team}
`, budget)
}

// chatResponse is an OpenAI chat completion whose usage is 1117 prompt
// tokens, 1024 of them cached (as openai-chat.json), and out output
// tokens.
func chatResponse(out int) upstream {
	return upstream{status: 200, headers: []string{"content-type", "application/json"}, body: fmt.Appendf(nil,
		`{"id":"chatcmpl-1","object":"chat.completion","model":"gpt-x","choices":[{"index":0,"message":{"role":"assistant","content":"ok"},"finish_reason":"stop"}],`+
			`"usage":{"prompt_tokens":1117,"completion_tokens":%d,"total_tokens":%d,"prompt_tokens_details":{"cached_tokens":1024}}}`, out, 1117+out)}
}

// observedCall is one call a recommendations test makes: its model and
// class, whether it asks for flex itself, and its output tokens.
type observedCall struct {
	model, class string
	flex         bool
	out          int
	times        int
}

// TestRecommendationsAPI: recommendations computed from the calls a
// client made, each settled through Check and ext_proc on both stores,
// with the dollars each would have saved, exactly, and a rule that
// compiles.
func TestRecommendationsAPI(t *testing.T) {
	// Per call, with the usage of chatResponse: 93 plain and 1,024
	// cached input tokens.
	const (
		gpt4oShort = 93*2500 + 1024*1250 + 46*10_000  // $0.0019725
		miniShort  = 93*150 + 1024*75 + 46*600        // $0.00011835
		gpt4oLong  = 93*2500 + 1024*1250 + 500*10_000 // $0.0065125
		gpt5Short  = 93*1250 + 1024*125 + 46*10_000   // $0.00070425
		gpt5Mini   = 93*250 + 1024*25 + 46*2000       // $0.00014085
		gpt5Flex   = 93*625 + 1024*62.5 + 46*5000     // $0.000352125
		gpt5Long   = 93*1250 + 1024*125 + 500*10_000  // $0.00524425
		gpt5LongFx = 93*625 + 1024*62.5 + 500*5000    // $0.002622125
	)
	tests := map[string]struct {
		budget  string
		calls   []observedCall
		advance time.Duration
		want    []admission.Recommendation // Rule is checked apart
	}{
		"downgrade: three of four batch gpt-4o calls were short": {
			budget: "100", calls: []observedCall{{model: "gpt-4o", class: "batch", out: 46, times: 3}, {model: "gpt-4o", class: "batch", out: 500, times: 1}},
			want: []admission.Recommendation{{Kind: "downgrade", Saving: moneyString(3 * (gpt4oShort - miniShort)),
				Message: "75% of your batch-class gpt-4o calls on route openai (3 of 4) wrote fewer than 300 output tokens: downgrading them to gpt-4o-mini would have saved $0.00556245 this month."}},
		},
		"no downgrade when most calls are long": {
			budget: "100", calls: []observedCall{{model: "gpt-4o", class: "normal", out: 46, times: 1}, {model: "gpt-4o", class: "normal", out: 500, times: 2}},
		},
		"flex: batch gpt-5 calls at the standard tier": {
			budget: "100", calls: []observedCall{
				{model: "gpt-5", class: "batch", out: 500, times: 2},
				{model: "gpt-5", class: "batch", out: 500, flex: true, times: 1}, // sent at flex already
				{model: "gpt-5", class: "normal", out: 500, times: 1},            // not a batch call
			},
			want: []admission.Recommendation{{Kind: "flex", Saving: moneyString(2 * (gpt5Long - gpt5LongFx)),
				Message: "Flex processing would have saved $0.00524425 this month on your 2 batch-class gpt-5 calls on route openai that went at the standard tier (flex is slower, and refused when OpenAI's flex capacity runs out)."}},
		},
		"downgrade and flex on the same calls, the larger first": {
			budget: "100", calls: []observedCall{{model: "gpt-5", class: "batch", out: 46, times: 2}},
			want: []admission.Recommendation{
				{Kind: "downgrade", Saving: moneyString(2 * (gpt5Short - gpt5Mini)),
					Message: "100% of your batch-class gpt-5 calls on route openai (2 of 2) wrote fewer than 300 output tokens: downgrading them to gpt-5-mini would have saved $0.0011268 this month."},
				{Kind: "flex", Saving: moneyString(2 * (gpt5Short - gpt5Flex)),
					Message: "Flex processing would have saved $0.00070425 this month on your 2 batch-class gpt-5 calls on route openai that went at the standard tier (flex is slower, and refused when OpenAI's flex capacity runs out)."},
			},
		},
		"budget forecast: $0.013025 in ten days of a $0.02 month": {
			budget: "0.02", calls: []observedCall{{model: "gpt-4o", class: "normal", out: 500, times: 2}}, advance: 10 * 24 * time.Hour,
			// 2 × $0.0065125 × 31/10 = $0.0403775; $0.02 lasts 10 × 0.02/0.013025 days.
			want: []admission.Recommendation{{Kind: "budget_forecast", Saving: moneyString(2*gpt4oLong*31/10 - 20_000_000),
				Message: "At this month's spend rate ($0.013025 in 10 days), your $0.02 budget is exhausted on the 16th (2026-01-16): the month would cost $0.0403775, $0.0203775 over."}},
		},
		"on track: no forecast": {
			budget: "100", calls: []observedCall{{model: "gpt-4o", class: "normal", out: 500, times: 2}}, advance: 10 * 24 * time.Hour,
		},
	}
	for name, tc := range tests {
		t.Run(name, func(t *testing.T) {
			for store, newStore := range storeKinds {
				t.Run(store, func(t *testing.T) {
					ss := startSettle(t, newStore, recommendPolicy(tc.budget))
					calls := 0
					for _, c := range tc.calls {
						body := chatBody(c.model, 300, "Summarize the quarterly report.")
						if c.flex {
							body = []byte(strings.Replace(string(body), `{"model"`, `{"service_tier":"flex","model"`, 1))
						}
						for range c.times {
							ss.process(t, ss.admitWith(t, "acme", body, map[string]string{"x-tollgate-priority": c.class}), body, chatResponse(c.out))
							calls++
						}
					}
					ss.clk.Advance(tc.advance)
					sc, out := ss.get(t, "/api/optimize/recommendations/acme")
					rep := decodeAs[admission.RecommendationsReport](t, sc, out)
					assert.Equal(t, "acme", rep.Client)
					assert.Equal(t, "2026-01", rep.Period)
					var observed int64
					for _, o := range rep.Observed {
						observed += o.Calls
					}
					assert.Equal(t, int64(calls), observed, "every call settled is observed")
					rules := make([]string, len(rep.Recommendations))
					for i := range rep.Recommendations {
						rules[i], rep.Recommendations[i].Rule = rep.Recommendations[i].Rule, ""
					}
					want := tc.want
					if want == nil {
						want = []admission.Recommendation{}
					}
					assert.Equal(t, want, rep.Recommendations)
					for i, rule := range rules {
						set, err := policy.Compile(policy.Source{Name: "p.yaml", Data: []byte(recommendPolicy(tc.budget))}, policy.Source{Name: "rule.yaml", Data: []byte(rule)})
						require.NoError(t, err, rule)
						switch want[i].Kind {
						case "downgrade":
							require.Len(t, set.Optimize.Rules, 1, rule)
							assert.Contains(t, []string{"gpt-4o-mini", "gpt-5-mini"}, set.Optimize.Rules[0].Downgrade)
							assert.Equal(t, []string{"acme"}, set.Optimize.Rules[0].Clients)
						case "flex":
							require.Len(t, set.Optimize.Rules, 1, rule)
							assert.True(t, set.Optimize.Rules[0].Flex)
							assert.Equal(t, []policy.Class{policy.Batch}, set.Optimize.Rules[0].Classes)
						case "budget_forecast":
							assert.Equal(t, []string{"acme"}, set.Optimize.AggressiveClients)
						}
					}
				})
			}
		})
	}

	t.Run("the observed calls, with what rewrote them", func(t *testing.T) {
		ss := startSettle(t, storeKinds["memory"], optimizePolicy)
		body := chatBody("gpt-4o", 300, "Summarize the quarterly report.")
		ss.process(t, ss.admitWith(t, "acme", body, map[string]string{"x-tollgate-priority": "batch"}), body, chatResponse(46))
		ss.process(t, ss.admitWith(t, "acme", body, nil), body, chatResponse(500))
		sc, out := ss.get(t, "/api/optimize/recommendations/acme")
		rep := decodeAs[admission.RecommendationsReport](t, sc, out)
		assert.Equal(t, []admission.ObservedCalls{
			{Route: "openai", Model: "gpt-4o", Class: "normal", Calls: 1, InputTokens: 1117, CachedInputTokens: 1024, OutputTokens: 500,
				Spent: moneyString(gpt4oLong), Rewritten: map[string]int64{}},
			{Route: "openai", Model: "gpt-4o-mini", Class: "batch", Calls: 1, ShortOutputCalls: 1, InputTokens: 1117, CachedInputTokens: 1024,
				OutputTokens: 46, Spent: moneyString(93*75 + 1024*37.5 + 46*300), Rewritten: map[string]int64{"downgrade": 1, "flex": 1}},
		}, rep.Observed, "the largest spend first; the model is the one that ran")
		assert.Empty(t, rep.Recommendations, "the batch call is at gpt-4o-mini's flex already; the other is long and normal")
	})
}
