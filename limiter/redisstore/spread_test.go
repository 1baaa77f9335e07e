package redisstore_test

import (
	"context"
	"fmt"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/tollgate/tollgate/internal/redistest"
	"github.com/tollgate/tollgate/limiter"
	"github.com/tollgate/tollgate/limiter/redisstore"
	"github.com/tollgate/tollgate/limiter/storetest"
	"github.com/tollgate/tollgate/policy"
)

const spreadPeriod = "2026-01"

// spreadStore is a spread store on c whose tenants are the owners'
// names up to a "/" (so "acme/ops" is acme's).
func spreadStore(t *testing.T, c redis.UniversalClient, prefix string) *redisstore.Store {
	t.Helper()
	s, err := redisstore.New(c, redisstore.Config{Prefix: prefix, Spread: true, Tenant: func(o string) string {
		tenant, _, _ := strings.Cut(o, "/")
		return tenant
	}})
	require.NoError(t, err)
	return s
}

var (
	sharedLimit = limiter.Limit{Capacity: 10, Refill: 1}
	ownLimit    = limiter.Limit{Capacity: 5, Refill: 1}
)

// call is an admission of client on the shared pool "gpt" (cost units)
// and the client's own bucket of it, holding cost nano-dollars against
// the client's budget of limit and its parent's, with a slot of at most 2.
func call(id, client string, cost int64, limit policy.Money) limiter.Request {
	parent, _, _ := strings.Cut(client, "/")
	return limiter.Request{Now: storetest.Epoch, Takes: []limiter.Take{
		{Key: limiter.Key{Pool: "gpt"}, Limit: sharedLimit, Cost: cost},
		{Key: limiter.Key{Pool: "gpt", Client: client}, Limit: ownLimit, Cost: 1},
	}, Hold: &limiter.Hold{ID: id, TTL: time.Minute, Period: spreadPeriod, Cost: policy.Money(cost),
		Budgets: []limiter.Budget{{Owner: client, Limit: limit}, {Owner: parent, Limit: limiter.Unlimited}},
		Slot:    &limiter.Slot{Client: client, Max: 2}}}
}

// poolLeft is what the shared pool "gpt" holds at t (asked with a cost of
// nothing, which changes nothing).
func poolLeft(t *testing.T, s *redisstore.Store, at time.Time) int64 {
	t.Helper()
	d, err := s.Reserve(context.Background(), limiter.Request{Now: at, Takes: []limiter.Take{{Key: limiter.Key{Pool: "gpt"}, Limit: sharedLimit}}})
	require.NoError(t, err)
	return d.Buckets[0].Remaining
}

// reserved is what the client's budget holds in flight and has spent.
func budgetOf(t *testing.T, s *redisstore.Store, client string) (reserved, spent policy.Money, inFlight int64) {
	t.Helper()
	u, err := s.Usage(context.Background(), spreadPeriod, []limiter.Budget{{Owner: client, Limit: limiter.Unlimited}}, storetest.Epoch)
	require.NoError(t, err)
	return u.Budgets[0].Reserved, u.Budgets[0].Spent, u.InFlight
}

// keysPerMaster counts the keys under prefix on each master of c.
func keysPerMaster(t *testing.T, c *redis.ClusterClient, prefix string) map[string]int {
	t.Helper()
	var mu sync.Mutex
	out := map[string]int{}
	require.NoError(t, c.ForEachMaster(context.Background(), func(ctx context.Context, m *redis.Client) error {
		n := 0
		iter := m.Scan(ctx, 0, "{"+prefix+"*", 1000).Iterator()
		for iter.Next(ctx) {
			n++
		}
		mu.Lock()
		out[m.Options().Addr] = n
		mu.Unlock()
		return iter.Err()
	}))
	return out
}

