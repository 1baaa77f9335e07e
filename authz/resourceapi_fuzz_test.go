package authz

import (
	"context"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/stretchr/testify/require"

	"github.com/tollgate/tollgate/admission"
	"github.com/tollgate/tollgate/internal/fakeclock"
	"github.com/tollgate/tollgate/limiter/memstore"
	"github.com/tollgate/tollgate/policy"
)

// FuzzResourceCheck feeds bodies of POST /api/resources/check through the
// parser and the dry run: nothing panics, every parsed request gets one of
// the three answers, and the store is left holding nothing at all (not a
// bucket, not a reservation, not a slot).
func FuzzResourceCheck(f *testing.F) {
	for _, s := range []string{
		`{"client": "acme", "url": "https://api.openai.com/v1/chat/completions", "body": {"model": "gpt-4o", "max_tokens": 50, "messages": [{"role": "user", "content": "hi"}]}}`,
		`{"client": "acme", "url": "https://api.openai.com/v1/chat/completions", "class": "batch", "headers": {"X-Tollgate-Priority": "fast"}, "body": "a=b"}`,
		`{"client": "acme", "url": "https://api.anthropic.com/v1/messages", "model": "claude-3-5-sonnet", "max_tokens": 1e300}`,
		`{"client": "acme", "route": "openai-chat", "model": "gpt-4o", "max_tokens": -1}`,
		`{"client": "", "url": "http://[::1"}`, `{bad`, `null`, `{"client": "a", "url": "https://x/%zz"}`,
	} {
		f.Add([]byte(s))
	}
	clk := fakeclock.New(time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC))
	store, err := memstore.New(memstore.Config{Clock: clk})
	require.NoError(f, err)
	f.Cleanup(func() { require.NoError(f, store.Close()) })
	set := policy.Default()
	svc, err := admission.New(admission.Config{Settlement: admission.SettleDeferred},
		admission.Deps{Policies: admission.StaticPolicy{Set: set}, Store: store, Registerer: prometheus.NewRegistry(), Clock: clk})
	require.NoError(f, err)
	f.Cleanup(func() { require.NoError(f, svc.Close()) })

	f.Fuzz(func(t *testing.T, raw []byte) {
		req, msg := decodeCheck(raw, set)
		if msg != "" {
			require.Empty(t, req.Client, "a refused body yields no request")
			return
		}
		require.NotEmpty(t, req.Host)
		require.Equal(t, int64(len(req.Body)), req.BodySize)
		res, err := svc.Check(context.Background(), &req)
		require.NoError(t, err, "the memory store always answers")
		require.Contains(t, []admission.CheckAnswer{admission.CheckAdmit, admission.CheckHold, admission.CheckRefuse}, res.Answer)
		require.GreaterOrEqual(t, res.RetryAfter, 0.0)
		require.GreaterOrEqual(t, res.EstimatedWait, 0.0)
		require.Zero(t, store.Len(), "a check stored a bucket")
		require.Zero(t, svc.Pending(), "a check left a reservation")
		require.Zero(t, svc.QueueStatus().Total, "a check queued")
	})
}

// FuzzInternalRequests feeds bodies of POST /internal/reserve, consume and
// release through their parsers and a reservation: nothing panics, what
// parses is in range, and a refused reservation has no id.
func FuzzInternalRequests(f *testing.F) {
	for _, s := range []string{
		`{"client": "acme", "pool": "rows", "units": 100, "estimate_usd": "0.02"}`,
		`{"client": "acme", "route": "openai-chat", "units": 10}`,
		`{"reservation_id": "abc", "actual_cost_usd": "0.004", "used_units": {"rows": 40}}`,
		`{"reservation_id": "abc"}`, `{"client": "acme", "units": -5, "estimate_usd": "-1"}`, `{} {}`, `[]`,
	} {
		f.Add([]byte(s))
	}
	clk := fakeclock.New(time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC))
	store, err := memstore.New(memstore.Config{Clock: clk})
	require.NoError(f, err)
	f.Cleanup(func() { require.NoError(f, store.Close()) })
	set, err := policy.Compile(policy.Source{Name: "p.yaml", Data: []byte(`
pools:
  rows: {unit: request, capacity: 300, refill_per_second: 1, price: "0.0001/1"}
routes:
  db: {host: db.internal, path_prefix: /, provider: generic, pools: [rows]}
tiers:
  basic: {priority: 10, max_concurrent: 5}
clients:
  acme: {tier: basic, monthly_budget: "10"}
`)})
	require.NoError(f, err)
	svc, err := admission.New(admission.Config{Settlement: admission.SettleDeferred},
		admission.Deps{Policies: admission.StaticPolicy{Set: set}, Store: store, Registerer: prometheus.NewRegistry(), Clock: clk})
	require.NoError(f, err)
	f.Cleanup(func() { require.NoError(f, svc.Close()) })

	f.Fuzz(func(t *testing.T, raw []byte) {
		if ask, err := decodeReserve(raw); err == nil {
			require.NotEmpty(t, ask.Client)
			require.GreaterOrEqual(t, int64(ask.Cost), int64(-1))
			res, err := svc.ReserveDirect(context.Background(), ask)
			if err == nil && !res.Allowed {
				require.Empty(t, res.ID)
			}
			if err == nil && res.Allowed {
				_, err := svc.Release(context.Background(), res.ID)
				require.NoError(t, err)
			}
		}
		if req, actual, err := decodeConsume(raw); err == nil {
			require.NotEmpty(t, req.ID)
			require.GreaterOrEqual(t, int64(actual), int64(0))
		}
		var rel ReleaseRequest
		_ = decodeStrict(raw, &rel)
	})
}
