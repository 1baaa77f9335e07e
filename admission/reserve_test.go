package admission_test

import (
	"context"
	"fmt"
	"net/http"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/tollgate/tollgate/admission"
	"github.com/tollgate/tollgate/internal/fakeclock"
	"github.com/tollgate/tollgate/limiter"
	"github.com/tollgate/tollgate/limiter/memstore"
	"github.com/tollgate/tollgate/policy"
)

// reservePolicy has one pool "api" of 10 calls refilling 10 a day (so that
// Redis's own clock refills nothing a test could see), split by pool, and
// two clients: acme (tier enterprise) and bob (tier basic).
func reservePolicy(pool string) string {
	return `
defaults:
  unknown_client: deny
pools:
  api:
    unit: request
    capacity: 10
    refill: 10/d
    price: "0.01"
` + pool + `
routes:
  api:
    host: api.example.com
    path_prefix: /v1/
    provider: generic
    pools: [api]
    pricing: pool
    class: immediate
tiers:
  enterprise: {priority: 40, max_concurrent: 100}
  basic: {priority: 10, max_concurrent: 100}
clients:
  acme: {tier: enterprise}
  bob: {tier: basic}
`
}

// The three modes of the tests, as pool lines.
const (
	reserveNever = `    reserved:
      - {tier: enterprise, share: 30%}`
	reserveIdle = `    reserved:
      - {tier: enterprise, share: 40%, lend: idle, keep: 50%}`
	reserveDedicated = `  api-acme:
    unit: request
    capacity: 5
    refill: 5/d
    price: "0.01"
    dedicated: {client: acme, instead_of: api}`
)

func newReserveService(t *testing.T, pool string, store admission.Store, clk limiter.Clock, reg prometheus.Registerer) (*admission.Service, *policy.Set) {
	t.Helper()
	set, err := policy.Compile(policy.Source{Name: "reserve.yaml", Data: []byte(reservePolicy(pool))})
	require.NoError(t, err)
	if reg == nil {
		reg = prometheus.NewRegistry()
	}
	s, err := admission.New(admission.Config{Settlement: admission.SettleDeferred}, admission.Deps{
		Policies: admission.StaticPolicy{Set: set}, Store: store, Registerer: reg, Clock: clk})
	require.NoError(t, err)
	t.Cleanup(func() { require.NoError(t, s.Close()) })
	return s, set
}

// apiCalls numbers the test calls' request ids.
var apiCalls atomic.Int64

func apiRequest(client string) *admission.Request {
	return &admission.Request{ID: fmt.Sprintf("r%d", apiCalls.Add(1)), Client: client, Method: http.MethodPost, Host: "api.example.com",
		Path: "/v1/send", Headers: map[string]string{"content-type": "application/json"}}
}

// admitN sends n calls for client and returns how many were admitted, and
// the refusals' reasons and pools.
func admitN(t *testing.T, s *admission.Service, client string, n int) (admitted int, refusals []string) {
	t.Helper()
	for range n {
		v := s.Decide(context.Background(), apiRequest(client))
		if v.Allowed {
			admitted++
			continue
		}
		refusals = append(refusals, v.Reason+"@"+v.Pool)
	}
	return admitted, refusals
}

// partLevel reads the whole units left in one bucket, charging nothing.
func partLevel(t *testing.T, store admission.Store, key limiter.Key, l policy.Limit) int64 {
	t.Helper()
	d, err := store.Reserve(context.Background(), limiter.Request{Takes: []limiter.Take{{Key: key, Limit: limiter.Limit(l)}}})
	require.NoError(t, err)
	return d.Buckets[0].Remaining
}

