package admission_test

import (
	"context"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/tollgate/tollgate/admission"
	"github.com/tollgate/tollgate/internal/fakeclock"
	"github.com/tollgate/tollgate/limiter/memstore"
	"github.com/tollgate/tollgate/policy/rls"
)

// TestRateLimitQuotaAndOverride: quota-mode descriptors fail the request
// only all together; a descriptor's own limit has a counter of its own.
func TestRateLimitQuotaAndOverride(t *testing.T) {
	conf, err := rls.Compile(rls.Source{Name: "q.yaml", Data: []byte(`
domain: q
descriptors:
  - key: a
    quota_mode: true
    rate_limit: {unit: minute, requests_per_unit: 1}
  - key: b
    quota_mode: true
    rate_limit: {unit: minute, requests_per_unit: 2}
`)})
	require.NoError(t, err)
	clk := fakeclock.New(time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC))
	store, err := memstore.New(memstore.Config{Clock: clk})
	require.NoError(t, err)
	t.Cleanup(func() { require.NoError(t, store.Close()) })
	rl, err := admission.NewRateLimiter(admission.RateLimitDeps{Config: admission.StaticRateLimits{Config: conf}, Store: store,
		Registerer: prometheus.NewRegistry(), Clock: clk})
	require.NoError(t, err)
	d := func(k, v string) admission.RateLimitDescriptor {
		return admission.RateLimitDescriptor{Entries: []rls.Entry{{Key: k, Value: v}}}
	}
	both := admission.RateLimitRequest{Domain: "q", Descriptors: []admission.RateLimitDescriptor{d("a", "x"), d("b", "x")}}
	tests := []struct {
		name      string
		req       admission.RateLimitRequest
		over      bool
		statusesO []bool
	}{
		{"both within", both, false, []bool{false, false}},
		{"a over, b within: OK", both, false, []bool{true, false}},
		{"both over: OVER_LIMIT", both, true, []bool{true, true}},
	}
	for _, tc := range tests {
		v, err := rl.Decide(context.Background(), tc.req)
		require.NoError(t, err, tc.name)
		assert.Equal(t, tc.over, v.Over, tc.name)
		for i, o := range tc.statusesO {
			assert.Equal(t, o, v.Statuses[i].Over, "%s: status %d", tc.name, i)
		}
	}

	override := admission.RateLimitDescriptor{Entries: []rls.Entry{{Key: "a", Value: "x"}},
		Override: &admission.RateLimitOverride{RequestsPerUnit: 3, Unit: rls.Second}}
	for i, want := range []bool{false, false, false, true} {
		v, err := rl.Decide(context.Background(), admission.RateLimitRequest{Domain: "q", Descriptors: []admission.RateLimitDescriptor{override}})
		require.NoError(t, err)
		assert.Equal(t, want, v.Over, "override call %d", i)
		require.NotNil(t, v.Statuses[0].Limit)
		assert.Equal(t, uint32(3), v.Statuses[0].Limit.RequestsPerUnit)
	}
}
