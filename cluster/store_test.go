package cluster_test

import (
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/redis/go-redis/v9"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"go.uber.org/goleak"

	"github.com/tollgate/tollgate/cluster"
	"github.com/tollgate/tollgate/internal/fakeclock"
	"github.com/tollgate/tollgate/internal/redistest"
	"github.com/tollgate/tollgate/limiter"
	"github.com/tollgate/tollgate/limiter/memstore"
	"github.com/tollgate/tollgate/policy"
)

var redisSrv *redistest.Server

func TestMain(m *testing.M) {
	redis.SetLogger(quiet{}) // the outage test stops Redis: go-redis would log every refused dial
	code := redistest.Main(m, &redisSrv)
	if code == 0 {
		if err := goleak.Find(); err != nil {
			os.Stderr.WriteString("goleak: " + err.Error() + "\n")
			code = 1
		}
	}
	os.Exit(code)
}

type quiet struct{}

func (quiet) Printf(context.Context, string, ...any) {}

var epoch = time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)

const period = "2026-01"

// solo is a Store of a fleet of one over a memory store, on a fake clock.
type solo struct {
	*cluster.Store
	shared *memstore.Store
	clk    *fakeclock.Clock
	reg    *prometheus.Registry
}

func newSolo(t *testing.T) *solo {
	t.Helper()
	clk := fakeclock.New(epoch)
	shared, err := memstore.New(memstore.Config{Clock: clk})
	require.NoError(t, err)
	cfg := cluster.DefaultConfig()
	cfg.Clock = clk
	cfg.SyncEvery = time.Hour // the tests sync by hand
	reg := prometheus.NewRegistry()
	s, err := cluster.NewStore(cfg, shared, nil, reg)
	require.NoError(t, err)
	t.Cleanup(func() {
		assert.NoError(t, s.Close())
		assert.NoError(t, shared.Close())
	})
	return &solo{Store: s, shared: shared, clk: clk, reg: reg}
}

func (s *solo) paths(t *testing.T) map[string]float64 {
	t.Helper()
	out := map[string]float64{}
	for _, p := range []string{"local", "lease", "shared", "outage", "slow"} {
		out[p] = decisions(t, s.reg, p, "")
	}
	return out
}

var pool = limiter.Key{Pool: "gpt"}

func takeOf(cost int64, l limiter.Limit) []limiter.Take {
	return []limiter.Take{{Key: pool, Limit: l, Cost: cost}}
}