// TestReservedNeverLent: a share never lent stays whole for its owner
// whatever others spend; the owner spends the shared part too once its
// own is empty.
func TestReservedNeverLent(t *testing.T) {
	for name, newStore := range storeKinds {
		t.Run(name, func(t *testing.T) {
			clk := fakeclock.New(time.Date(2026, 12, 6, 12, 0, 0, 0, time.UTC))
			store := newStore(t, clk)
			s, set := newReserveService(t, reserveNever, store, clk, nil)
			pool := set.Pools["api"]
			part := pool.Reserved[0].Kept

			got, refused := admitN(t, s, "bob", 9)
			assert.Equal(t, 7, got, "bob spends the shared part only")
			assert.Equal(t, []string{"rate_limited@api", "rate_limited@api"}, refused, "a refusal names the pool")
			v := s.Decide(context.Background(), apiRequest("bob"))
			require.NotNil(t, v.Blocked)
			assert.Equal(t, limiter.Key{Pool: "api"}, v.Blocked.Bucket.Key, "never a part's key")
			assert.Equal(t, int64(3), partLevel(t, store, limiter.Key{Pool: "api", Client: part.Key}, part.Limit), "the reserved part is whole")

			got, _ = admitN(t, s, "acme", 5)
			assert.Equal(t, 3, got, "acme spends its share while the shared part is empty")
		})
	}
}

// TestReservedOwnerFirst: an owner spends its share first, then the shared
// part.
func TestReservedOwnerFirst(t *testing.T) {
	for name, newStore := range storeKinds {
		t.Run(name, func(t *testing.T) {
			clk := fakeclock.New(time.Date(2026, 12, 6, 12, 0, 0, 0, time.UTC))
			store := newStore(t, clk)
			s, _ := newReserveService(t, reserveNever, store, clk, nil)
			got, _ := admitN(t, s, "acme", 12)
			assert.Equal(t, 10, got, "the whole pool: its share, then the shared part")
			got, _ = admitN(t, s, "bob", 2)
			assert.Zero(t, got)
		})
	}
}

// TestReservedLendIdle: others borrow the lent part of an idle owner's
// share once the shared part is empty, never its kept part; the owner
// still gets the kept part.
func TestReservedLendIdle(t *testing.T) {
	for name, newStore := range storeKinds {
		t.Run(name, func(t *testing.T) {
			clk := fakeclock.New(time.Date(2026, 12, 6, 12, 0, 0, 0, time.UTC))
			store := newStore(t, clk)
			reg := prometheus.NewRegistry()
			s, set := newReserveService(t, reserveIdle, store, clk, reg)
			r := set.Pools["api"].Reserved[0]

			got, refused := admitN(t, s, "bob", 10)
			assert.Equal(t, 8, got, "bob: 6 shared, then 2 borrowed")
			assert.Len(t, refused, 2)
			for _, why := range refused {
				assert.Equal(t, "rate_limited@api", why)
			}
			assert.Equal(t, int64(2), partLevel(t, store, limiter.Key{Pool: "api", Client: r.Kept.Key}, r.Kept.Limit), "the kept part is never lent")
			assert.Zero(t, partLevel(t, store, limiter.Key{Pool: "api", Client: r.Lent.Key}, r.Lent.Limit))

			got, _ = admitN(t, s, "acme", 4)
			assert.Equal(t, 2, got, "acme gets its kept part")
			// bob's 2 borrowed calls and 2 refusals each tried the lent
			// part once after the shared part; acme's calls fell back from
			// lent to kept (2 granted) and on to shared (2 refused) ...
			assert.Positive(t, testutil.ToFloat64(mustCounter(t, reg, "tollgate_authz_reserved_fallbacks_total", "api")))
		})
	}
}