// TestSpreadOverMasters: 300 clients of 100 tenants, each admitted on a
// shared pool and its own bucket with a budget chain and a slot, half of
// them settled: spread, their keys are on all three masters, none with
// less than a sixth of them; with one tag, all on one.
func TestSpreadOverMasters(t *testing.T) {
	ctx := context.Background()
	for _, spread := range []bool{true, false} {
		t.Run(map[bool]string{true: "spread", false: "one tag"}[spread], func(t *testing.T) {
			c, prefix := rc.Client(t), redistest.Prefix(t)
			s := clusterStore(t, c, prefix, false)
			if spread {
				s = spreadStore(t, c, prefix)
			}
			big := limiter.Limit{Capacity: 1000, Refill: 1}
			for i := range 300 {
				client := fmt.Sprintf("tenant-%d/client-%d", i%100, i)
				req := call(fmt.Sprintf("r%d", i), client, 1, limiter.Unlimited)
				req.Takes[0].Limit = big
				d, err := s.Reserve(ctx, req)
				require.NoError(t, err)
				require.True(t, d.Allowed, "%s: %s", client, d.Reason)
				if i%2 == 0 {
					_, err := s.Finish(ctx, limiter.Ending{ID: req.Hold.ID, Outcome: limiter.OutcomeSettled, Actual: 1,
						Used: []limiter.PoolUse{{Pool: "gpt", Units: 1}}, Now: storetest.Epoch})
					require.NoError(t, err)
				}
			}
			per := keysPerMaster(t, c, prefix)
			total, holding := 0, 0
			for _, n := range per {
				total += n
				if n > 0 {
					holding++
				}
			}
			t.Logf("keys per master: %v", per)
			if !spread {
				assert.Equal(t, 1, holding, "one tag: one slot, one master")
				return
			}
			require.Len(t, per, 3)
			for addr, n := range per {
				assert.GreaterOrEqual(t, n, total/6, "master %s holds its share of %d keys", addr, total)
			}
			n, err := s.Expire(ctx, storetest.Epoch.Add(2*time.Minute), 1000)
			require.NoError(t, err)
			assert.Equal(t, 150, n, "the sweep finds every tenant's lapsed holds")
		})
	}
}