// TestLocalDecisions: after one lease and one budget slice, calls are
// decided here without the shared store; the slice is settled at what it
// spent, exactly once.
func TestLocalDecisions(t *testing.T) {
	s := newSolo(t)
	ctx := context.Background()
	lim := limiter.Limit{Capacity: 1000, Refill: 100} // a lease is 100 units: a second of refill
	acme := limiter.Budget{Owner: "acme", Limit: 100 * policy.NanosPerDollar}
	for i := range 100 {
		d, err := s.Reserve(ctx, limiter.Request{Takes: takeOf(1, lim), Hold: &limiter.Hold{Period: period, Cost: 1000, Budgets: []limiter.Budget{acme}, Commit: true}})
		require.NoError(t, err)
		require.True(t, d.Allowed, "call %d: %v", i, d.Reason)
	}
	// The first call reads the budget from the shared store; the second
	// takes a lease and a slice of 64 calls; the 66th a second slice.
	assert.Equal(t, map[string]float64{"shared": 1, "lease": 2, "local": 97, "outage": 0, "slow": 0}, s.paths(t))

	// The shared bucket gave 1 (the first call) + 100 (the lease); the lease
	// covered 99 calls, so one unit is still leased here.
	st, err := s.shared.Lease(ctx, []limiter.LeaseAsk{{Key: pool, Limit: lim}}, time.Time{})
	require.NoError(t, err)
	assert.Equal(t, int64(1000-101), st[0].Remaining)

	// The shared store holds the slices in full; this member knows what
	// they spent.
	u, err := s.shared.Usage(ctx, period, []limiter.Budget{acme}, time.Time{})
	require.NoError(t, err)
	assert.Equal(t, policy.Money(1000), u.Budgets[0].Spent, "only the first call, decided by the shared store, so far")
	assert.Equal(t, policy.Money(2*64_000), u.Budgets[0].Reserved, "two slices")
	mine, err := s.Usage(ctx, period, []limiter.Budget{acme}, time.Time{})
	require.NoError(t, err)
	assert.Equal(t, policy.Money(100_000), mine.Budgets[0].Spent)
	assert.Zero(t, mine.Budgets[0].Reserved)

	s.Sync(ctx) // the first slice, closed, is settled
	u, err = s.shared.Usage(ctx, period, []limiter.Budget{acme}, time.Time{})
	require.NoError(t, err)
	assert.Equal(t, policy.Money(1000+64_000), u.Budgets[0].Spent)
	assert.Equal(t, policy.Money(64_000), u.Budgets[0].Reserved)

	// The second lapses: settled at what it spent, once; and the lapsed
	// lease gives back what it did not spend.
	s.clk.Advance(cluster.DefaultConfig().SliceTTL)
	for range 2 {
		s.Sync(ctx)
		u, err = s.shared.Usage(ctx, period, []limiter.Budget{acme}, time.Time{})
		require.NoError(t, err)
		assert.Equal(t, policy.Money(100_000), u.Budgets[0].Spent)
		assert.Zero(t, u.Budgets[0].Reserved)
	}
	st, _ = s.shared.Lease(ctx, []limiter.LeaseAsk{{Key: pool, Limit: lim}}, time.Time{})
	assert.Equal(t, int64(1000), st[0].Remaining, "refilled, and the unused unit came back")
}

// TestLocalReservations: deferred holds decided here settle, release and
// lapse here; their slice is settled at what they spent.
func TestLocalReservations(t *testing.T) {
	s := newSolo(t)
	ctx := context.Background()
	lim := limiter.Limit{Capacity: 1000, Refill: 100}
	acme := limiter.Budget{Owner: "acme", Limit: 100 * policy.NanosPerDollar}
	hold := func(id string) limiter.Request {
		return limiter.Request{Takes: takeOf(1, lim), Hold: &limiter.Hold{ID: id, TTL: time.Minute, Period: period, Cost: 5000,
			Budgets: []limiter.Budget{acme}, Slot: &limiter.Slot{Client: "acme", Max: 10}}}
	}
	for _, id := range []string{"warm-1", "warm-2"} { // the budget view, then the lease, slots and slice
		d, err := s.Reserve(ctx, hold(id))
		require.NoError(t, err)
		require.True(t, d.Allowed)
	}
	d, err := s.Reserve(ctx, hold("r1"))
	require.NoError(t, err)
	require.True(t, d.Allowed)
	assert.Equal(t, int64(2), d.InFlight, "this member's calls in flight")
	assert.Equal(t, map[string]float64{"shared": 1, "lease": 1, "local": 1, "outage": 0, "slow": 0}, s.paths(t))
	_, err = s.Reserve(ctx, hold("r1"))
	assert.ErrorIs(t, err, limiter.ErrDuplicateReservation)

	st, err := s.Settle(ctx, "r1", 1200)
	require.NoError(t, err)
	assert.Equal(t, limiter.Settlement{ID: "r1", Outcome: limiter.OutcomeSettled, Estimated: 5000, Spent: 1200}, st)
	st, err = s.Settle(ctx, "r1", 1200)
	require.NoError(t, err)
	assert.True(t, st.Repeat)
	st, err = s.Release(ctx, "warm-2")
	require.NoError(t, err)
	assert.Equal(t, limiter.OutcomeReleased, st.Outcome)

	s.Sync(ctx)
	u, err := s.shared.Usage(ctx, period, []limiter.Budget{acme}, time.Time{})
	require.NoError(t, err)
	assert.Zero(t, u.Budgets[0].Spent)
	assert.Equal(t, policy.Money(5000+64*5000), u.Budgets[0].Reserved, "warm-1, and the open slice")
	mine, err := s.Usage(ctx, period, []limiter.Budget{acme}, time.Time{})
	require.NoError(t, err)
	assert.Equal(t, policy.Money(1200), mine.Budgets[0].Spent, "r1 settled; warm-2 released")
	assert.Equal(t, policy.Money(5000), mine.Budgets[0].Reserved, "warm-1")

	// warm-1's reservation is the shared store's: settled there.
	st, err = s.Settle(ctx, "warm-1", 700)
	require.NoError(t, err)
	assert.Equal(t, policy.Money(700), st.Spent)

	d, err = s.Reserve(ctx, hold("lapses"))
	require.NoError(t, err)
	require.True(t, d.Allowed)
	s.clk.Advance(time.Minute)
	n, err := s.Expire(ctx, time.Time{}, 100)
	require.NoError(t, err)
	assert.Equal(t, 1, n)
	s.Sync(ctx)
	u, _ = s.shared.Usage(ctx, period, []limiter.Budget{acme}, time.Time{})
	assert.Equal(t, policy.Money(1200+700+5000), u.Budgets[0].Spent, "a lapsed reservation stands at its estimate")
	assert.Zero(t, u.Budgets[0].Reserved)
	assert.Zero(t, u.InFlight, "the leased slots went back with the lapsed lease")
}