// TestReservedActiveOwnerLendsNothing: an owner that keeps its share busy
// leaves nothing to borrow: it drains the lent part first.
func TestReservedActiveOwnerLendsNothing(t *testing.T) {
	for name, newStore := range storeKinds {
		t.Run(name, func(t *testing.T) {
			clk := fakeclock.New(time.Date(2026, 12, 6, 12, 0, 0, 0, time.UTC))
			store := newStore(t, clk)
			s, _ := newReserveService(t, reserveIdle, store, clk, nil)
			got, _ := admitN(t, s, "acme", 2)
			require.Equal(t, 2, got)
			got, _ = admitN(t, s, "bob", 10)
			assert.Equal(t, 6, got, "only the shared part: acme spent what it would have lent")
			got, _ = admitN(t, s, "acme", 4)
			assert.Equal(t, 2, got, "acme's kept part")
		})
	}
}

// TestDedicatedPool: a client with a dedicated pool never touches the
// shared one, and no one else touches the dedicated one.
func TestDedicatedPool(t *testing.T) {
	for name, newStore := range storeKinds {
		t.Run(name, func(t *testing.T) {
			clk := fakeclock.New(time.Date(2026, 12, 6, 12, 0, 0, 0, time.UTC))
			store := newStore(t, clk)
			s, set := newReserveService(t, reserveDedicated, store, clk, nil)
			got, refused := admitN(t, s, "acme", 7)
			assert.Equal(t, 5, got)
			assert.Equal(t, []string{"rate_limited@api-acme", "rate_limited@api-acme"}, refused)
			assert.Equal(t, int64(10), partLevel(t, store, limiter.Key{Pool: "api"}, set.Pools["api"].Limit), "acme never touched api")
			got, _ = admitN(t, s, "bob", 12)
			assert.Equal(t, 10, got)
			assert.Zero(t, partLevel(t, store, limiter.Key{Pool: "api-acme"}, set.Pools["api-acme"].Limit))
		})
	}
}

// tokenPolicy is a token pool split by %s, for calls that settle.
const tokenPolicy = `
defaults:
  unknown_client: deny
pools:
  gpt:
    unit: token
    capacity: 100000
    refill: 1000/d
%s
models:
  "gpt-4o*": {input: "2.50/1M", output: "10/1M"}
routes:
  openai:
    host: api.openai.com
    path_prefix: /v1/
    provider: openai
    pools: [gpt]
    class: immediate
tiers:
  team: {priority: 20, max_concurrent: 10}
clients:
  acme: {tier: team}
`

// TestReservedRefundsItsPart: settling a call charged to a reserved part
// gives the units it did not use back to that part (settlement refunds by
// pool name, whichever bucket of the pool the store recorded), in each
// mode and on both stores.
func TestReservedRefundsItsPart(t *testing.T) {
	modes := map[string]string{
		"never":     "    reserved:\n      - {client: acme, share: 30%}",
		"idle":      "    reserved:\n      - {tier: team, share: 30%, lend: idle}",
		"dedicated": "  gpt-acme: {unit: token, capacity: 50000, refill: 500/d, dedicated: {client: acme, instead_of: gpt}}",
	}
	for name, newStore := range storeKinds {
		for mode, pool := range modes {
			for _, restart := range []bool{false, true} {
				t.Run(name+"/"+mode+map[bool]string{false: "", true: "/after a restart"}[restart], func(t *testing.T) {
					clk := fakeclock.New(time.Date(2026, 12, 6, 12, 0, 0, 0, time.UTC))
					store := newStore(t, clk)
					set, err := policy.Compile(policy.Source{Name: "reserve.yaml", Data: []byte(fmt.Sprintf(tokenPolicy, pool))})
					require.NoError(t, err)
					newSvc := func() *admission.Service {
						s, err := admission.New(admission.Config{Settlement: admission.SettleDeferred}, admission.Deps{
							Policies: admission.StaticPolicy{Set: set}, Store: store, Registerer: prometheus.NewRegistry(), Clock: clk})
						require.NoError(t, err)
						t.Cleanup(func() { require.NoError(t, s.Close()) })
						return s
					}
					s := newSvc()

					key, lim := limiter.Key{Pool: "gpt-acme"}, policy.Limit{}
					if p := set.Pools["gpt-acme"]; p != nil {
						lim = p.Limit
					} else {
						r := set.Pools["gpt"].Reserved[0]
						part := r.Kept
						if r.Lent != nil {
							part = *r.Lent // an owner spends its lent part first
						}
						key, lim = limiter.Key{Pool: "gpt", Client: part.Key}, part.Limit
					}
					shared := set.Pools["gpt"].SharedLimit()
					full := partLevel(t, store, key, lim)
					v := s.Decide(context.Background(), chatRequest(`{"model":"gpt-4o","max_tokens":500,"messages":[{"role":"user","content":"hi"}]}`))
					require.True(t, v.Allowed, v.Reason)
					charged := v.Estimate.Pools[0].Units
					require.Equal(t, full-charged, partLevel(t, store, key, lim), "charged to acme's own bucket")
					require.Equal(t, shared.Capacity, partLevel(t, store, limiter.Key{Pool: "gpt"}, shared), "the shared part untouched")

					settler := s
					if restart { // a new sidecar knows the call by its route alone
						settler = newSvc()
					}
					c := settler.Follow(v.Reservation, v.Route, http.MethodPost)
					c.ResponseHeaders(context.Background(), http.StatusOK, map[string]string{"content-type": "application/json"})
					c.ResponseBody(chatResponse, true)
					require.Equal(t, admission.SettledActual, c.End(context.Background()))
					assert.Equal(t, full-52, partLevel(t, store, key, lim), "the part got back all but the 52 tokens used")
					assert.Equal(t, shared.Capacity, partLevel(t, store, limiter.Key{Pool: "gpt"}, shared))
				})
			}
		}
	}
}