// TestSpreadSteps: an admission across slots — the shared pool's step,
// then the tenant's — in each way it can end, and a process that dies
// between steps.
func TestSpreadSteps(t *testing.T) {
	ctx := context.Background()
	fresh := func(t *testing.T) *redisstore.Store { return spreadStore(t, rc.Client(t), redistest.Prefix(t)) }

	t.Run("both say yes: the pools' charges are refunded at the finish", func(t *testing.T) {
		s := fresh(t)
		d, err := s.Reserve(ctx, call("a", "acme/ops", 4, 100))
		require.NoError(t, err)
		require.True(t, d.Allowed)
		assert.Equal(t, []int64{6, 4}, []int64{d.Buckets[0].Remaining, d.Buckets[1].Remaining})
		assert.Equal(t, int64(6), poolLeft(t, s, storetest.Epoch))
		st, err := s.Finish(ctx, limiter.Ending{ID: "a", Outcome: limiter.OutcomeSettled, Actual: 3,
			Used: []limiter.PoolUse{{Pool: "gpt", Units: 1}}, Now: storetest.Epoch})
		require.NoError(t, err)
		assert.Equal(t, policy.Money(3), st.Spent)
		assert.Equal(t, int64(9), poolLeft(t, s, storetest.Epoch), "3 of the 4 units come back")
		reserved, spent, inFlight := budgetOf(t, s, "acme/ops")
		assert.Equal(t, []int64{0, 3, 0}, []int64{int64(reserved), int64(spent), inFlight})
		st, err = s.Finish(ctx, limiter.Ending{ID: "a", Outcome: limiter.OutcomeSettled, Actual: 3,
			Used: []limiter.PoolUse{{Pool: "gpt", Units: 1}}, Now: storetest.Epoch})
		require.NoError(t, err)
		assert.True(t, st.Repeat)
		assert.Equal(t, int64(9), poolLeft(t, s, storetest.Epoch), "a repeated finish refunds nothing")
	})

	t.Run("masters that lost their scripts: the pipelined steps load them again", func(t *testing.T) {
		s := fresh(t)
		c := rc.Client(t)
		require.NoError(t, c.ForEachMaster(ctx, func(ctx context.Context, m *redis.Client) error { return m.ScriptFlush(ctx).Err() }))
		d, err := s.Reserve(ctx, call("s", "acme/ops", 4, 100))
		require.NoError(t, err)
		assert.True(t, d.Allowed)
		assert.Equal(t, int64(6), poolLeft(t, s, storetest.Epoch))
	})

	t.Run("the tenant says no: the pool gets its units back", func(t *testing.T) {
		s := fresh(t)
		d, err := s.Reserve(ctx, call("b", "acme/ops", 4, 3))
		require.NoError(t, err)
		assert.False(t, d.Allowed)
		assert.Equal(t, limiter.ReasonBudgetExceeded, d.Reason)
		assert.Equal(t, 0, d.BudgetBlocking)
		assert.Equal(t, int64(10), d.Buckets[0].Remaining, "reported as it is after the refund")
		assert.Equal(t, int64(10), poolLeft(t, s, storetest.Epoch))
		reserved, _, inFlight := budgetOf(t, s, "acme/ops")
		assert.Zero(t, reserved)
		assert.Zero(t, inFlight)
		_, err = s.Finish(ctx, limiter.Ending{ID: "b", Outcome: limiter.OutcomeReleased})
		assert.ErrorIs(t, err, limiter.ErrUnknownReservation)
	})

	t.Run("the pool says no: the tenant writes nothing, the reason is the pool's", func(t *testing.T) {
		s := fresh(t)
		req := call("c", "acme/ops", 11, 100)
		d, err := s.Reserve(ctx, req)
		require.NoError(t, err)
		assert.False(t, d.Allowed)
		assert.Equal(t, limiter.ReasonExceedsCapacity, d.Reason)
		assert.Equal(t, 0, d.Blocking)
		reserved, _, inFlight := budgetOf(t, s, "acme/ops")
		assert.Zero(t, reserved)
		assert.Zero(t, inFlight)
		d, err = s.Reserve(ctx, call("c", "acme/ops", 1, 100))
		require.NoError(t, err, "the id was never used")
		assert.True(t, d.Allowed)
	})

	t.Run("an id another tenant holds is a duplicate, and takes nothing", func(t *testing.T) {
		s := fresh(t)
		d, err := s.Reserve(ctx, call("d", "acme/ops", 2, 100))
		require.NoError(t, err)
		require.True(t, d.Allowed)
		_, err = s.Reserve(ctx, call("d", "beta/web", 2, 100))
		require.ErrorIs(t, err, limiter.ErrDuplicateReservation)
		_, err = s.Reserve(ctx, call("d", "acme/ops", 2, 100))
		require.ErrorIs(t, err, limiter.ErrDuplicateReservation, "nor the same tenant's")
		assert.Equal(t, int64(8), poolLeft(t, s, storetest.Epoch), "only the first took units")
	})

	t.Run("a crash between the pool and the tenant: the pool stays charged until it refills, nothing else is held", func(t *testing.T) {
		s := fresh(t)
		s.SetStepHook(func(step string) error {
			if step == "pool" {
				return redisstore.ErrCrash
			}
			return nil
		})
		_, err := s.Reserve(ctx, call("e", "acme/ops", 4, 100))
		require.ErrorIs(t, err, redisstore.ErrCrash)
		s.SetStepHook(nil)
		assert.Equal(t, int64(6), poolLeft(t, s, storetest.Epoch), "charged for a call that did not go")
		reserved, _, inFlight := budgetOf(t, s, "acme/ops")
		assert.Zero(t, reserved, "no spend held")
		assert.Zero(t, inFlight, "no slot held")
		_, err = s.Finish(ctx, limiter.Ending{ID: "e", Outcome: limiter.OutcomeReleased})
		assert.ErrorIs(t, err, limiter.ErrUnknownReservation, "the locator names a tenant that holds nothing")
		assert.Equal(t, int64(10), poolLeft(t, s, storetest.Epoch.Add(4*time.Second)), "refilled")
	})

	t.Run("a crash between the finish and the pools' refunds: settled, the pool's refund lost", func(t *testing.T) {
		s := fresh(t)
		d, err := s.Reserve(ctx, call("f", "acme/ops", 4, 100))
		require.NoError(t, err)
		require.True(t, d.Allowed)
		s.SetStepHook(func(step string) error {
			if step == "finish" {
				return redisstore.ErrCrash
			}
			return nil
		})
		end := limiter.Ending{ID: "f", Outcome: limiter.OutcomeSettled, Actual: 2, Used: []limiter.PoolUse{{Pool: "gpt", Units: 1}}, Now: storetest.Epoch}
		_, err = s.Finish(ctx, end)
		require.ErrorIs(t, err, redisstore.ErrCrash)
		s.SetStepHook(nil)
		reserved, spent, inFlight := budgetOf(t, s, "acme/ops")
		assert.Equal(t, []int64{0, 2, 0}, []int64{int64(reserved), int64(spent), inFlight}, "the tenant's step is whole")
		st, err := s.Finish(ctx, end)
		require.NoError(t, err)
		assert.True(t, st.Repeat, "sent again, it is a repeat")
		assert.Equal(t, int64(6), poolLeft(t, s, storetest.Epoch), "the refund was lost, never given twice")
	})
}

