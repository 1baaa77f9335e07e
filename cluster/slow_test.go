package cluster_test

import (
	"context"
	"fmt"
	"net"
	"os"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/redis/go-redis/v9"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/tollgate/tollgate/cluster"
	"github.com/tollgate/tollgate/internal/fakeclock"
	"github.com/tollgate/tollgate/internal/redistest"
	"github.com/tollgate/tollgate/limiter"
	"github.com/tollgate/tollgate/limiter/memstore"
	"github.com/tollgate/tollgate/limiter/redisstore"
	"github.com/tollgate/tollgate/policy"
)

// busyWait is a script that keeps Redis busy for ARGV[1] microseconds: no
// other client is served meanwhile, and what they sent is served after it,
// as on a Redis slowed by a heavy command or a fork.
var busyWait = redis.NewScript(`
local t = redis.call('TIME')
local start = t[1] * 1000000 + t[2]
while true do
  local n = redis.call('TIME')
  if n[1] * 1000000 + n[2] - start >= tonumber(ARGV[1]) then return 1 end
end`)

// stallRedis makes the test's Redis stall for stall every every, until ctx
// ends; it reports how many stalls it caused.
func stallRedis(ctx context.Context, t *testing.T, wg *sync.WaitGroup, every, stall time.Duration) *atomic.Int64 {
	t.Helper()
	c := redis.NewClient(&redis.Options{Addr: redisSrv.Addr, ReadTimeout: 10 * stall, MaxRetries: -1})
	t.Cleanup(func() { _ = c.Close() })
	var n atomic.Int64
	wg.Go(func() {
		tick := time.NewTicker(every)
		defer tick.Stop()
		for {
			select {
			case <-ctx.Done():
				return
			case <-tick.C:
			}
			if err := busyWait.Run(context.Background(), c, nil, stall.Microseconds()).Err(); err == nil {
				n.Add(1)
			}
		}
	})
	return &n
}