// TestNearTheLimit: near a bucket's limit leases are single calls; near a
// budget's, every reservation is the shared store's, and the budget is
// spent to the last call and not one beyond.
func TestNearTheLimit(t *testing.T) {
	s := newSolo(t)
	ctx := context.Background()
	lim := limiter.Limit{Capacity: 100, Refill: 100}
	for range 100 {
		d, err := s.Reserve(ctx, limiter.Request{Takes: takeOf(1, lim)})
		require.NoError(t, err)
		require.True(t, d.Allowed)
	}
	before := s.paths(t)
	d, err := s.Reserve(ctx, limiter.Request{Takes: takeOf(1, lim)})
	require.NoError(t, err)
	assert.False(t, d.Allowed, "the bucket is empty")
	assert.Equal(t, 10*time.Millisecond, d.RetryAfter)
	d, err = s.Reserve(ctx, limiter.Request{Takes: takeOf(1, lim)})
	require.NoError(t, err)
	assert.False(t, d.Allowed)
	assert.Equal(t, before["lease"]+1, s.paths(t)["lease"], "the second refusal came from the short-circuit, not the store")

	budget := limiter.Budget{Owner: "tight", Limit: 1_000_000}
	admitted := 0
	for i := range 600 {
		s.clk.Advance(10 * time.Millisecond)
		d, err := s.Reserve(ctx, limiter.Request{Hold: &limiter.Hold{Period: period, Cost: 2000, Budgets: []limiter.Budget{budget}, Commit: true}})
		require.NoError(t, err)
		if !d.Allowed {
			assert.Equal(t, limiter.ReasonBudgetExceeded, d.Reason)
			assert.Equal(t, 500, i, "the budget holds 500 calls")
			break
		}
		admitted++
	}
	assert.Equal(t, 500, admitted)
	p := s.paths(t)
	assert.Greater(t, p["local"]-before["local"], 300.0, "far from the limit, from slices")
	assert.Greater(t, p["shared"]-before["shared"], 10.0, "near it, call by call")
	s.Sync(ctx)
	u, err := s.shared.Usage(ctx, period, []limiter.Budget{budget}, time.Time{})
	require.NoError(t, err)
	assert.Equal(t, policy.Money(1_000_000), u.Budgets[0].Spent+u.Budgets[0].Reserved)
	s.clk.Advance(time.Minute)
	s.Sync(ctx)
	u, _ = s.shared.Usage(ctx, period, []limiter.Budget{budget}, time.Time{})
	assert.Equal(t, policy.Money(1_000_000), u.Budgets[0].Spent, "exactly the budget")
}