// TestReservedSummary: tollgate policy shows the split.
func TestReservedSummary(t *testing.T) {
	set, err := policy.Compile(policy.Source{Name: "reserve.yaml", Data: []byte(reservePolicy(reserveIdle))})
	require.NoError(t, err)
	var out strings.Builder
	require.NoError(t, set.Summary().WriteText(&out))
	assert.Contains(t, out.String(), "tier enterprise (lent while idle)")
	assert.Equal(t, []policy.SummaryPart{
		{Part: "shared", Capacity: 6, Refill: "6/d"},
		{Part: "tier enterprise (never lent)", Capacity: 2, Refill: "2/d"},
		{Part: "tier enterprise (lent while idle)", Capacity: 2, Refill: "2/d"},
	}, set.Summary().Pools[0].Split)
}

func mustCounter(t *testing.T, reg *prometheus.Registry, name, label string) prometheus.Collector {
	t.Helper()
	mfs, err := reg.Gather()
	require.NoError(t, err)
	for _, mf := range mfs {
		if mf.GetName() != name {
			continue
		}
		for _, m := range mf.GetMetric() {
			for _, lp := range m.GetLabel() {
				if lp.GetValue() == label {
					return prometheus.NewCounterFunc(prometheus.CounterOpts{Name: "x", Help: "x"}, func() float64 { return m.GetCounter().GetValue() })
				}
			}
		}
	}
	t.Fatalf("no %s{%s}", name, label)
	return nil
}

// countingStore counts the Reserve calls made of the store it wraps, and
// the keys they charge.
type countingStore struct {
	admission.Store
	mu    sync.Mutex
	calls int
	keys  map[limiter.Key]bool
}

func (c *countingStore) Reserve(ctx context.Context, req limiter.Request) (limiter.Decision, error) {
	c.mu.Lock()
	c.calls++
	if c.keys == nil {
		c.keys = map[limiter.Key]bool{}
	}
	for _, t := range req.Takes {
		c.keys[t.Key] = true
	}
	c.mu.Unlock()
	return c.Store.Reserve(ctx, req)
}

func (c *countingStore) count() int {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.calls
}

