package admission_test

import (
	"context"
	"net/http"
	"os"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/tollgate/tollgate/admission"
	"github.com/tollgate/tollgate/internal/fakeclock"
	"github.com/tollgate/tollgate/internal/redistest"
	"github.com/tollgate/tollgate/limiter"
	"github.com/tollgate/tollgate/limiter/memstore"
	"github.com/tollgate/tollgate/limiter/redisstore"
	"github.com/tollgate/tollgate/policy"
)

var srv *redistest.Server

func TestMain(m *testing.M) { os.Exit(redistest.Main(m, &srv)) }

const settlePolicy = `
defaults:
  unknown_client: deny
pools:
  gpt:
    unit: token
    capacity: 100000
    refill_per_second: 1
models:
  "gpt-4o*": {input: "2.50/1M", output: "10/1M", cached_input: "1.25/1M"}
routes:
  openai:
    host: api.openai.com
    path_prefix: /v1/
    provider: openai
    pools: [gpt]
    class: immediate
tiers:
  team:
    priority: 20
    max_concurrent: 10
    monthly_budget: "100"
clients:
  acme: {tier: team}
`

var gptLimit = limiter.Limit{Capacity: 100000, Refill: 1}

// refilled is how many units the pool may have refilled during a test on a
// store that keeps its own time (Redis's TIME refills 1 a second; the
// memory store's fake clock never moves).
var refilled = map[string]int64{"memory": 0, "redis": 3}

// storeKinds are the stores a settle runs on: a restart of the sidecar
// keeps the store (Redis is shared; the memory store stands for one that
// outlived the Service here).
var storeKinds = map[string]func(t *testing.T, clk limiter.Clock) admission.Store{
	"memory": func(t *testing.T, clk limiter.Clock) admission.Store {
		s, err := memstore.New(memstore.Config{Clock: clk})
		require.NoError(t, err)
		t.Cleanup(func() { require.NoError(t, s.Close()) })
		return s
	},
	"redis": func(t *testing.T, _ limiter.Clock) admission.Store {
		s, err := redisstore.New(srv.Client(t), redisstore.Config{Prefix: redistest.Prefix(t)})
		require.NoError(t, err)
		return s
	},
}

func newService(t *testing.T, store admission.Store, clk limiter.Clock) *admission.Service {
	t.Helper()
	set, err := policy.Compile(policy.Source{Name: "settle.yaml", Data: []byte(settlePolicy)})
	require.NoError(t, err)
	s, err := admission.New(admission.Config{Settlement: admission.SettleDeferred}, admission.Deps{
		Policies: admission.StaticPolicy{Set: set}, Store: store, Registerer: prometheus.NewRegistry(), Clock: clk})
	require.NoError(t, err)
	t.Cleanup(func() { require.NoError(t, s.Close()) })
	return s
}

// level reads the gpt pool's whole units left, charging nothing.
func level(t *testing.T, store admission.Store) int64 {
	t.Helper()
	d, err := store.Reserve(context.Background(), limiter.Request{Takes: []limiter.Take{{Key: limiter.Key{Pool: "gpt"}, Limit: gptLimit}}})
	require.NoError(t, err)
	return d.Buckets[0].Remaining
}

var chatResponse = []byte(`{"id":"x","object":"chat.completion","model":"gpt-4o-2024-08-06","choices":[],` +
	`"usage":{"prompt_tokens":40,"completion_tokens":12,"total_tokens":52}}`)

func chatRequest(body string) *admission.Request {
	return &admission.Request{ID: "req", Client: "acme", Method: http.MethodPost, Host: "api.openai.com",
		Path: "/v1/chat/completions", Body: []byte(body), BodySize: int64(len(body)),
		Headers: map[string]string{"content-type": "application/json"}}
}