// TestBackoffSignal: a peer's back-off empties the lease and stops leasing.
func TestBackoffSignal(t *testing.T) {
	s := newSolo(t)
	ctx := context.Background()
	lim := limiter.Limit{Capacity: 1000, Refill: 100}
	for range 3 {
		d, err := s.Reserve(ctx, limiter.Request{Takes: takeOf(1, lim)})
		require.NoError(t, err)
		require.True(t, d.Allowed)
	}
	// The upstream said 429 with Retry-After: 30 (the shared bucket pauses;
	// a peer would gossip it, this member applies it to its own lease).
	_, err := s.Throttle(ctx, []limiter.Throttle{{Key: pool, Limit: lim, Cap: limiter.NoCap, Pause: 30 * time.Second}}, time.Time{})
	require.NoError(t, err)
	d, err := s.Reserve(ctx, limiter.Request{Takes: takeOf(1, lim)})
	require.NoError(t, err)
	assert.False(t, d.Allowed, "no unit of the old lease is spent after a pause")
	assert.InDelta(t, 30*time.Second+10*time.Millisecond, d.RetryAfter, float64(time.Millisecond))
	// A call that cost less than it held gives units back: they go to the
	// shared bucket, not to a lease that must not be spent now.
	_, err = s.Refund(ctx, []limiter.Refund{{Key: pool, Limit: lim, Units: 5}}, time.Time{})
	require.NoError(t, err)
	d, err = s.Reserve(ctx, limiter.Request{Takes: takeOf(1, lim)})
	require.NoError(t, err)
	assert.False(t, d.Allowed, "still paused")
	s.Backoff("peer", "gpt", time.Minute, -1)
	s.clk.Advance(31 * time.Second)
	d, err = s.Reserve(ctx, limiter.Request{Takes: takeOf(1, lim)})
	require.NoError(t, err)
	assert.True(t, d.Allowed, "the shared bucket decides while this member is told to hold back")
}

// decisions sums tollgate_cluster_decisions_total for path (and result,
// unless empty) in g.
func decisions(t *testing.T, g prometheus.Gatherer, path, result string) float64 {
	t.Helper()
	mfs, err := g.Gather()
	require.NoError(t, err)
	var sum float64
	for _, mf := range mfs {
		if mf.GetName() != "tollgate_cluster_decisions_total" {
			continue
		}
		for _, m := range mf.GetMetric() {
			labels := map[string]string{}
			for _, lp := range m.GetLabel() {
				labels[lp.GetName()] = lp.GetValue()
			}
			if labels["path"] == path && (result == "" || labels["result"] == result) {
				sum += m.GetCounter().GetValue()
			}
		}
	}
	return sum
}

// gate is a memory store whose calls a test can hold up or fail, as a
// slow or flaky Redis would.
type gate struct {
	*memstore.Store
	mu          sync.Mutex
	holdSlots   chan struct{} // when set, the next LeaseSlots waits for it to close
	entered     chan struct{}
	loseSlice   bool // the next slice reservation is made, but its answer lost
	retrySlice  bool // the next slice reservation is made, and sent again (its answer lost to a client's retry)
	refuseSettl int  // refuse this many settles (the store answers with an error)
}

var errLost = &net.OpError{Op: "read", Net: "tcp", Err: errors.New("connection reset by peer")}

func (g *gate) LeaseSlots(ctx context.Context, l limiter.SlotLease, now time.Time) (int64, int64, error) {
	g.mu.Lock()
	wait, entered := g.holdSlots, g.entered
	g.holdSlots = nil
	g.mu.Unlock()
	if wait != nil {
		close(entered)
		<-wait
	}
	return g.Store.LeaseSlots(ctx, l, now)
}

func (g *gate) Reserve(ctx context.Context, req limiter.Request) (limiter.Decision, error) {
	d, err := g.Store.Reserve(ctx, req)
	g.mu.Lock()
	defer g.mu.Unlock()
	if g.loseSlice && req.Hold != nil && strings.HasPrefix(req.Hold.ID, "slice:") {
		g.loseSlice = false
		return limiter.Decision{}, errLost
	}
	if g.retrySlice && req.Hold != nil && strings.HasPrefix(req.Hold.ID, "slice:") {
		g.retrySlice = false
		return g.Store.Reserve(ctx, req) // the second attempt: the id is taken
	}
	return d, err
}

