package cluster_test

import (
	"context"
	"fmt"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/tollgate/tollgate/cluster"
	"github.com/tollgate/tollgate/internal/redistest"
	"github.com/tollgate/tollgate/limiter"
	"github.com/tollgate/tollgate/limiter/redisstore"
	"github.com/tollgate/tollgate/policy"
)

// member is one Tollgate of a test fleet: its own Redis client, gossip on
// a loopback port, and registry.
type member struct {
	*cluster.Fleet
	reg    *prometheus.Registry
	calls  *redisstore.RoundTrips // this member's
	closed atomic.Bool
}

// sharedStore is a Redis store under prefix, on a client of its own.
func sharedStore(t *testing.T, prefix string) (*redisstore.Store, *redisstore.RoundTrips) {
	t.Helper()
	cc := redisstore.DefaultClientConfig()
	cc.Addrs = []string{redisSrv.Addr}
	// Generous timeouts: these tests judge the fleet's arithmetic, and a
	// race-instrumented run on a busy 2-core machine can starve a loopback
	// dial past the production 250 ms (slow_test.go judges timeouts).
	cc.DialTimeout, cc.ReadTimeout, cc.WriteTimeout = 5*time.Second, 5*time.Second, 5*time.Second
	c, err := redisstore.NewClient(cc)
	require.NoError(t, err)
	t.Cleanup(func() { _ = c.Close() })
	hook := &redisstore.RoundTrips{}
	c.AddHook(hook)
	st, err := redisstore.New(c, redisstore.Config{Prefix: prefix})
	require.NoError(t, err)
	return st, hook
}

// joinMember starts member name of the fleet under prefix, joining seeds.
func joinMember(t *testing.T, name, prefix string, tune func(*cluster.Config), seeds ...string) *member {
	t.Helper()
	shared, hook := sharedStore(t, prefix)
	cfg := cluster.DefaultConfig()
	if tune != nil {
		tune(&cfg)
	}
	reg := prometheus.NewRegistry()
	f, err := cluster.Join(nodeConfig(name, fleetKey, seeds...), cfg, shared, reg)
	require.NoError(t, err)
	m := &member{Fleet: f, reg: reg, calls: hook}
	t.Cleanup(func() { m.close(t) })
	return m
}

func (m *member) close(t *testing.T) {
	if m.closed.Swap(true) {
		return
	}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	assert.NoError(t, m.Close(ctx))
}

// startFleet starts n members under one prefix and waits until each sees
// all.
func startFleet(t *testing.T, n int, tune func(*cluster.Config)) ([]*member, string) {
	t.Helper()
	prefix := redistest.Prefix(t)
	var ms []*member
	for i := range n {
		var seeds []string
		if i > 0 {
			seeds = []string{ms[0].Node.Addr()}
		}
		ms = append(ms, joinMember(t, fmt.Sprintf("m%d", i), prefix, tune, seeds...))
	}
	waitLive(t, ms, n)
	return ms, prefix
}

func waitLive(t *testing.T, ms []*member, n int) {
	t.Helper()
	require.Eventually(t, func() bool {
		for _, m := range ms {
			if m.Node.Live() != n {
				return false
			}
		}
		return true
	}, 10*time.Second, 10*time.Millisecond, "members see %d live", n)
}

// tally counts a run's outcomes.
type tally struct {
	admitted, denied, errors atomic.Int64
	settleErrors             atomic.Int64
	spent                    atomic.Int64 // nano-dollars the admitted calls spent
	firstErr                 atomic.Value // the first error's message: a Value holds one type, and errors come in many
}

func (t *tally) fail(err error) {
	t.errors.Add(1)
	t.firstErr.CompareAndSwap(nil, err.Error())
}

// drive runs workers on m until ctx ends, each asking every `every` for
// what next builds; settle, when set, ends an admitted deferred hold.
func drive(ctx context.Context, wg *sync.WaitGroup, m *member, workers int, every time.Duration, next func(worker, i int) limiter.Request, settle func(context.Context, *member, limiter.Request, *tally), tl *tally) {
	for w := range workers {
		wg.Go(func() {
			tick := time.NewTicker(every)
			defer tick.Stop()
			for i := 0; ; i++ {
				select {
				case <-ctx.Done():
					return
				case <-tick.C:
				}
				req := next(w, i)
				cctx, cancel := context.WithTimeout(context.Background(), time.Second)
				d, err := m.Store.Reserve(cctx, req)
				cancel()
				switch {
				case err != nil:
					tl.fail(err)
				case d.Allowed:
					tl.admitted.Add(1)
					if settle != nil {
						settle(ctx, m, req, tl)
					} else if req.Hold != nil {
						tl.spent.Add(int64(req.Hold.Cost))
					}
				default:
					tl.denied.Add(1)
				}
			}
		})
	}
}

