package admission_test

import (
	"context"
	"errors"
	"net/http"
	"sync"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/tollgate/tollgate/admission"
	"github.com/tollgate/tollgate/cluster"
	"github.com/tollgate/tollgate/internal/fakeclock"
	"github.com/tollgate/tollgate/internal/redistest"
	"github.com/tollgate/tollgate/limiter"
	"github.com/tollgate/tollgate/limiter/redisstore"
	"github.com/tollgate/tollgate/policy"
)

// failOpenPolicy lets calls through when the store cannot answer; acme's
// spend is booked on its budget and its parent's.
const failOpenPolicy = `
defaults:
  unknown_client: deny
  store_unavailable: allow
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
  acme-group: {tier: team}
  acme: {tier: team, parent: acme-group}
`

// chatCost is what chatResponse's usage costs: 40 × $2.50/1M + 12 × $10/1M.
const chatCost = policy.Money(220_000)

var (
	failOpenChain = []limiter.Budget{{Owner: "acme", Limit: limiter.Unlimited}, {Owner: "acme-group", Limit: limiter.Unlimited}}
	failOpenStart = time.Date(2026, 12, 6, 12, 0, 0, 0, time.UTC)
)

// redisStore is a Redis store on the package's server through a client
// with serve's options (short timeouts, one retry), under a prefix of t's
// own.
func redisStore(t *testing.T) *redisstore.Store {
	t.Helper()
	cfg := redisstore.DefaultClientConfig()
	cfg.Addrs = []string{srv.Addr}
	c, err := redisstore.NewClient(cfg)
	require.NoError(t, err)
	t.Cleanup(func() { assert.NoError(t, c.Close()) })
	s, err := redisstore.New(c, redisstore.Config{Prefix: redistest.Prefix(t)})
	require.NoError(t, err)
	return s
}

// keepServer brings the shared redis-server back when t ends, whatever t
// did to it.
func keepServer(t *testing.T) {
	t.Helper()
	t.Cleanup(func() { require.NoError(t, srv.Resume(), "bring the shared redis-server back") })
}

func newFailOpenService(t *testing.T, store admission.Store, clk limiter.Clock) (*admission.Service, *prometheus.Registry) {
	t.Helper()
	set, err := policy.Compile(policy.Source{Name: "failopen.yaml", Data: []byte(failOpenPolicy)})
	require.NoError(t, err)
	reg := prometheus.NewRegistry()
	s, err := admission.New(admission.Config{Settlement: admission.SettleDeferred}, admission.Deps{
		Policies: admission.StaticPolicy{Set: set}, Store: store, Registerer: reg, Clock: clk})
	require.NoError(t, err)
	t.Cleanup(func() { require.NoError(t, s.Close()) })
	return s, reg
}

// errAnswerLost is what a caller hears when the store applied its call and
// the answer never came back.
var errAnswerLost = errors.New("read tcp 127.0.0.1:6379: i/o timeout")

// lostAnswers passes every call to a real store and loses the answers of
// the next Reserve or Book calls it is told to: the store applied them,
// the caller hears errAnswerLost, as when a connection drops after Redis
// ran the script. Safe for concurrent use.
type lostAnswers struct {
	admission.Store
	mu              sync.Mutex
	reserves, books int
}

func (l *lostAnswers) lose(n *int) bool {
	l.mu.Lock()
	defer l.mu.Unlock()
	if *n == 0 {
		return false
	}
	*n--
	return true
}

func (l *lostAnswers) Reserve(ctx context.Context, req limiter.Request) (limiter.Decision, error) {
	d, err := l.Store.Reserve(ctx, req)
	if err == nil && l.lose(&l.reserves) {
		return limiter.Decision{}, errAnswerLost
	}
	return d, err
}

func (l *lostAnswers) Book(ctx context.Context, batch string, deltas []limiter.SpendDelta) (bool, error) {
	applied, err := l.Store.Book(ctx, batch, deltas)
	if err == nil && l.lose(&l.books) {
		return false, errAnswerLost
	}
	return applied, err
}

func chat() *admission.Request {
	return chatRequest(`{"model":"gpt-4o","max_tokens":500,"messages":[{"role":"user","content":"hi"}]}`)
}

// settleWithUsage ends v's call as Envoy's ext_proc would, from a response
// that reports chatResponse's usage.
func settleWithUsage(t *testing.T, s *admission.Service, v admission.Verdict) admission.SettleOutcome {
	t.Helper()
	c := s.Follow(v.Reservation, v.Route, http.MethodPost)
	c.ResponseHeaders(context.Background(), http.StatusOK, map[string]string{"content-type": "application/json"})
	c.ResponseBody(chatResponse, true)
	return c.End(context.Background())
}