func (g *gate) Finish(ctx context.Context, e limiter.Ending) (limiter.Settlement, error) {
	g.mu.Lock()
	if g.refuseSettl > 0 && e.Outcome == limiter.OutcomeSettled {
		g.refuseSettl--
		g.mu.Unlock()
		return limiter.Settlement{}, errors.New("memstore: busy")
	}
	g.mu.Unlock()
	return g.Store.Finish(ctx, e)
}

// named is a fleet of one that has a name of its own (so two share a
// store as two members would).
type named string

func (m named) Name() string                       { return string(m) }
func (named) Live() int                            { return 1 }
func (named) Share(string) float64                 { return 1 }
func (named) Spend([]limiter.SpendDelta)           {}
func (named) Backoff(string, time.Duration, int64) {}

func newGated(t *testing.T, clk *fakeclock.Clock, shared *memstore.Store) (*cluster.Store, *gate, *prometheus.Registry) {
	t.Helper()
	g := &gate{Store: shared}
	cfg := cluster.DefaultConfig()
	cfg.Clock, cfg.SyncEvery = clk, time.Hour
	reg := prometheus.NewRegistry()
	s, err := cluster.NewStore(cfg, g, named(t.Name()+fmt.Sprint(time.Now().UnixNano())), reg)
	require.NoError(t, err)
	t.Cleanup(func() { assert.NoError(t, s.Close()) })
	return s, g, reg
}

// TestSlotShrinkRace: while a member gives back a slot it no longer uses,
// it admits no call on that slot; so two members never hold more calls of
// a client than its maximum.
func TestSlotShrinkRace(t *testing.T) {
	ctx := context.Background()
	clk := fakeclock.New(epoch)
	shared, err := memstore.New(memstore.Config{Clock: clk})
	require.NoError(t, err)
	t.Cleanup(func() { _ = shared.Close() })
	a, ga, _ := newGated(t, clk, shared)
	b, _, _ := newGated(t, clk, shared)
	lim := limiter.Limit{Capacity: 1000, Refill: 1000}
	var seq int
	call := func(s *cluster.Store) (limiter.Decision, string) {
		seq++
		id := fmt.Sprint("c", seq)
		d, err := s.Reserve(ctx, limiter.Request{Takes: takeOf(1, lim), Hold: &limiter.Hold{ID: id, TTL: time.Minute, Period: period,
			Slot: &limiter.Slot{Client: "acme", Max: 1}}})
		require.NoError(t, err)
		return d, id
	}
	d, id := call(a)
	require.True(t, d.Allowed)
	_, err = a.Release(ctx, id)
	require.NoError(t, err)
	clk.Advance(6 * time.Second) // idle: the next sync gives the slot back

	wait, entered := make(chan struct{}), make(chan struct{})
	ga.mu.Lock()
	ga.holdSlots, ga.entered = wait, entered
	ga.mu.Unlock()
	synced := make(chan struct{})
	go func() { a.Sync(ctx); close(synced) }()
	<-entered // the give-back is on its way
	admitted := make(chan limiter.Decision, 1)
	go func() { d, _ := call(a); admitted <- d }()
	select {
	case d := <-admitted:
		require.Failf(t, "admitted on a slot being given back", "%+v", d)
	case <-time.After(50 * time.Millisecond):
	}
	close(wait)
	<-synced
	dA := <-admitted
	dB, _ := call(b)
	assert.True(t, dA.Allowed != dB.Allowed, "one of the two calls holds the client's only slot: a %v, b %v", dA.Allowed, dB.Allowed)
	u, err := shared.Usage(ctx, period, []limiter.Budget{{Owner: "acme", Limit: limiter.Unlimited}}, time.Time{})
	require.NoError(t, err)
	assert.Equal(t, int64(1), u.InFlight)
}