// TestReservedStoreCalls: a pool without reservations costs one store call
// a decision and touches only its own key, as before; a split pool costs
// one more call per fallback, and only then.
func TestReservedStoreCalls(t *testing.T) {
	tests := map[string]struct {
		pool  string
		calls []struct {
			client string
			want   int // store calls
		}
	}{
		"no reservations": {pool: "", calls: []struct {
			client string
			want   int
		}{{"bob", 1}, {"acme", 1}}},
		"never lent": {pool: reserveNever, calls: []struct {
			client string
			want   int
		}{{"bob", 1}, {"acme", 1}, {"acme", 1}, {"acme", 1}, {"acme", 2}}}, // acme's 4th falls back to shared
		"lend idle": {pool: reserveIdle, calls: []struct {
			client string
			want   int
		}{{"acme", 1}, {"acme", 1}, {"acme", 2}, {"acme", 2}, {"acme", 3}}}, // lent, then kept, then shared
	}
	for name, tc := range tests {
		t.Run(name, func(t *testing.T) {
			clk := fakeclock.New(time.Date(2026, 12, 6, 12, 0, 0, 0, time.UTC))
			cs := &countingStore{Store: storeKinds["memory"](t, clk)}
			s, _ := newReserveService(t, tc.pool, cs, clk, nil)
			for i, c := range tc.calls {
				before := cs.count()
				v := s.Decide(context.Background(), apiRequest(c.client))
				require.True(t, v.Allowed, "call %d: %s", i, v.Reason)
				assert.Equal(t, c.want, cs.count()-before, "call %d of %s", i, c.client)
			}
			if tc.pool == "" {
				assert.Equal(t, map[limiter.Key]bool{{Pool: "api"}: true}, cs.keys, "the pool's own key, nothing else")
			}
		})
	}
}

// TestReservedHeldCall: a call that may wait, refused by every
// alternative, waits in the line of the one that refills first, and its
// tries on waking run the alternatives too.
func TestReservedHeldCall(t *testing.T) {
	clk := fakeclock.New(time.Date(2026, 12, 6, 12, 0, 0, 0, time.UTC))
	store := storeKinds["memory"](t, clk)
	y := strings.Replace(reservePolicy(reserveIdle), "class: immediate", "class: normal", 1)
	y = strings.Replace(y, "refill: 10/d", "refill: 10/h", 1) + "queue:\n  classes:\n    normal: {max_wait: 1h}\n"
	set, err := policy.Compile(policy.Source{Name: "reserve.yaml", Data: []byte(y)})
	require.NoError(t, err)
	s, err := admission.New(admission.Config{Settlement: admission.SettleDeferred}, admission.Deps{
		Policies: admission.StaticPolicy{Set: set}, Store: store, Registerer: prometheus.NewRegistry(), Clock: clk})
	require.NoError(t, err)
	t.Cleanup(func() { require.NoError(t, s.Close()) })

	got, _ := admitN(t, s, "bob", 8) // 6 shared, 2 borrowed
	require.Equal(t, 8, got)

	// bob's next call waits: the shared part (6/h) refills before the
	// lent one (2/h), so it waits in the shared part's line.
	done := make(chan admission.Verdict, 1)
	go func() { done <- s.Decide(context.Background(), apiRequest("bob")) }()
	require.Eventually(t, func() bool { return s.QueueStatus().Total == 1 }, 5*time.Second, time.Millisecond)
	st := s.QueueStatus()
	require.Len(t, st.Lines, 1)
	assert.Equal(t, "pool api", st.Lines[0].Queue)
	clk.Advance(10 * time.Minute)
	select {
	case v := <-done:
		assert.True(t, v.Allowed, v.Reason)
		assert.Equal(t, 10*time.Minute, v.QueueWait)
	case <-time.After(10 * time.Second):
		t.Fatal("the held call was never admitted")
	}
	// acme still has its kept part.
	got, _ = admitN(t, s, "acme", 1)
	assert.Equal(t, 1, got)
}