// spent reads what the store has booked and holds on acme's chain.
func spent(t *testing.T, store limiter.Ledger, period string) (spent, reserved []policy.Money) {
	t.Helper()
	u, err := store.Usage(context.Background(), period, failOpenChain, time.Time{})
	require.NoError(t, err)
	for _, b := range u.Budgets {
		spent, reserved = append(spent, b.Spent), append(reserved, b.Reserved)
	}
	return spent, reserved
}

// TestFailOpenSpendBooked: with Redis down, calls let through fail open
// are settled as any other (from their usage, refused upstream, through
// the API, or never); when Redis returns their spend is booked on every
// budget of the chain, to the nano-dollar, and once: a batch whose answer
// was lost is resent as it was, and two rounds sending it at once book it
// once.
func TestFailOpenSpendBooked(t *testing.T) {
	keepServer(t)
	ctx := context.Background()
	store := &lostAnswers{Store: redisStore(t)}
	clk := fakeclock.New(failOpenStart)
	s, reg := newFailOpenService(t, store, clk)
	period := "2026-12"
	require.NoError(t, srv.Stop(true))

	var want policy.Money
	// Three calls settled from their responses' usage.
	for range 3 {
		v := s.Decide(ctx, chat())
		require.Equal(t, admission.OutcomeFailOpen, v.Outcome)
		require.NotEmpty(t, v.Reservation, "a call let through fail open is settled as any other")
		assert.Equal(t, admission.SettledActual, settleWithUsage(t, s, v))
		want += chatCost
	}
	// One the upstream refused: nothing spent.
	v := s.Decide(ctx, chat())
	require.Equal(t, admission.OutcomeFailOpen, v.Outcome)
	c := s.Follow(v.Reservation, v.Route, http.MethodPost)
	c.ResponseHeaders(ctx, http.StatusTooManyRequests, map[string]string{"content-type": "application/json"})
	c.ResponseBody([]byte(`{"error":{"code":"rate_limit_exceeded"}}`), true)
	assert.Equal(t, admission.SettledReleased, c.End(ctx))
	// One settled through the API, at a cost its worker reports.
	v = s.Decide(ctx, chat())
	require.Equal(t, admission.OutcomeFailOpen, v.Outcome)
	st, err := s.Settle(ctx, v.Reservation, 1_000_001)
	require.NoError(t, err)
	assert.Equal(t, limiter.Settlement{ID: v.Reservation, Outcome: limiter.OutcomeSettled, Estimated: v.Estimate.Reserve, Spent: 1_000_001}, st)
	want += 1_000_001
	// One never settled: it stands at its hold, as a lapsed reservation.
	v = s.Decide(ctx, chat())
	require.Equal(t, admission.OutcomeFailOpen, v.Outcome)
	want += v.Estimate.Reserve

	require.Error(t, s.BookFailOpen(ctx), "Redis is down")
	periods, total := s.FailOpenUnbooked()
	assert.Equal(t, 2, periods, "acme and acme-group, this month")
	assert.Equal(t, 2*want, total, "the same spend on both budgets")
	assert.Equal(t, 2.0, gauge(t, reg, "tollgate_authz_fail_open_unbooked_budgets"))

	require.NoError(t, srv.Resume())
	store.mu.Lock()
	store.books = 1
	store.mu.Unlock()
	require.ErrorIs(t, s.BookFailOpen(ctx), errAnswerLost, "Redis applied the batch; its answer was lost")
	periods, _ = s.FailOpenUnbooked()
	assert.Equal(t, 2, periods, "not known to be booked: kept, to be sent again as it was")

	// Two rounds at once (the loop's and Shutdown's) send the batch again.
	var wg sync.WaitGroup
	errs := make([]error, 2)
	for i := range errs {
		wg.Go(func() { errs[i] = s.BookFailOpen(ctx) })
	}
	wg.Wait()
	require.NoError(t, errors.Join(errs...))
	require.NoError(t, s.BookFailOpen(ctx), "nothing left: a no-op")

	periods, total = s.FailOpenUnbooked()
	assert.Zero(t, periods)
	assert.Zero(t, total)
	assert.Zero(t, gauge(t, reg, "tollgate_authz_fail_open_unbooked_budgets"))
	gotSpent, gotReserved := spent(t, store, period)
	assert.Equal(t, []policy.Money{want, want}, gotSpent, "exactly what the calls cost, booked once")
	assert.Equal(t, []policy.Money{0, 0}, gotReserved, "Redis holds nothing for calls it never saw")
}