// TestSliceAnswerLost: a budget slice whose answer never came is released
// once the store answers, so the budget stands at what calls spent.
func TestSliceAnswerLost(t *testing.T) {
	ctx := context.Background()
	clk := fakeclock.New(epoch)
	shared, err := memstore.New(memstore.Config{Clock: clk})
	require.NoError(t, err)
	t.Cleanup(func() { _ = shared.Close() })
	s, g, reg := newGated(t, clk, shared)
	acme := limiter.Budget{Owner: "acme", Limit: 100 * policy.NanosPerDollar}
	commit := func() limiter.Decision {
		d, err := s.Reserve(ctx, limiter.Request{Hold: &limiter.Hold{Period: period, Cost: 1000, Budgets: []limiter.Budget{acme}, Commit: true}})
		require.NoError(t, err)
		require.True(t, d.Allowed)
		return d
	}
	commit() // reads the budget
	g.mu.Lock()
	g.loseSlice = true
	g.mu.Unlock()
	commit() // its slice was reserved, but the answer lost: decided on what the member holds (far from the limit: booked here)
	assert.Equal(t, 1.0, decisions(t, reg, "slow", "admitted"))
	mode, _ := s.Mode()
	assert.Equal(t, "normal", mode, "one lost answer is a slow store, not a down one")
	s.Sync(ctx) // the store answers: the journal is booked and the lost slice released
	u, err := shared.Usage(ctx, period, []limiter.Budget{acme}, time.Time{})
	require.NoError(t, err)
	assert.Equal(t, policy.Money(2000), u.Budgets[0].Spent)
	assert.Zero(t, u.Budgets[0].Reserved, "the lost slice holds nothing")
}

// TestQueuedSettleRefused: a slice settle the store refuses stays queued
// and lands at a later sync, once.
func TestQueuedSettleRefused(t *testing.T) {
	ctx := context.Background()
	clk := fakeclock.New(epoch)
	shared, err := memstore.New(memstore.Config{Clock: clk})
	require.NoError(t, err)
	t.Cleanup(func() { _ = shared.Close() })
	s, g, _ := newGated(t, clk, shared)
	acme := limiter.Budget{Owner: "acme", Limit: 100 * policy.NanosPerDollar}
	for range 10 {
		d, err := s.Reserve(ctx, limiter.Request{Hold: &limiter.Hold{Period: period, Cost: 1000, Budgets: []limiter.Budget{acme}, Commit: true}})
		require.NoError(t, err)
		require.True(t, d.Allowed)
	}
	clk.Advance(cluster.DefaultConfig().SliceTTL)
	g.mu.Lock()
	g.refuseSettl = 2
	g.mu.Unlock()
	usage := func() limiter.BudgetState {
		u, err := shared.Usage(ctx, period, []limiter.Budget{acme}, time.Time{})
		require.NoError(t, err)
		return u.Budgets[0]
	}
	s.Sync(ctx)
	assert.Equal(t, policy.Money(64_000), usage().Reserved, "refused: still queued")
	s.Sync(ctx)
	assert.Equal(t, policy.Money(64_000), usage().Reserved, "refused again")
	s.Sync(ctx)
	s.Sync(ctx)
	assert.Equal(t, limiter.BudgetState{Owner: "acme", Limit: acme.Limit, Spent: 10_000}, usage(), "settled once, at what it spent")
}

// TestNoOutageForRefusals: a call the shared store refuses as invalid, or
// a slot count beyond what a lease may hold, never puts the member in
// outage mode.
func TestNoOutageForRefusals(t *testing.T) {
	s := newSolo(t)
	ctx := context.Background()
	lim := limiter.Limit{Capacity: 1000, Refill: 100}
	d, err := s.Reserve(ctx, limiter.Request{Takes: takeOf(1, lim), Hold: &limiter.Hold{ID: "big", TTL: time.Minute, Period: period,
		Slot: &limiter.Slot{Client: "acme", Max: 100_000_000}}})
	require.NoError(t, err)
	assert.True(t, d.Allowed)
	mode, _ := s.Mode()
	assert.Equal(t, "normal", mode)

	_, err = cluster.NewStore(cluster.DefaultConfig(), s.shared, nil, s.reg)
	require.ErrorContains(t, err, "metrics", "a second store on one registry is an error, not a panic")
}