// TestSettleOneStep: a call settles from its usage in one store step: the
// budget holds its actual cost and the pool gets back what the call did
// not use, exactly; the same after the sidecar restarted between the
// admission and the response (a new Service on the same store, which
// remembers nothing of the call but what the store recorded).
func TestSettleOneStep(t *testing.T) {
	for name, newStore := range storeKinds {
		for _, restart := range []bool{false, true} {
			t.Run(name+map[bool]string{false: "", true: "/after a restart"}[restart], func(t *testing.T) {
				clk := fakeclock.New(time.Date(2026, 12, 6, 12, 0, 0, 0, time.UTC))
				store := newStore(t, clk)
				first := newService(t, store, clk)
				v := first.Decide(context.Background(), chatRequest(`{"model":"gpt-4o","max_tokens":500,"messages":[{"role":"user","content":"hi"}]}`))
				require.True(t, v.Allowed, v.Reason)
				require.NotEmpty(t, v.Reservation)
				charged := v.Estimate.Pools[0].Units
				require.Greater(t, charged, int64(52))
				require.InDelta(t, 100000-charged, level(t, store), float64(refilled[name]))

				settler := first
				if restart {
					settler = newService(t, store, clk)
				}
				c := settler.Follow(v.Reservation, v.Route, http.MethodPost)
				require.True(t, c.Tracked())
				c.ResponseHeaders(context.Background(), 200, map[string]string{"content-type": "application/json"})
				c.ResponseBody(chatResponse, true)
				assert.Equal(t, admission.SettledActual, c.End(context.Background()))

				assert.InDelta(t, 100000-52, level(t, store), float64(refilled[name]), "the pool got back all it was charged beyond the 52 tokens used")
				rep, err := settler.Usage(context.Background(), "acme")
				require.NoError(t, err)
				// 40 × $2.50/1M + 12 × $10/1M
				assert.Equal(t, "0.00022", rep.Budgets[0].Spent)
				assert.Equal(t, "0", rep.Budgets[0].Reserved)
				assert.Zero(t, rep.InFlight, "the slot is free")
			})
		}
	}
}

// TestSettleUpstreamRefusal: an upstream 429 releases the call (nothing
// spent, its tokens back) and pauses the pool for its Retry-After, in the
// same step.
func TestSettleUpstreamRefusal(t *testing.T) {
	for name, newStore := range storeKinds {
		t.Run(name, func(t *testing.T) {
			clk := fakeclock.New(time.Date(2026, 12, 6, 12, 0, 0, 0, time.UTC))
			store := newStore(t, clk)
			s := newService(t, store, clk)
			v := s.Decide(context.Background(), chatRequest(`{"model":"gpt-4o","max_tokens":10,"messages":[{"role":"user","content":"hi"}]}`))
			require.True(t, v.Allowed)
			c := s.Follow(v.Reservation, v.Route, http.MethodPost)
			c.ResponseHeaders(context.Background(), 429, map[string]string{"content-type": "application/json", "retry-after": "30"})
			c.ResponseBody([]byte(`{"error":{"code":"rate_limit_exceeded"}}`), true)
			assert.Equal(t, admission.SettledReleased, c.End(context.Background()))
			assert.Zero(t, level(t, store), "paused: the pool is held empty")
			rep, err := s.Usage(context.Background(), "acme")
			require.NoError(t, err)
			assert.Equal(t, "0", rep.Budgets[0].Spent)
			assert.Equal(t, "0", rep.Budgets[0].Reserved)
		})
	}
}

// TestWholeCallRoundTrips: on Redis a whole call costs two round trips, one
// to admit it and one to settle it (actual cost, refunds, slot and the
// upstream's signal in one script), counted by a hook on the client once
// the scripts are loaded.
func TestWholeCallRoundTrips(t *testing.T) {
	client := srv.Client(t)
	var rt redisstore.RoundTrips
	client.AddHook(&rt)
	store, err := redisstore.New(client, redisstore.Config{Prefix: redistest.Prefix(t)})
	require.NoError(t, err)
	s := newService(t, store, limiter.SystemClock{})
	call := func() {
		v := s.Decide(context.Background(), chatRequest(`{"model":"gpt-4o","max_tokens":500,"messages":[{"role":"user","content":"hi"}]}`))
		require.True(t, v.Allowed, v.Reason)
		c := s.Follow(v.Reservation, v.Route, http.MethodPost)
		c.ResponseHeaders(context.Background(), 200, map[string]string{"content-type": "application/json", "x-ratelimit-remaining-tokens": "90000"})
		c.ResponseBody(chatResponse, true)
		require.Equal(t, admission.SettledActual, c.End(context.Background()))
	}
	call() // loads the scripts
	before := rt.Count()
	for range 5 {
		call()
	}
	assert.Equal(t, int64(10), rt.Count()-before, "five whole calls, two round trips each")
}