// TestReservedStatusLevels: the status page shows a split pool as the sum
// of its parts, each read with its own shape (reading the pool's own key
// with the whole pool's shape would reshape the shared part).
func TestReservedStatusLevels(t *testing.T) {
	for name, newStore := range storeKinds {
		t.Run(name, func(t *testing.T) {
			clk := fakeclock.New(time.Date(2026, 12, 6, 12, 0, 0, 0, time.UTC))
			store := newStore(t, clk)
			s, set := newReserveService(t, reserveIdle, store, clk, nil)
			got, _ := admitN(t, s, "bob", 7) // 6 shared, 1 borrowed
			require.Equal(t, 7, got)
			snap := s.Status(context.Background())
			require.Empty(t, snap.PoolsError)
			require.Len(t, snap.Pools, 1)
			assert.Equal(t, int64(10), snap.Pools[0].Capacity)
			assert.Equal(t, int64(3), snap.Pools[0].Remaining)
			sh := set.Pools["api"].SharedLimit()
			assert.Zero(t, partLevel(t, store, limiter.Key{Pool: "api"}, sh), "the shared part kept its shape")
			got, _ = admitN(t, s, "bob", 2)
			assert.Equal(t, 1, got, "one lent unit left")
		})
	}
}

// TestReservedUpstreamPause: an upstream 429 with Retry-After pauses every
// part of a split pool: the provider refuses the whole quota.
func TestReservedUpstreamPause(t *testing.T) {
	for name, newStore := range storeKinds {
		t.Run(name, func(t *testing.T) {
			clk := fakeclock.New(time.Date(2026, 12, 6, 12, 0, 0, 0, time.UTC))
			store := newStore(t, clk)
			set, err := policy.Compile(policy.Source{Name: "reserve.yaml", Data: []byte(fmt.Sprintf(tokenPolicy,
				"    reserved:\n      - {tier: team, share: 30%, lend: idle}"))})
			require.NoError(t, err)
			s, err := admission.New(admission.Config{Settlement: admission.SettleDeferred}, admission.Deps{
				Policies: admission.StaticPolicy{Set: set}, Store: store, Registerer: prometheus.NewRegistry(), Clock: clk})
			require.NoError(t, err)
			t.Cleanup(func() { require.NoError(t, s.Close()) })
			v := s.Decide(context.Background(), chatRequest(`{"model":"gpt-4o","max_tokens":10,"messages":[{"role":"user","content":"hi"}]}`))
			require.True(t, v.Allowed, v.Reason)
			c := s.Follow(v.Reservation, v.Route, http.MethodPost)
			c.ResponseHeaders(context.Background(), http.StatusTooManyRequests, map[string]string{"content-type": "application/json", "retry-after": "30"})
			c.ResponseBody([]byte(`{"error":{"code":"rate_limit_exceeded"}}`), true)
			require.Equal(t, admission.SettledReleased, c.End(context.Background()))
			p := set.Pools["gpt"]
			r := p.Reserved[0]
			for _, part := range []struct {
				key limiter.Key
				lim policy.Limit
			}{{limiter.Key{Pool: "gpt"}, p.SharedLimit()}, {limiter.Key{Pool: "gpt", Client: r.Kept.Key}, r.Kept.Limit}, {limiter.Key{Pool: "gpt", Client: r.Lent.Key}, r.Lent.Limit}} {
				assert.Zero(t, partLevel(t, store, part.key, part.lim), "%v is paused", part.key)
			}
			v = s.Decide(context.Background(), chatRequest(`{"model":"gpt-4o","max_tokens":10,"messages":[{"role":"user","content":"hi"}]}`))
			assert.False(t, v.Allowed)
			assert.Equal(t, "gpt", v.Pool)
		})
	}
}