// TestFailOpenLostReservation: a fail-open admission whose Reserve Redis
// did run (the answer was lost) left a reservation in Redis under the
// call's id. Booking releases it first, or, when it lapsed there at its
// estimate before Redis could be told, takes that estimate back out of
// what it books: the call counts once either way.
func TestFailOpenLostReservation(t *testing.T) {
	for name, lapsed := range map[string]bool{"released in Redis": false, "lapsed in Redis first": true} {
		t.Run(name, func(t *testing.T) {
			ctx := context.Background()
			rs := redisStore(t)
			store := &lostAnswers{Store: rs, reserves: 1}
			s, _ := newFailOpenService(t, store, fakeclock.New(failOpenStart))
			period := "2026-12"

			v := s.Decide(ctx, chat())
			require.Equal(t, admission.OutcomeFailOpen, v.Outcome)
			_, reserved := spent(t, store, period)
			require.Equal(t, v.Estimate.Reserve, reserved[0], "Redis holds the reservation whose answer was lost")
			assert.Equal(t, admission.SettledActual, settleWithUsage(t, s, v))
			if lapsed {
				n, err := rs.Expire(ctx, time.Now().Add(48*time.Hour), 10)
				require.NoError(t, err)
				require.Equal(t, 1, n)
			}

			require.NoError(t, s.BookFailOpen(ctx))
			gotSpent, gotReserved := spent(t, store, period)
			assert.Equal(t, []policy.Money{chatCost, chatCost}, gotSpent, "the call's cost, once")
			assert.Equal(t, []policy.Money{0, 0}, gotReserved)
			require.NoError(t, s.BookFailOpen(ctx))
			gotSpent, _ = spent(t, store, period)
			assert.Equal(t, []policy.Money{chatCost, chatCost}, gotSpent, "booking again changes nothing")
		})
	}
}

// TestFailOpenInAFleet: a fleet member lets calls through fail open when
// Redis refuses them (an ACL that takes the scripts away from Tollgate's
// user: an answer, not an outage, so no outage mode); the member's store
// passes the booking through to Redis, which takes it exactly once when
// the scripts are allowed again.
func TestFailOpenInAFleet(t *testing.T) {
	ctx := context.Background()
	admin := srv.Client(t)
	const user = "tollgate-failopen" // this test's own Redis user
	require.NoError(t, admin.Do(ctx, "ACL", "SETUSER", user, "on", ">pw", "~*", "&*", "+@all").Err())
	t.Cleanup(func() { assert.NoError(t, admin.Do(ctx, "ACL", "DELUSER", user).Err()) })
	cfg := redisstore.DefaultClientConfig()
	cfg.Addrs, cfg.Username, cfg.Password = []string{srv.Addr}, user, "pw"
	c, err := redisstore.NewClient(cfg)
	require.NoError(t, err)
	t.Cleanup(func() { assert.NoError(t, c.Close()) })
	rs, err := redisstore.New(c, redisstore.Config{Prefix: redistest.Prefix(t)})
	require.NoError(t, err)
	member, err := cluster.NewStore(cluster.DefaultConfig(), rs, nil, prometheus.NewRegistry())
	require.NoError(t, err)
	t.Cleanup(func() { assert.NoError(t, member.Close()) })
	s, _ := newFailOpenService(t, member, fakeclock.New(failOpenStart))

	require.NoError(t, admin.Do(ctx, "ACL", "SETUSER", user, "-evalsha", "-eval").Err())
	const n = 4
	for range n {
		v := s.Decide(ctx, chat())
		require.Equal(t, admission.OutcomeFailOpen, v.Outcome, v.Reason)
		assert.Equal(t, admission.SettledActual, settleWithUsage(t, s, v))
	}
	mode, _ := member.Mode()
	assert.Equal(t, "normal", mode, "Redis answered: a refusal is not an outage")
	require.ErrorContains(t, s.BookFailOpen(ctx), "NOPERM")

	require.NoError(t, admin.Do(ctx, "ACL", "SETUSER", user, "+evalsha", "+eval").Err())
	require.NoError(t, s.BookFailOpen(ctx))
	require.NoError(t, s.BookFailOpen(ctx))
	gotSpent, _ := spent(t, rs, "2026-12")
	assert.Equal(t, []policy.Money{n * chatCost, n * chatCost}, gotSpent)
}

// gauge reads an unlabelled gauge from reg.
func gauge(t *testing.T, reg prometheus.Gatherer, name string) float64 {
	t.Helper()
	mfs, err := reg.Gather()
	require.NoError(t, err)
	for _, mf := range mfs {
		if mf.GetName() == name {
			return mf.GetMetric()[0].GetGauge().GetValue()
		}
	}
	t.Fatalf("no metric %s", name)
	return 0
}