// paths sums a member's decisions by path (admitted and denied).
func (m *member) paths(t *testing.T) map[string]float64 {
	out := map[string]float64{}
	for _, p := range []string{"local", "lease", "shared", "outage", "slow"} {
		out[p] = decisions(t, m.reg, p, "")
	}
	return out
}

func fleetPaths(t *testing.T, ms []*member) (map[string]float64, float64) {
	sum, total := map[string]float64{}, 0.0
	for _, m := range ms {
		for p, v := range m.paths(t) {
			sum[p] += v
			total += v
		}
	}
	return sum, total
}

func commands(ms []*member) int64 {
	var n int64
	for _, m := range ms {
		n += m.calls.Count()
	}
	return n
}

// TestFleetOvershoot: three members drive one pool of R units a second,
// first at half of R, then at three times R, for 12 s in all. The fleet
// never admits more than the bucket's capacity and its refill over the
// run, plus one call per member; under the limit almost no decision waits
// on Redis.
func TestFleetOvershoot(t *testing.T) {
	const (
		capacity = 200
		refill   = 200 // R, units a second
	)
	ms, _ := startFleet(t, 3, nil)
	lim := limiter.Limit{Capacity: capacity, Refill: refill}
	gpt := limiter.Key{Pool: "gpt-fleet"}
	next := func(int, int) limiter.Request {
		return limiter.Request{Takes: []limiter.Take{{Key: gpt, Limit: lim, Cost: 1}}}
	}

	// Under the limit: 3 members × 1 worker × 33 a second ≈ R/2.
	var under tally
	start := time.Now()
	ctx, cancel := context.WithTimeout(context.Background(), 4*time.Second)
	var wg sync.WaitGroup
	for _, m := range ms {
		drive(ctx, &wg, m, 1, 30*time.Millisecond, next, nil, &under)
	}
	wg.Wait()
	cancel()
	underPaths, underTotal := fleetPaths(t, ms)
	underCmds := commands(ms)
	require.Zero(t, under.errors.Load(), "%v", under.firstErr.Load())
	assert.Zero(t, under.denied.Load(), "under the limit nothing is denied")
	underTrips := (underPaths["lease"] + underPaths["shared"]) / underTotal

	// Over the limit: 3 members × 2 workers × 500 a second = 15 R.
	var over tally
	overStart := time.Now()
	ctx, cancel = context.WithTimeout(context.Background(), 8*time.Second)
	for _, m := range ms {
		drive(ctx, &wg, m, 2, 2*time.Millisecond, next, nil, &over)
	}
	wg.Wait()
	cancel()
	elapsed := time.Since(start)
	require.Zero(t, over.errors.Load(), "%v", over.firstErr.Load())

	admitted := under.admitted.Load() + over.admitted.Load()
	rt := float64(refill) * elapsed.Seconds()
	bound := float64(capacity) + rt + float64(len(ms))
	paths, total := fleetPaths(t, ms)
	trips := (paths["lease"] + paths["shared"]) / total
	overTrips := (paths["lease"] + paths["shared"] - underPaths["lease"] - underPaths["shared"]) / (total - underTotal)
	t.Logf("overshoot: admitted %d over %.1f s: admitted/(R·t) = %.3f, admitted/(C+R·t) = %.3f (bound C+R·t+N = %.0f)",
		admitted, elapsed.Seconds(), float64(admitted)/rt, float64(admitted)/(float64(capacity)+rt), bound)
	t.Logf("over the limit: admitted %d in %.1f s = %.3f of R·t", over.admitted.Load(), time.Since(overStart).Seconds(),
		float64(over.admitted.Load())/(float64(refill)*time.Since(overStart).Seconds()))
	t.Logf("decisions needing a Redis round trip: %.2f%% under the limit (%.0f decisions), %.2f%% over it (%.0f), %.2f%% in all",
		100*underTrips, underTotal, 100*overTrips, total-underTotal, 100*trips)
	t.Logf("Redis commands per 1,000 decisions (sync loop included): %.0f under the limit, %.0f in all",
		1000*float64(underCmds)/underTotal, 1000*float64(commands(ms))/total)
	assert.LessOrEqual(t, float64(admitted), bound, "the fleet never admits more than the limit plus one call per member")
	assert.Greater(t, float64(admitted), 0.5*rt, "and it uses the quota it has")
	assert.Less(t, underTrips, 0.2, "under the limit, leases decide most calls")
}

