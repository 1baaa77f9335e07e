package decisionlog

import (
	"context"
	"fmt"
	"io"
	"testing"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/stretchr/testify/require"

	"github.com/tollgate/tollgate/admission"
	"github.com/tollgate/tollgate/limiter/memstore"
	"github.com/tollgate/tollgate/policy"
)

// BenchmarkDecideDecisionLog is one admission with the decision log off
// and on (writing to io.Discard): what the log adds to the request path.
func BenchmarkDecideDecisionLog(b *testing.B) {
	set := compileSet(b, "bench.yaml", fmt.Sprintf(`
pools:
  gpt: {unit: token, capacity: %d, refill_per_second: %d}
models:
  "gpt-4o*": {input: "2.50/1M", output: "10/1M"}
routes:
  openai: {host: api.openai.com, path_prefix: /v1/, provider: openai, pools: [gpt]}
tiers:
  basic: {priority: 10, max_concurrent: 100, monthly_budget: custom}
clients:
  acme: {tier: basic}
`, policy.MaxCapacity, policy.MaxCapacity))
	body := body(policy.ProviderOpenAI, "/v1/chat/completions", "gpt-4o", 100, 200)
	for _, on := range []bool{false, true} {
		name := map[bool]string{false: "off", true: "on"}[on]
		b.Run(name, func(b *testing.B) {
			st, err := memstore.New(memstore.DefaultConfig())
			require.NoError(b, err)
			defer st.Close()
			deps := admission.Deps{Policies: admission.StaticPolicy{Set: set}, Store: st, Registerer: prometheus.NewRegistry()}
			if on {
				w, err := New(io.Discard, DefaultConfig(), prometheus.NewRegistry(), nil)
				require.NoError(b, err)
				defer w.Close()
				deps.DecisionLog = w
			}
			svc, err := admission.New(admission.Config{Settlement: admission.SettleImmediate}, deps)
			require.NoError(b, err)
			defer svc.Close()
			r := &admission.Request{ID: "r", Client: "acme", Method: "POST", Host: "api.openai.com", Path: "/v1/chat/completions",
				Headers: map[string]string{"content-type": "application/json"}, Body: body, BodySize: int64(len(body))}
			ctx := context.Background()
			b.ReportAllocs()
			for b.Loop() {
				if v := svc.Decide(ctx, r); !v.Allowed {
					b.Fatalf("refused: %s", v.Reason)
				}
			}
		})
	}
}
