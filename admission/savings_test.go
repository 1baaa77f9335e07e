package admission_test

import (
	"context"
	"encoding/json"
	"net/http"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/tollgate/tollgate/admission"
	"github.com/tollgate/tollgate/internal/fakeclock"
	"github.com/tollgate/tollgate/limiter"
	"github.com/tollgate/tollgate/policy"
)

// TestSettleSavings: a call settled with the savings its rewrites made
// books them with its settlement, once; they show in the client's usage
// (decimal dollars, signed, with their total) and in the savings counters
// (negative ones in their own series). A call released, or settled with
// savings no store can book, books none, and settles all the same.
func TestSettleSavings(t *testing.T) {
	chat := `{"model":"gpt-4o","max_tokens":500,"messages":[{"role":"user","content":"hi"}]}`
	savings := []limiter.Saving{{Strategy: "downgrade", Amount: 41_200_000}, {Strategy: "flex", Amount: 3_000_000}, {Strategy: "prompt_cache", Amount: -1_500}}
	for name, newStore := range storeKinds {
		t.Run(name, func(t *testing.T) {
			ctx := context.Background()
			clk := fakeclock.New(time.Date(2026, 12, 6, 12, 0, 0, 0, time.UTC))
			store := newStore(t, clk)
			set, err := policy.Compile(policy.Source{Name: "settle.yaml", Data: []byte(settlePolicy)})
			require.NoError(t, err)
			reg := prometheus.NewRegistry()
			s, err := admission.New(admission.Config{Settlement: admission.SettleDeferred}, admission.Deps{
				Policies: admission.StaticPolicy{Set: set}, Store: store, Registerer: reg, Clock: clk})
			require.NoError(t, err)
			t.Cleanup(func() { require.NoError(t, s.Close()) })
			call := func(status int, body []byte, savings []limiter.Saving) (string, admission.SettleOutcome) {
				t.Helper()
				v := s.Decide(ctx, chatRequest(chat))
				require.True(t, v.Allowed, v.Reason)
				c := s.Follow(v.Reservation, v.Route, http.MethodPost)
				c.SetSavings(savings)
				c.ResponseHeaders(ctx, status, map[string]string{"content-type": "application/json"})
				c.ResponseBody(body, true)
				return v.Reservation, c.End(ctx)
			}
			report := func() admission.UsageReport {
				t.Helper()
				rep, err := s.Usage(ctx, "acme")
				require.NoError(t, err)
				return rep
			}
			counted := func(metric, strategy string) float64 {
				t.Helper()
				mfs, err := reg.Gather()
				require.NoError(t, err)
				for _, mf := range mfs {
					if mf.GetName() != metric {
						continue
					}
					for _, m := range mf.GetMetric() {
						labels := map[string]string{}
						for _, l := range m.GetLabel() {
							labels[l.GetName()] = l.GetValue()
						}
						if labels["strategy"] == strategy && labels["tier"] == "team" {
							return m.GetCounter().GetValue()
						}
					}
				}
				return 0
			}
			const saved, lost = "tollgate_optimize_savings_dollars_total", "tollgate_optimize_savings_lost_dollars_total"

			rep := report()
			assert.Equal(t, map[string]string{}, rep.Savings, "none yet")
			assert.Equal(t, "0", rep.SavingsTotal)

			id, outcome := call(200, chatResponse, savings)
			require.Equal(t, admission.SettledActual, outcome)
			rep = report()
			assert.Equal(t, map[string]string{"downgrade": "0.0412", "flex": "0.003", "prompt_cache": "-0.0000015"}, rep.Savings)
			assert.Equal(t, "0.0441985", rep.SavingsTotal)
			assert.Equal(t, "0.00022", rep.Budgets[0].Spent, "the settlement itself is as ever")
			assert.InDelta(t, 0.0412, counted(saved, "downgrade"), 1e-12)
			assert.InDelta(t, 0.003, counted(saved, "flex"), 1e-12)
			assert.InDelta(t, 0.0000015, counted(lost, "prompt_cache"), 1e-15, "a negative saving counts in its own series")
			assert.Zero(t, counted(saved, "prompt_cache"))

			st, err := s.Settle(ctx, id, 1)
			require.NoError(t, err)
			assert.True(t, st.Repeat)
			_, outcome = call(400, []byte(`{"error":{"code":"invalid_request_error"}}`), savings)
			require.Equal(t, admission.SettledReleased, outcome)
			bad := append([]limiter.Saving{{Strategy: "Downgrade", Amount: 1}}, savings...)
			_, outcome = call(200, chatResponse, bad)
			require.Equal(t, admission.SettledActual, outcome, "refused savings do not stop the settlement")

			rep = report()
			assert.Equal(t, map[string]string{"downgrade": "0.0412", "flex": "0.003", "prompt_cache": "-0.0000015"}, rep.Savings,
				"a repeat, a release and refused savings book nothing")
			assert.Equal(t, "0.00044", rep.Budgets[0].Spent, "the third call settled")
			assert.InDelta(t, 0.0412, counted(saved, "downgrade"), 1e-12, "counted once")

			raw, err := json.Marshal(rep)
			require.NoError(t, err)
			assert.Contains(t, string(raw), `"savings_usd":{"downgrade":"0.0412","flex":"0.003","prompt_cache":"-0.0000015"},"savings_total_usd":"0.0441985"`)
		})
	}
}