// TestSpreadMasterDown: the master of the tenant's slot dies between the
// pool's step and the tenant's — the admission fails as Redis unavailable,
// and the pool, on another master, gets its units back; once the master
// is back, the tenant holds nothing and admits again. With the pool's
// master down, an admission fails before the tenant holds anything.
func TestSpreadMasterDown(t *testing.T) {
	cl, err := redistest.StartCluster(3)
	require.NoError(t, err)
	t.Cleanup(func() { assert.NoError(t, cl.Close()) })
	c := cl.Client(t)
	ctx := context.Background()
	s := spreadStore(t, c, redistest.Prefix(t))
	masterOf := func(p string) string {
		m, err := c.MasterForKey(ctx, p+"x")
		require.NoError(t, err)
		return m.Options().Addr
	}
	poolAt := masterOf(s.PoolPrefix("gpt"))
	client := ""
	for i := 0; client == ""; i++ {
		if c := fmt.Sprintf("t%d/ops", i); masterOf(s.OwnerPrefix(c)) != poolAt {
			client = c
		}
	}
	var victim *redistest.Server
	for _, m := range cl.Masters {
		if m.Addr == masterOf(s.OwnerPrefix(client)) {
			victim = m
		}
	}
	require.NotNil(t, victim)
	s.SetStepHook(func(step string) error {
		if step == "pool" {
			return victim.Stop(false)
		}
		return nil
	})
	_, err = s.Reserve(ctx, call("g", client, 4, 100))
	require.Error(t, err)
	assert.True(t, redisstore.Unavailable(err), "%v", err)
	s.SetStepHook(nil)
	assert.Equal(t, int64(10), poolLeft(t, s, storetest.Epoch), "the pool got its units back")

	require.NoError(t, victim.Resume())
	require.Eventually(t, func() bool {
		_, err := s.Usage(ctx, spreadPeriod, []limiter.Budget{{Owner: client, Limit: limiter.Unlimited}}, storetest.Epoch)
		return err == nil
	}, 20*time.Second, 50*time.Millisecond, "the master is back in the cluster")
	reserved, _, inFlight := budgetOf(t, s, client)
	assert.Zero(t, reserved)
	assert.Zero(t, inFlight)
	d, err := s.Reserve(ctx, call("g2", client, 4, 100))
	require.NoError(t, err)
	assert.True(t, d.Allowed)
	assert.Equal(t, int64(6), d.Buckets[0].Remaining)
	assert.Zero(t, s.LostRefunds())

	// The pool's master down: the admission fails before anything is held.
	var poolMaster *redistest.Server
	for _, m := range cl.Masters {
		if m.Addr == poolAt {
			poolMaster = m
		}
	}
	require.NoError(t, poolMaster.Stop(false))
	_, err = s.Reserve(ctx, call("h", client, 1, 100))
	require.Error(t, err)
	assert.True(t, redisstore.Unavailable(err), "%v", err)
	require.NoError(t, poolMaster.Resume())
	require.Eventually(t, func() bool { return c.Ping(ctx).Err() == nil && poolLeftErr(s) == nil },
		20*time.Second, 50*time.Millisecond, "the pool's master is back in the cluster")
	reserved, _, inFlight = budgetOf(t, s, client)
	assert.Equal(t, policy.Money(4), reserved, "g2's hold alone")
	assert.Equal(t, int64(1), inFlight, "g2's slot alone")
}

// poolLeftErr is poolLeft's error alone, for waiting on a master.
func poolLeftErr(s *redisstore.Store) error {
	_, err := s.Reserve(context.Background(), limiter.Request{Now: storetest.Epoch, Takes: []limiter.Take{{Key: limiter.Key{Pool: "gpt"}, Limit: sharedLimit}}})
	return err
}