// slowMember is joinMember over a Redis client with short timeouts.
func slowMember(t *testing.T, name, prefix string, timeout time.Duration, tune func(*cluster.Config), seeds ...string) *member {
	t.Helper()
	cc := redisstore.DefaultClientConfig()
	cc.Addrs = []string{redisSrv.Addr}
	cc.ReadTimeout, cc.WriteTimeout = timeout, timeout
	c, err := redisstore.NewClient(cc)
	require.NoError(t, err)
	t.Cleanup(func() { _ = c.Close() })
	hook := &redisstore.RoundTrips{}
	c.AddHook(hook)
	shared, err := redisstore.New(c, redisstore.Config{Prefix: prefix})
	require.NoError(t, err)
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

// TestFleetSlowRedis: Redis answers, but now and then too late for the
// members' 100 ms client timeouts, as under load: a script keeps it busy
// for 300 ms every 600 ms, and what the members sent meanwhile runs when
// it is free, answered or not. Three members drive one pool at 15 times
// its refill, half of the calls deferred holds settled below their
// estimate. No decision fails, no member takes Redis for down, the fleet
// holds the pool's bound, and the budget in Redis is exact.
func TestFleetSlowRedis(t *testing.T) {
	const (
		capacity = 200
		refill   = 200
		cost     = 1000
		actual   = 400
		timeout  = 100 * time.Millisecond
	)
	prefix := redistest.Prefix(t)
	var ms []*member
	for i := range 3 {
		var seeds []string
		if i > 0 {
			seeds = []string{ms[0].Node.Addr()}
		}
		ms = append(ms, slowMember(t, fmt.Sprintf("s%d", i), prefix, timeout, nil, seeds...))
	}
	waitLive(t, ms, 3)
	lim := limiter.Limit{Capacity: capacity, Refill: refill}
	gpt := limiter.Key{Pool: "gpt-slow"}
	acme := limiter.Budget{Owner: "acme", Limit: 1000 * policy.NanosPerDollar}
	var seq atomic.Int64
	next := func(w, i int) limiter.Request {
		h := &limiter.Hold{Period: period, Cost: cost, Budgets: []limiter.Budget{acme}, Commit: true}
		if i%2 == 1 {
			h.Commit, h.ID, h.TTL = false, fmt.Sprintf("slow-%d", seq.Add(1)), time.Minute
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
	start := time.Now()
	ctx, cancel := context.WithTimeout(context.Background(), 6*time.Second)
	defer cancel()
	var wg sync.WaitGroup
	stalls := stallRedis(ctx, t, &wg, 600*time.Millisecond, 300*time.Millisecond)
	for _, m := range ms {
		drive(ctx, &wg, m, 2, 2*time.Millisecond, next, settle, &tl)
	}
	wg.Wait()
	elapsed := time.Since(start)

	var entries float64
	for _, m := range ms {
		entries += outageEntries(t, m.reg)
	}
	paths, total := fleetPaths(t, ms)
	bound := float64(capacity) + float64(refill)*elapsed.Seconds() + float64(len(ms))
	t.Logf("slow Redis: %d stalls in %.1f s; admitted %d (bound C+R·t+N = %.0f), denied %d; outage entries %.0f; decisions %v of %.0f; errors %d (%v)",
		stalls.Load(), elapsed.Seconds(), tl.admitted.Load(), bound, tl.denied.Load(), entries, paths, total, tl.errors.Load(), tl.firstErr.Load())
	assert.Greater(t, stalls.Load(), int64(5), "Redis was slow")
	assert.Positive(t, paths["slow"], "calls went unanswered, and were decided on what the members held")
	assert.Zero(t, tl.errors.Load(), "no decision fails: %v", tl.firstErr.Load())
	assert.Zero(t, tl.settleErrors.Load(), "%v", tl.firstErr.Load())
	assert.Zero(t, entries, "Redis answered throughout: no member entered outage mode")
	assert.LessOrEqual(t, float64(tl.admitted.Load()), bound, "the fleet holds the pool's bound")

	for _, m := range ms {
		m.close(t)
	}
	check, _ := sharedStore(t, prefix)
	u, err := check.Usage(context.Background(), period, []limiter.Budget{acme}, time.Time{})
	require.NoError(t, err)
	assert.Equal(t, policy.Money(tl.spent.Load()), u.Budgets[0].Spent, "spend in Redis is what the admitted calls spent, exactly once")
	assert.Zero(t, u.Budgets[0].Reserved, "no slice or reservation is left")
}

// outageEntries is how many times a member entered outage mode.
func outageEntries(t *testing.T, g prometheus.Gatherer) float64 {
	t.Helper()
	mfs, err := g.Gather()
	require.NoError(t, err)
	for _, mf := range mfs {
		if mf.GetName() == "tollgate_cluster_outages_total" {
			return mf.GetMetric()[0].GetCounter().GetValue()
		}
	}
	return -1
}

// unanswering is a memory store that can stop answering: while mute, no
// call runs and each fails as a read timeout would; while lossy, each runs
// and its answer is lost the same way. A Redis too slow for its client's
// timeouts looks like either.
type unanswering struct {
	*memstore.Store
	mute, lossy atomic.Bool
}

var errTimeout = &net.OpError{Op: "read", Net: "tcp", Err: os.ErrDeadlineExceeded}

// answer is what a call that ran with err comes back with.
func (u *unanswering) answer(err error) error {
	if u.lossy.Load() {
		return errTimeout
	}
	return err
}

func (u *unanswering) Reserve(ctx context.Context, req limiter.Request) (limiter.Decision, error) {
	if u.mute.Load() {
		return limiter.Decision{}, errTimeout
	}
	d, err := u.Store.Reserve(ctx, req)
	return d, u.answer(err)
}

func (u *unanswering) Lease(ctx context.Context, asks []limiter.LeaseAsk, now time.Time) ([]limiter.LeaseGrant, error) {
	if u.mute.Load() {
		return nil, errTimeout
	}
	g, err := u.Store.Lease(ctx, asks, now)
	return g, u.answer(err)
}

func (u *unanswering) LeaseSlots(ctx context.Context, l limiter.SlotLease, now time.Time) (int64, int64, error) {
	if u.mute.Load() {
		return 0, 0, errTimeout
	}
	held, inFlight, err := u.Store.LeaseSlots(ctx, l, now)
	return held, inFlight, u.answer(err)
}

func (u *unanswering) Usage(ctx context.Context, period string, budgets []limiter.Budget, now time.Time) (limiter.Usage, error) {
	if u.mute.Load() {
		return limiter.Usage{}, errTimeout
	}
	us, err := u.Store.Usage(ctx, period, budgets, now)
	return us, u.answer(err)
}

func (u *unanswering) Book(ctx context.Context, batch string, deltas []limiter.SpendDelta) (bool, error) {
	if u.mute.Load() {
		return false, errTimeout
	}
	ok, err := u.Store.Book(ctx, batch, deltas)
	return ok, u.answer(err)
}

func (u *unanswering) Refund(ctx context.Context, r []limiter.Refund, now time.Time) ([]limiter.BucketState, error) {
	if u.mute.Load() {
		return nil, errTimeout
	}
	st, err := u.Store.Refund(ctx, r, now)
	return st, u.answer(err)
}

func (u *unanswering) Finish(ctx context.Context, e limiter.Ending) (limiter.Settlement, error) {
	if u.mute.Load() {
		return limiter.Settlement{}, errTimeout
	}
	st, err := u.Store.Finish(ctx, e)
	return st, u.answer(err)
}

// TestSlowIsNotDown: calls the shared store does not answer are decided on
// what the member holds, without an error and without outage mode, until
// it has answered none for DownAfter; any answer starts the count again.
func TestSlowIsNotDown(t *testing.T) {
	ctx := context.Background()
	clk := fakeclock.New(epoch)
	mem, err := memstore.New(memstore.Config{Clock: clk})
	require.NoError(t, err)
	t.Cleanup(func() { _ = mem.Close() })
	shared := &unanswering{Store: mem}
	cfg := cluster.DefaultConfig()
	cfg.Clock, cfg.SyncEvery = clk, time.Hour // the test syncs by hand
	reg := prometheus.NewRegistry()
	s, err := cluster.NewStore(cfg, shared, nil, reg)
	require.NoError(t, err)
	t.Cleanup(func() { assert.NoError(t, s.Close()) })
	lim := limiter.Limit{Capacity: 1000, Refill: 100} // a lease is 100 units
	call := func(cost int64) limiter.Decision {
		t.Helper()
		d, err := s.Reserve(ctx, limiter.Request{Takes: takeOf(cost, lim)})
		require.NoError(t, err, "no decision fails")
		return d
	}
	mode := func() string { m, _ := s.Mode(); return m }

	require.True(t, call(1).Allowed) // a lease: 99 units here
	shared.mute.Store(true)
	clk.Advance(1500 * time.Millisecond) // the lease lapsed; its units are not handed back yet
	assert.True(t, call(50).Allowed, "units taken from the shared bucket are still spent")
	d := call(60)
	assert.False(t, d.Allowed, "beyond them, nothing")
	assert.Equal(t, limiter.ReasonRateLimited, d.Reason)
	assert.Equal(t, 0, d.Blocking)
	assert.Equal(t, time.Second, d.RetryAfter, "after the next probe, or when the store would be down")
	assert.Equal(t, 2.0, decisions(t, reg, "slow", ""), "both decided on what the member holds")
	assert.Equal(t, "normal", mode(), "slow, not down")

	clk.Advance(900 * time.Millisecond)
	call(200)
	shared.mute.Store(false)
	s.Sync(ctx) // an answer: the spell is over
	shared.mute.Store(true)
	call(200) // the next begins
	clk.Advance(900 * time.Millisecond)
	call(200)
	assert.Equal(t, "normal", mode(), "0.9 s without an answer, twice, is still slow")
	assert.Zero(t, outageEntries(t, reg))

	clk.Advance(100 * time.Millisecond)
	call(1)
	assert.Equal(t, "outage", mode(), "a second without any answer: down")
	assert.Equal(t, 1.0, decisions(t, reg, "outage", ""), "decided on the member's share")
	assert.Equal(t, 1.0, outageEntries(t, reg))

	shared.mute.Store(false)
	s.Sync(ctx)
	assert.Equal(t, "normal", mode(), "back")
}

// TestReservationAnswerLost: a reservation the shared store made without
// its answer reaching the member does not stand beside the decision taken
// without it: it is released once the store answers.
func TestReservationAnswerLost(t *testing.T) {
	ctx := context.Background()
	clk := fakeclock.New(epoch)
	mem, err := memstore.New(memstore.Config{Clock: clk})
	require.NoError(t, err)
	t.Cleanup(func() { _ = mem.Close() })
	shared := &unanswering{Store: mem}
	cfg := cluster.DefaultConfig()
	cfg.Clock, cfg.SyncEvery = clk, time.Hour
	reg := prometheus.NewRegistry()
	s, err := cluster.NewStore(cfg, shared, nil, reg)
	require.NoError(t, err)
	t.Cleanup(func() { assert.NoError(t, s.Close()) })
	acme := limiter.Budget{Owner: "acme", Limit: 100 * policy.NanosPerDollar}
	usage := func() limiter.BudgetState {
		u, err := mem.Usage(ctx, period, []limiter.Budget{acme}, time.Time{})
		require.NoError(t, err)
		return u.Budgets[0]
	}

	shared.lossy.Store(true) // nothing known of the budget yet: the shared store must decide
	d, err := s.Reserve(ctx, limiter.Request{Hold: &limiter.Hold{ID: "lost", TTL: time.Minute, Period: period, Cost: 1000, Budgets: []limiter.Budget{acme}}})
	require.NoError(t, err, "no decision fails")
	assert.False(t, d.Allowed, "not known here: refused for now")
	assert.Equal(t, limiter.ReasonRateLimited, d.Reason)
	assert.Equal(t, policy.Money(1000), usage().Reserved, "yet the shared store made it")

	shared.lossy.Store(false)
	s.Sync(ctx)
	assert.Zero(t, usage().Reserved, "released once the store answers")
	assert.Zero(t, usage().Spent)
}

// TestAnswerLostThenGranted: a call whose first try timed out before it
// reached the store (its release queued in case it had) and whose next try
// under the same reservation id is granted keeps that grant: the queued
// release no longer ends it at the next sync (a held call, or a reserved
// pool's next alternative, tries again under the same id).
func TestAnswerLostThenGranted(t *testing.T) {
	ctx := context.Background()
	clk := fakeclock.New(epoch)
	mem, err := memstore.New(memstore.Config{Clock: clk})
	require.NoError(t, err)
	t.Cleanup(func() { _ = mem.Close() })
	shared := &unanswering{Store: mem}
	cfg := cluster.DefaultConfig()
	cfg.Clock, cfg.SyncEvery = clk, time.Hour
	s, err := cluster.NewStore(cfg, shared, nil, prometheus.NewRegistry())
	require.NoError(t, err)
	t.Cleanup(func() { assert.NoError(t, s.Close()) })
	acme := limiter.Budget{Owner: "acme", Limit: 100 * policy.NanosPerDollar}
	req := limiter.Request{Hold: &limiter.Hold{ID: "again", TTL: time.Minute, Period: period, Cost: 1000, Budgets: []limiter.Budget{acme}}}
	usage := func() limiter.BudgetState {
		u, err := mem.Usage(ctx, period, []limiter.Budget{acme}, time.Time{})
		require.NoError(t, err)
		return u.Budgets[0]
	}

	shared.mute.Store(true) // the first try never reaches the store, but the member cannot know
	d, err := s.Reserve(ctx, req)
	require.NoError(t, err)
	require.False(t, d.Allowed)
	shared.mute.Store(false)
	d, err = s.Reserve(ctx, req)
	require.NoError(t, err)
	require.True(t, d.Allowed, "the second try is granted")
	s.Sync(ctx)
	assert.Equal(t, policy.Money(1000), usage().Reserved, "the grant stands after the sync")
	st, err := s.Settle(ctx, "again", 700)
	require.NoError(t, err)
	assert.False(t, st.Repeat, "settled once, by the call")
	assert.Equal(t, policy.Money(700), usage().Spent)
}