// BenchmarkDecideReserved: a decision on a plain pool, on a split pool
// whose first bucket has room (one store call, like a plain pool), and on
// a split pool whose owner's share is empty (two store calls: the
// fallback's price), on the memory store under a still clock.
func BenchmarkDecideReserved(b *testing.B) {
	for name, tc := range map[string]struct {
		pool, client string
		drain        bool
	}{
		"plain":             {"", "bob", false},
		"split/first":       {reserveNever, "bob", false},
		"split/fallen back": {reserveNever, "acme", true},
	} {
		b.Run(name, func(b *testing.B) {
			clk := fakeclock.New(time.Date(2026, 12, 6, 12, 0, 0, 0, time.UTC))
			store, err := memstore.New(memstore.Config{Clock: clk})
			require.NoError(b, err)
			defer store.Close()
			y := strings.Replace(reservePolicy(tc.pool), "capacity: 10\n    refill: 10/d", "capacity: 1000000000\n    refill: 1000000000/s", 1)
			set, err := policy.Compile(policy.Source{Name: "bench.yaml", Data: []byte(y)})
			require.NoError(b, err)
			if tc.drain {
				part := set.Pools["api"].Reserved[0].Kept
				_, err := store.Reserve(context.Background(), limiter.Request{Takes: []limiter.Take{
					{Key: limiter.Key{Pool: "api", Client: part.Key}, Limit: limiter.Limit(part.Limit), Cost: part.Limit.Capacity}}})
				require.NoError(b, err)
			}
			s, err := admission.New(admission.Config{Settlement: admission.SettleImmediate}, admission.Deps{
				Policies: admission.StaticPolicy{Set: set}, Store: store, Registerer: prometheus.NewRegistry(), Clock: clk})
			require.NoError(b, err)
			defer s.Close()
			req := apiRequest(tc.client)
			b.ReportAllocs()
			for b.Loop() {
				if v := s.Decide(context.Background(), req); !v.Allowed {
					b.Fatal(v.Reason)
				}
			}
		})
	}
}

// TestReservedOwnerNeverQueuesBehindBorrowers: a borrower that must wait
// waits in the shared part's line even when the lent part would refill
// first, so that the owner, whose first bucket is its lent part, never
// finds borrowers queued in its own line: it goes straight to its kept
// part.
func TestReservedOwnerNeverQueuesBehindBorrowers(t *testing.T) {
	clk := fakeclock.New(time.Date(2026, 12, 6, 12, 0, 0, 0, time.UTC))
	store := storeKinds["memory"](t, clk)
	// 10/h split 80% (keep 50%): kept 4 (4/h), lent 4 (4/h), shared 2 (2/h):
	// the lent part refills every 15 min, the shared part every 30.
	y := strings.Replace(reservePolicy(strings.Replace(reserveIdle, "share: 40%", "share: 80%", 1)), "class: immediate", "class: normal", 1)
	y = strings.Replace(y, "refill: 10/d", "refill: 10/h", 1) + "queue:\n  classes:\n    normal: {max_wait: 1h}\n"
	set, err := policy.Compile(policy.Source{Name: "reserve.yaml", Data: []byte(y)})
	require.NoError(t, err)
	s, err := admission.New(admission.Config{Settlement: admission.SettleDeferred}, admission.Deps{
		Policies: admission.StaticPolicy{Set: set}, Store: store, Registerer: prometheus.NewRegistry(), Clock: clk})
	require.NoError(t, err)
	t.Cleanup(func() { require.NoError(t, s.Close()) })

	got, _ := admitN(t, s, "bob", 6) // 2 shared, 4 borrowed
	require.Equal(t, 6, got)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	done := make(chan admission.Verdict, 1)
	go func() { done <- s.Decide(ctx, apiRequest("bob")) }()
	require.Eventually(t, func() bool { return s.QueueStatus().Total == 1 }, 5*time.Second, time.Millisecond)
	assert.Equal(t, "pool api", s.QueueStatus().Lines[0].Queue, "the borrower waits in the shared part's line")

	v := s.Decide(context.Background(), apiRequest("acme"))
	assert.True(t, v.Allowed, v.Reason)
	assert.Zero(t, v.QueueWait, "the owner went straight to its kept part")
	cancel()
	<-done
}