// TestFleetRedisOutage: Redis stops mid-run and comes back. Decisions never
// stop; while it is away each member admits within its share; the spend of
// every admitted call is in Redis afterwards, exactly once.
func TestFleetRedisOutage(t *testing.T) {
	const (
		capacity = 300
		refill   = 300
		cost     = 1000 // nano-dollars a call, estimated
		actual   = 400  // what a deferred call settles at
	)
	ms, prefix := startFleet(t, 3, func(c *cluster.Config) { c.SyncEvery = 50 * time.Millisecond })
	lim := limiter.Limit{Capacity: capacity, Refill: refill}
	gpt := limiter.Key{Pool: "gpt-outage"}
	acme := limiter.Budget{Owner: "acme", Limit: 1000 * policy.NanosPerDollar}
	var seq atomic.Int64
	next := func(w, i int) limiter.Request {
		h := &limiter.Hold{Period: period, Cost: cost, Budgets: []limiter.Budget{acme}, Commit: true}
		if i%2 == 1 { // every other call is deferred, and settled below
			h.Commit, h.ID, h.TTL = false, fmt.Sprintf("call-%d", seq.Add(1)), time.Minute
			h.Slot = &limiter.Slot{Client: "acme", Max: 60}
		}
		return limiter.Request{Takes: []limiter.Take{{Key: gpt, Limit: lim, Cost: 1}}, Hold: h}
	}
	settle := func(_ context.Context, m *member, req limiter.Request, tl *tally) {
		if req.Hold.Commit {
			tl.spent.Add(cost)
			return
		}
		ctx, cancel := context.WithTimeout(context.Background(), time.Second)
		defer cancel()
		if _, err := m.Store.Settle(ctx, req.Hold.ID, actual); err != nil {
			tl.settleErrors.Add(1)
			tl.firstErr.CompareAndSwap(nil, err.Error())
			return
		}
		tl.spent.Add(actual)
	}

	var tl tally
	ctx, cancel := context.WithCancel(context.Background())
	var wg sync.WaitGroup
	for _, m := range ms {
		drive(ctx, &wg, m, 2, 3*time.Millisecond, next, settle, &tl)
	}
	time.Sleep(3 * time.Second) // the fleet at work on leases and slices

	before := outageAdmitted(t, ms)
	down := time.Now()
	require.NoError(t, redisSrv.Stop(true))
	require.Eventually(t, func() bool { return allMode(ms, "outage") }, 5*time.Second, 5*time.Millisecond, "every member notices")
	admittedAtStop := tl.admitted.Load()
	time.Sleep(3 * time.Second)
	inOutage := tl.admitted.Load() - admittedAtStop
	require.NoError(t, redisSrv.Resume())
	require.Eventually(t, func() bool { return allMode(ms, "normal") }, 10*time.Second, 5*time.Millisecond, "every member recovers")
	window := time.Since(down)
	outage := outageAdmitted(t, ms) - before
	time.Sleep(3 * time.Second) // and works on
	cancel()
	wg.Wait()

	require.Zero(t, tl.errors.Load(), "decisions never stop: %v", tl.firstErr.Load())
	require.Zero(t, tl.settleErrors.Load(), "%v", tl.firstErr.Load())
	assert.Greater(t, inOutage, int64(0), "calls were admitted while Redis was away")
	bound := float64(capacity) + float64(refill)*window.Seconds() + float64(len(ms))
	t.Logf("outage: %.2f s without Redis (from stop to every member recovered); %.0f admitted on the members' shares (bound C+R·t+N = %.0f); %d admitted in all",
		window.Seconds(), outage, bound, tl.admitted.Load())
	assert.LessOrEqual(t, outage, bound, "outage admissions stay within the N shares")

	// Every member books what it holds and leaves; Redis then has every
	// admitted call's spend, once.
	for _, m := range ms {
		m.close(t)
	}
	check, _ := sharedStore(t, prefix)
	u, err := check.Usage(context.Background(), period, []limiter.Budget{acme}, time.Time{})
	require.NoError(t, err)
	assert.Equal(t, policy.Money(tl.spent.Load()), u.Budgets[0].Spent, "spend in Redis is what the admitted calls spent, exactly once")
	assert.Zero(t, u.Budgets[0].Reserved, "no slice or reservation is left")
	assert.Zero(t, u.InFlight, "no slot is left")
}

func allMode(ms []*member, mode string) bool {
	for _, m := range ms {
		if got, _ := m.Store.Mode(); got != mode {
			return false
		}
	}
	return true
}

func outageAdmitted(t *testing.T, ms []*member) float64 {
	var n float64
	for _, m := range ms {
		n += decisions(t, m.reg, "outage", "admitted")
	}
	return n
}