// TestSpreadRoundTrips counts the round trips of a spread store (scripts
// loaded): a held call is the locator (with the shared pools' steps, in
// one pipeline) and the tenant's script; a finish is the locator and one
// script, and one more when the pools get units back; a sweep with nothing
// lapsed reads the tenants and their first expiries, whatever their number;
// a lease or a refund over several slots is one pipeline.
func TestSpreadRoundTrips(t *testing.T) {
	ctx := context.Background()
	c := rc.Client(t)
	s := spreadStore(t, c, redistest.Prefix(t))
	require.NoError(t, s.Load(ctx))
	own := func(id string) limiter.Request {
		r := call(id, "acme/ops", 1, 100)
		r.Takes = r.Takes[1:]
		return r
	}
	end := func(id string) limiter.Ending {
		return limiter.Ending{ID: id, Outcome: limiter.OutcomeSettled, Actual: 1, Used: []limiter.PoolUse{{Pool: "gpt", Units: 0}}, Now: storetest.Epoch}
	}
	for _, id := range []string{"warm-1", "warm-2"} { // every master has every script, the tenant is registered
		_, err := s.Reserve(ctx, call(id, "acme/ops", 1, 100))
		require.NoError(t, err)
		_, err = s.Finish(ctx, end(id))
		require.NoError(t, err)
	}
	rt := &redisstore.RoundTrips{}
	c.AddHook(rt)
	count := func(f func()) int64 {
		before := rt.Count()
		f()
		return rt.Count() - before
	}
	tests := []struct {
		name string
		f    func()
		want int64
	}{
		{"tenant's keys alone", func() { _, err := s.Reserve(ctx, own("a")); require.NoError(t, err) }, 2},
		{"its finish", func() { _, err := s.Finish(ctx, end("a")); require.NoError(t, err) }, 2},
		{"with a shared pool", func() { _, err := s.Reserve(ctx, call("b", "acme/ops", 1, 100)); require.NoError(t, err) }, 2},
		{"its finish, the pool's unit back", func() { _, err := s.Finish(ctx, end("b")); require.NoError(t, err) }, 3},
		{"a sweep with nothing lapsed: the tenants, their first expiries", func() {
			n, err := s.Expire(ctx, storetest.Epoch, 100)
			require.NoError(t, err)
			require.Zero(t, n)
		}, 2},
		{"a lease of a shared pool and a client's bucket, two slots", func() {
			g, err := s.Lease(ctx, []limiter.LeaseAsk{
				{Key: limiter.Key{Pool: "gpt"}, Limit: sharedLimit, Want: 2, Need: 1},
				{Key: limiter.Key{Pool: "gpt", Client: "beta/web"}, Limit: ownLimit, Want: 2, Need: 1},
			}, storetest.Epoch)
			require.NoError(t, err)
			require.Len(t, g, 2)
			assert.Equal(t, []int64{2, 2}, []int64{g[0].Granted, g[1].Granted})
		}, 1},
		{"a refund of both, two slots", func() {
			_, err := s.Refund(ctx, []limiter.Refund{
				{Key: limiter.Key{Pool: "gpt"}, Limit: sharedLimit, Units: 2},
				{Key: limiter.Key{Pool: "gpt", Client: "beta/web"}, Limit: ownLimit, Units: 2},
			}, storetest.Epoch)
			require.NoError(t, err)
		}, 1},
		{"a shared pool alone, nothing held", func() {
			_, err := s.Reserve(ctx, limiter.Request{Now: storetest.Epoch, Takes: call("c", "x", 1, 1).Takes[:1]})
			require.NoError(t, err)
		}, 1},
	}
	for _, tc := range tests {
		assert.Equal(t, tc.want, count(tc.f), tc.name)
	}
}

// BenchmarkSpreadReserve is a held admission on a shared pool and a
// client's bucket, then its finish, on the three-master cluster: with one
// tag, and spread (locator, pool, tenant; locator, finish, refund).
func BenchmarkSpreadReserve(b *testing.B) {
	ctx := context.Background()
	for _, spread := range []bool{false, true} {
		b.Run(map[bool]string{false: "one tag", true: "spread"}[spread], func(b *testing.B) {
			c := rc.Client(b)
			cfg := redisstore.Config{Prefix: redistest.Prefix(b), Spread: spread}
			s, err := redisstore.New(c, cfg)
			require.NoError(b, err)
			require.NoError(b, s.Load(ctx))
			big := limiter.Limit{Capacity: 1_000_000_000, Refill: 1_000_000}
			b.ReportAllocs()
			for i := 0; b.Loop(); i++ {
				id := fmt.Sprintf("r%d", i)
				req := call(id, fmt.Sprintf("c%d", i%1000), 1, limiter.Unlimited)
				req.Takes[0].Limit, req.Takes[1].Limit = big, big
				req.Hold.Budgets = req.Hold.Budgets[:1]
				req.Hold.Slot.Max = 1_000_000
				if _, err := s.Reserve(ctx, req); err != nil {
					b.Fatal(err)
				}
				if _, err := s.Finish(ctx, limiter.Ending{ID: id, Outcome: limiter.OutcomeSettled, Actual: 1,
					Used: []limiter.PoolUse{{Pool: "gpt", Units: 0}}, Now: storetest.Epoch}); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}