// TestReservedRefundWakesBorrower: a borrower waiting in the shared part's
// line is woken when units come back to a lent part (an owner's call
// settled for less than it reserved), and borrows them, with no clock
// moving.
func TestReservedRefundWakesBorrower(t *testing.T) {
	clk := fakeclock.New(time.Date(2026, 12, 6, 12, 0, 0, 0, time.UTC))
	store := storeKinds["memory"](t, clk)
	y := fmt.Sprintf(tokenPolicy, "    reserved:\n      - {tier: team, share: 30%, lend: idle}")
	y = strings.Replace(y, "refill: 1000/d", "refill: 1000/min", 1)
	y = strings.Replace(y, "class: immediate", "class: normal", 1)
	y = strings.Replace(y, "  acme: {tier: team}", "  acme: {tier: team}\n  zed: {tier: other}", 1)
	y = strings.Replace(y, "  team: {priority: 20, max_concurrent: 10}", "  team: {priority: 20, max_concurrent: 10}\n  other: {priority: 10, max_concurrent: 10}", 1)
	y += "queue:\n  classes:\n    normal: {max_wait: 1h}\n"
	set, err := policy.Compile(policy.Source{Name: "reserve.yaml", Data: []byte(y)})
	require.NoError(t, err)
	s, err := admission.New(admission.Config{Settlement: admission.SettleDeferred}, admission.Deps{
		Policies: admission.StaticPolicy{Set: set}, Store: store, Registerer: prometheus.NewRegistry(), Clock: clk})
	require.NoError(t, err)
	t.Cleanup(func() { require.NoError(t, s.Close()) })
	body := `{"model":"gpt-4o","max_tokens":500,"messages":[{"role":"user","content":"hi"}]}`

	owner := s.Decide(context.Background(), chatRequest(body)) // charged to acme's lent part
	require.True(t, owner.Allowed, owner.Reason)
	p := set.Pools["gpt"]
	lent := p.Reserved[0].Lent
	drain := func(k limiter.Key, l policy.Limit) {
		n := partLevel(t, store, k, l)
		_, err := store.Reserve(context.Background(), limiter.Request{Takes: []limiter.Take{{Key: k, Limit: limiter.Limit(l), Cost: n}}})
		require.NoError(t, err)
		require.Zero(t, partLevel(t, store, k, l))
	}
	drain(limiter.Key{Pool: "gpt", Client: lent.Key}, lent.Limit)
	drain(limiter.Key{Pool: "gpt"}, p.SharedLimit())

	done := make(chan admission.Verdict, 1)
	go func() {
		// a smaller call than the owner's: the owner's refund covers it
		r := chatRequest(`{"model":"gpt-4o","max_tokens":100,"messages":[{"role":"user","content":"hi"}]}`)
		r.ID, r.Client = "zed-1", "zed"
		done <- s.Decide(context.Background(), r)
	}()
	require.Eventually(t, func() bool { return s.QueueStatus().Total == 1 }, 5*time.Second, time.Millisecond)
	require.Equal(t, "pool gpt", s.QueueStatus().Lines[0].Queue)

	c := s.Follow(owner.Reservation, owner.Route, http.MethodPost)
	c.ResponseHeaders(context.Background(), http.StatusOK, map[string]string{"content-type": "application/json"})
	c.ResponseBody(chatResponse, true) // 52 tokens used: the rest back to the lent part
	require.Equal(t, admission.SettledActual, c.End(context.Background()))
	select {
	case v := <-done:
		assert.True(t, v.Allowed, v.Reason)
	case <-time.After(5 * time.Second):
		t.Fatal("the borrower was not woken by the refund")
	}
}