// TestFleetMemberKilled: a member dies holding leased slots. The others
// see it gone; its slots return to the client after their lease expires;
// the survivors' shares of the pool's demand grow.
func TestFleetMemberKilled(t *testing.T) {
	const slotTTL = 2 * time.Second
	ms, _ := startFleet(t, 3, func(c *cluster.Config) { c.SlotTTL = slotTTL })
	ctx := context.Background()
	lim := limiter.Limit{Capacity: 1000, Refill: 1000}
	gpt := limiter.Key{Pool: "gpt-kill"}
	const maxSlots = 6
	var seq atomic.Int64
	hold := func() limiter.Request {
		return limiter.Request{Takes: []limiter.Take{{Key: gpt, Limit: lim, Cost: 1}},
			Hold: &limiter.Hold{ID: fmt.Sprintf("k-%d", seq.Add(1)), TTL: time.Minute, Period: period,
				Slot: &limiter.Slot{Client: "acme", Max: maxSlots}}}
	}

	// Everyone works for a while: demand spreads evenly.
	var tl tally
	runCtx, cancel := context.WithTimeout(ctx, 1500*time.Millisecond)
	var wg sync.WaitGroup
	next := func(int, int) limiter.Request {
		return limiter.Request{Takes: []limiter.Take{{Key: gpt, Limit: lim, Cost: 1}}}
	}
	for _, m := range ms {
		drive(runCtx, &wg, m, 1, 5*time.Millisecond, next, nil, &tl)
	}
	wg.Wait()
	cancel()
	require.Zero(t, tl.errors.Load())
	before := ms[0].Node.Share(gpt.Pool)
	assert.InDelta(t, 1.0/3, before, 0.15, "even demand, even shares")

	// The victim takes three of the client's six slots, and dies.
	victim := ms[2]
	for range 3 {
		d, err := victim.Store.Reserve(ctx, hold())
		require.NoError(t, err)
		require.True(t, d.Allowed)
	}
	require.NoError(t, victim.Kill())
	victim.closed.Store(true)

	// At once, only the rest of the slots are free.
	var ids []string
	admitted := 0
	for range maxSlots {
		req := hold()
		d, err := ms[0].Store.Reserve(ctx, req)
		require.NoError(t, err)
		if d.Allowed {
			admitted++
			ids = append(ids, req.Hold.ID)
		} else {
			assert.Equal(t, limiter.ReasonConcurrency, d.Reason)
		}
	}
	assert.Equal(t, maxSlots-3, admitted, "the dead member's slots are still held")
	for _, id := range ids {
		_, err := ms[0].Store.Release(ctx, id)
		require.NoError(t, err)
	}
	waitLive(t, ms[:2], 2)

	// After the slot lease expires, all six are free again.
	require.Eventually(t, func() bool {
		var ids []string
		defer func() {
			for _, id := range ids {
				_, _ = ms[0].Store.Release(ctx, id)
			}
		}()
		for range maxSlots {
			req := hold()
			d, err := ms[0].Store.Reserve(ctx, req)
			if err != nil || !d.Allowed {
				return false
			}
			ids = append(ids, req.Hold.ID)
		}
		return true
	}, 3*slotTTL, 100*time.Millisecond, "the dead member's slots return after their lease")

	// The survivors work on: each one's share of the demand grows to a half.
	runCtx, cancel = context.WithTimeout(ctx, 1500*time.Millisecond)
	for _, m := range ms[:2] {
		drive(runCtx, &wg, m, 1, 5*time.Millisecond, next, nil, &tl)
	}
	wg.Wait()
	cancel()
	after := ms[0].Node.Share(gpt.Pool)
	t.Logf("member 0's share of the pool's demand: %.2f with three members, %.2f after one died", before, after)
	assert.InDelta(t, 0.5, after, 0.15)
	assert.Greater(t, after, before)
}

// TestFleetBackoff: an upstream 429 seen by one member stops the others
// spending the leases they hold.
func TestFleetBackoff(t *testing.T) {
	ms, _ := startFleet(t, 3, func(c *cluster.Config) { c.LeaseTTL = time.Minute })
	ctx := context.Background()
	lim := limiter.Limit{Capacity: 6000, Refill: 100} // leases of a minute: 1,000 units each at most
	gpt := limiter.Key{Pool: "gpt-backoff"}
	req := limiter.Request{Takes: []limiter.Take{{Key: gpt, Limit: lim, Cost: 1}}}
	for _, m := range ms {
		for range 2 { // a lease, then a local decision
			d, err := m.Store.Reserve(ctx, req)
			require.NoError(t, err)
			require.True(t, d.Allowed)
		}
	}
	_, err := ms[0].Store.Throttle(ctx, []limiter.Throttle{{Key: gpt, Limit: lim, Cap: limiter.NoCap, Pause: 30 * time.Second}}, time.Time{})
	require.NoError(t, err)
	for i, m := range ms {
		require.Eventually(t, func() bool {
			d, err := m.Store.Reserve(ctx, req)
			return err == nil && !d.Allowed && d.RetryAfter > 25*time.Second
		}, 5*time.Second, 10*time.Millisecond, "member %d holds back", i)
	}
}
