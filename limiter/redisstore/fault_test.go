package redisstore_test

// Faults a real Redis deployment meets: restarts with and without
// persistence, an address nobody answers on, a server that stops or stalls
// mid-test, keys lost to eviction. Each runs against the package's real
// redis-server; none mocks it.
//
// The restart, stop and pause tests act on the server every test of the
// package shares, so none of them (and no other test of this package) calls
// t.Parallel, and each one leaves the server running (keepServer).

import (
	"context"
	"net"
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

// The admission most tests here make: a pool-wide and a client bucket, a
// hold of 2500 nano-dollars against a chain of two budgets, and a slot.
const (
	period   = "2026-01"
	holdCost = policy.Money(2500)
)

var (
	epoch       = storetest.Epoch
	poolKey     = limiter.Key{Pool: "chat"}
	clientKey   = limiter.Key{Pool: "chat", Client: "acme/team"}
	poolLimit   = limiter.Limit{Capacity: 100, Refill: 1}
	clientLimit = limiter.Limit{Capacity: 50, Refill: 1}
	chain       = []limiter.Budget{{Owner: "acme/team", Limit: 1_000_000}, {Owner: "acme", Limit: 5_000_000}}
)

// admission takes 40 from the pool and 20 from the client bucket (each then
// needs 40 s or 20 s to refill, so neither key lapses during a test) and
// holds holdCost for ttl under id.
func admission(id string, ttl time.Duration) limiter.Request {
	return limiter.Request{
		Takes: []limiter.Take{{Key: poolKey, Limit: poolLimit, Cost: 40}, {Key: clientKey, Limit: clientLimit, Cost: 20}},
		Hold: &limiter.Hold{
			ID: id, TTL: ttl, Period: period, Cost: holdCost, Budgets: chain,
			Slot: &limiter.Slot{Client: "acme/team", Max: 4},
		},
		Now: epoch,
	}
}

// levels reads both buckets' remaining units without charging them.
func levels(ctx context.Context, s *redisstore.Store) (pool, client int64, err error) {
	d, err := s.Reserve(ctx, limiter.Request{
		Takes: []limiter.Take{{Key: poolKey, Limit: poolLimit}, {Key: clientKey, Limit: clientLimit}},
		Now:   epoch,
	})
	if err != nil {
		return 0, 0, err
	}
	return d.Buckets[0].Remaining, d.Buckets[1].Remaining, nil
}

// keepServer makes sure the shared server runs again when t ends, whatever
// t did to it (Resume does nothing to a running server).
func keepServer(t *testing.T) {
	t.Helper()
	t.Cleanup(func() { require.NoError(t, srv.Resume(), "bring the shared redis-server back") })
}

// freeAddr returns a loopback address nobody listens on (the port was free
// a moment ago and is not handed out again at once).
func freeAddr(t *testing.T) string {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	require.NoError(t, err)
	addr := l.Addr().String()
	require.NoError(t, l.Close())
	return addr
}

// newClient returns a client made by redisstore.NewClient (the production
// options: context deadlines on, no second send), closed when t ends.
func newClient(t *testing.T, addr string, timeout time.Duration) redis.UniversalClient {
	t.Helper()
	c, err := redisstore.NewClient(redisstore.ClientConfig{
		Addrs: []string{addr}, Mode: redisstore.ModeSingle,
		DialTimeout: timeout, ReadTimeout: timeout, WriteTimeout: timeout,
	})
	require.NoError(t, err)
	t.Cleanup(func() { assert.NoError(t, c.Close()) })
	return c
}

func storeOn(t *testing.T, c redis.UniversalClient) *redisstore.Store {
	t.Helper()
	s, _ := prefixedStore(t, c)
	return s
}

// prefixedStore returns a store on c with a prefix of t's own, and the tag
// "{prefix}:" that starts each of its keys.
func prefixedStore(t *testing.T, c redis.UniversalClient) (*redisstore.Store, string) {
	t.Helper()
	prefix := redistest.Prefix(t)
	s, err := redisstore.New(c, redisstore.Config{Prefix: prefix})
	require.NoError(t, err)
	return s, "{" + prefix + "}:"
}

// scanKeys returns the keys of c's database that start with prefix.
func scanKeys(t *testing.T, c redis.UniversalClient, prefix string) []string {
	t.Helper()
	ctx := context.Background()
	var keys []string
	iter := c.Scan(ctx, 0, "*", 1000).Iterator()
	for iter.Next(ctx) {
		if strings.HasPrefix(iter.Val(), prefix) {
			keys = append(keys, iter.Val())
		}
	}
	require.NoError(t, iter.Err())
	return keys
}

func TestRestart(t *testing.T) {
	tests := map[string]struct {
		save bool
		// What the store reports after the restart.
		pool, client int64
		reserved     policy.Money
		inFlight     int64
		settleErr    error
	}{
		"with a snapshot the state survives": {
			save: true, pool: 60, client: 30, reserved: holdCost, inFlight: 1,
		},
		"without one it is gone": {
			save: false, pool: 100, client: 50, settleErr: limiter.ErrUnknownReservation,
		},
	}
	for name, tc := range tests {
		t.Run(name, func(t *testing.T) {
			keepServer(t)
			ctx := context.Background()
			s := newStore(t) // the same client before and after the restart
			d, err := s.Reserve(ctx, admission("r1", time.Minute))
			require.NoError(t, err)
			require.True(t, d.Allowed)

			require.NoError(t, srv.Restart(tc.save))

			// go-redis redials by itself; a call may fail while it does.
			require.Eventually(t, func() bool {
				_, _, err := levels(ctx, s)
				return err == nil
			}, 10*time.Second, 10*time.Millisecond, "the client reconnects after the restart")

			pool, client, err := levels(ctx, s)
			require.NoError(t, err)
			assert.Equal(t, tc.pool, pool, "pool bucket")
			assert.Equal(t, tc.client, client, "client bucket")
			u, err := s.Usage(ctx, period, chain, epoch)
			require.NoError(t, err)
			for _, b := range u.Budgets {
				assert.Equal(t, tc.reserved, b.Reserved, "reserved of %s", b.Owner)
				assert.Zero(t, b.Spent, "spent of %s", b.Owner)
			}
			assert.Equal(t, tc.inFlight, u.InFlight, "slots in flight")

			st, err := s.Settle(ctx, "r1", 1000)
			if tc.settleErr != nil {
				require.ErrorIs(t, err, tc.settleErr)
				return
			}
			require.NoError(t, err, "the reservation made before the restart settles")
			assert.Equal(t, limiter.Settlement{ID: "r1", Outcome: limiter.OutcomeSettled, Estimated: holdCost, Spent: 1000}, st)
			u, err = s.Usage(ctx, period, chain, epoch)
			require.NoError(t, err)
			for _, b := range u.Budgets {
				assert.Equal(t, policy.Money(1000), b.Spent, "spent of %s", b.Owner)
				assert.Zero(t, b.Reserved, "reserved of %s", b.Owner)
			}
			assert.Zero(t, u.InFlight)
		})
	}
}

// ops calls each method of the store once; a table for the fault tests.
var ops = map[string]func(ctx context.Context, s *redisstore.Store) error{
	"reserve": func(ctx context.Context, s *redisstore.Store) error {
		_, err := s.Reserve(ctx, admission("r1", time.Minute))
		return err
	},
	"settle": func(ctx context.Context, s *redisstore.Store) error {
		_, err := s.Settle(ctx, "r1", 10)
		return err
	},
	"release": func(ctx context.Context, s *redisstore.Store) error {
		_, err := s.Release(ctx, "r1")
		return err
	},
	"expire": func(ctx context.Context, s *redisstore.Store) error {
		_, err := s.Expire(ctx, epoch, 10)
		return err
	},
	"usage": func(ctx context.Context, s *redisstore.Store) error {
		_, err := s.Usage(ctx, period, chain, epoch)
		return err
	},
}

// The one wall-clock bound these tests assert: an operation against an
// unreachable or stalled Redis returns within twice what its configuration
// allows (a dial is tried twice) plus a second of slack for a loaded
// machine. It catches a hang, not a slow call.
func bound(allowed time.Duration) time.Duration { return 2*allowed + time.Second }

// failsWithin runs op and asserts it returns a store error within limit.
func failsWithin(t *testing.T, limit time.Duration, op func() error) {
	t.Helper()
	start := time.Now()
	err := op()
	elapsed := time.Since(start)
	require.Error(t, err)
	assert.Contains(t, err.Error(), "redisstore:", "the error names the store")
	assert.LessOrEqual(t, elapsed, limit, "returned after %v: %v", elapsed, err)
}

func TestUnreachable(t *testing.T) {
	const timeout = 100 * time.Millisecond // dial, read and write each
	s := storeOn(t, newClient(t, freeAddr(t), timeout))
	for name, op := range ops {
		t.Run(name, func(t *testing.T) {
			failsWithin(t, bound(3*timeout), func() error { return op(context.Background(), s) })
		})
	}
}

func TestServerStopped(t *testing.T) {
	const timeout = 100 * time.Millisecond
	keepServer(t)
	s := storeOn(t, newClient(t, srv.Addr, timeout))
	// A working store with its scripts loaded and a connection in the pool...
	require.NoError(t, s.Load(context.Background()))
	_, err := s.Reserve(context.Background(), admission("r0", time.Minute))
	require.NoError(t, err)
	// ...loses its server.
	require.NoError(t, srv.Stop(false))
	for name, op := range ops {
		t.Run(name, func(t *testing.T) {
			failsWithin(t, bound(3*timeout), func() error { return op(context.Background(), s) })
		})
	}
}

// TestDeadline stalls the server (CLIENT PAUSE WRITE holds back every
// script, a real Redis behaviour, as during a failover) and checks that the
// caller's deadline, much shorter than the client's own timeouts, cuts each
// call short.
func TestDeadline(t *testing.T) {
	const (
		timeout  = 10 * time.Second // the client's own: far longer than the deadline
		deadline = 200 * time.Millisecond
	)
	ctx := context.Background()
	s := storeOn(t, newClient(t, srv.Addr, timeout))
	require.NoError(t, s.Load(ctx))
	admin := srv.Client(t)
	t.Cleanup(func() { assert.NoError(t, admin.Do(ctx, "CLIENT", "UNPAUSE").Err()) })
	// The pause lapses by itself after 30 s should the cleanup never run.
	require.NoError(t, admin.Do(ctx, "CLIENT", "PAUSE", 30_000, "WRITE").Err())

	for name, op := range ops {
		t.Run(name, func(t *testing.T) {
			failsWithin(t, bound(deadline), func() error {
				ctx, cancel := context.WithTimeout(ctx, deadline)
				defer cancel()
				return op(ctx, s)
			})
		})
	}
}

// commands records the commands a client sends, through a go-redis hook.
type commands struct {
	mu    sync.Mutex
	names []string
}

func (c *commands) add(cmds ...redis.Cmder) {
	c.mu.Lock()
	defer c.mu.Unlock()
	for _, cmd := range cmds {
		c.names = append(c.names, cmd.Name())
	}
}

// take returns the commands sent since the last take.
func (c *commands) take() []string {
	c.mu.Lock()
	defer c.mu.Unlock()
	n := c.names
	c.names = nil
	return n
}

func (c *commands) DialHook(next redis.DialHook) redis.DialHook { return next }

func (c *commands) ProcessHook(next redis.ProcessHook) redis.ProcessHook {
	return func(ctx context.Context, cmd redis.Cmder) error {
		c.add(cmd)
		return next(ctx, cmd)
	}
}

func (c *commands) ProcessPipelineHook(next redis.ProcessPipelineHook) redis.ProcessPipelineHook {
	return func(ctx context.Context, cmds []redis.Cmder) error {
		c.add(cmds...)
		return next(ctx, cmds)
	}
}

// countingStore returns a store whose client (one connection, already
// dialled, scripts loaded) records every command it sends.
func countingStore(t *testing.T) (*redisstore.Store, *redis.Client, *commands) {
	t.Helper()
	ctx := context.Background()
	c := redis.NewClient(&redis.Options{Addr: srv.Addr, PoolSize: 1})
	t.Cleanup(func() { assert.NoError(t, c.Close()) })
	require.NoError(t, c.Ping(ctx).Err())
	s := storeOn(t, c)
	require.NoError(t, s.Load(ctx))
	cmds := &commands{}
	c.AddHook(cmds)
	return s, c, cmds
}

func TestRoundTrips(t *testing.T) {
	ctx := context.Background()

	t.Run("each call is one script", func(t *testing.T) {
		s, _, cmds := countingStore(t)
		// In this order: the settle and release find a reservation to end.
		steps := []struct {
			name string
			op   func() error
		}{
			{"reserve with takes and a hold", func() error { return ops["reserve"](ctx, s) }},
			{"settle", func() error { return ops["settle"](ctx, s) }},
			{"reserve again", func() error { _, err := s.Reserve(ctx, admission("r2", time.Minute)); return err }},
			{"release", func() error { _, err := s.Release(ctx, "r2"); return err }},
			{"expire", func() error { return ops["expire"](ctx, s) }},
			{"usage", func() error { return ops["usage"](ctx, s) }},
		}
		for _, st := range steps {
			require.NoError(t, st.op(), st.name)
			assert.Equal(t, []string{"evalsha"}, cmds.take(), "%s: one EVALSHA, one round trip", st.name)
		}
	})

	t.Run("a flushed script cache costs one EVAL", func(t *testing.T) {
		s, c, cmds := countingStore(t)
		require.NoError(t, c.ScriptFlush(ctx).Err())
		cmds.take()
		d, err := s.Reserve(ctx, admission("r1", time.Minute))
		require.NoError(t, err, "NOSCRIPT is handled inside the store")
		assert.True(t, d.Allowed)
		assert.Equal(t, []string{"evalsha", "eval"}, cmds.take(), "NOSCRIPT, then EVAL")
		_, err = s.Reserve(ctx, admission("r2", time.Minute))
		require.NoError(t, err)
		assert.Equal(t, []string{"evalsha"}, cmds.take(), "EVAL cached the script again")
	})

	t.Run("a cancelled context sends nothing", func(t *testing.T) {
		s, _, cmds := countingStore(t)
		cancelled, cancel := context.WithCancel(ctx)
		cancel()
		for name, op := range ops {
			require.ErrorIs(t, op(cancelled, s), context.Canceled, name)
		}
		assert.Empty(t, cmds.take())
	})
}

// TestKeyHygiene scans a database of its own after an admission: every key
// the store made carries the prefix's hash tag (one Cluster slot), and every
// key expires by itself except the expiry index, which empties when the last
// reservation ends.
func TestKeyHygiene(t *testing.T) {
	const db = 9 // no other test uses it
	ctx := context.Background()
	c := redis.NewClient(&redis.Options{Addr: srv.Addr, DB: db})
	t.Cleanup(func() { assert.NoError(t, c.Close()) })
	require.NoError(t, c.FlushDB(ctx).Err())
	prefix := redistest.Prefix(t)
	s, err := redisstore.New(c, redisstore.Config{Prefix: prefix})
	require.NoError(t, err)
	tag := "{" + prefix + "}:"

	// keys maps each key of the database to its kind (the part after the
	// prefix up to the next colon) and checks its tag.
	keys := func(t *testing.T) map[string]string {
		t.Helper()
		out := map[string]string{}
		iter := c.Scan(ctx, 0, "*", 100).Iterator()
		for iter.Next(ctx) {
			k := iter.Val()
			require.True(t, strings.HasPrefix(k, tag), "key %q lacks the prefix %q", k, tag)
			open, close := strings.IndexByte(k, '{'), strings.IndexByte(k, '}')
			require.Equal(t, prefix, k[open+1:close], "key %q hashes on its first {…}", k)
			kind, _, _ := strings.Cut(k[len(tag):], ":")
			out[k] = kind
		}
		require.NoError(t, iter.Err())
		return out
	}
	kinds := func(ks map[string]string) map[string]int {
		n := map[string]int{}
		for _, kind := range ks {
			n[kind]++
		}
		return n
	}
	pttl := func(t *testing.T, k string) time.Duration {
		t.Helper()
		d, err := c.PTTL(ctx, k).Result()
		require.NoError(t, err)
		return d
	}

	const holdTTL = 90 * time.Second
	d, err := s.Reserve(ctx, admission("r1", holdTTL))
	require.NoError(t, err)
	require.True(t, d.Allowed)

	ks := keys(t)
	assert.Equal(t, map[string]int{"k": 2, "b": 2, "c": 1, "r": 1, "exp": 1}, kinds(ks),
		"two buckets, two budgets, the slot set, the record and the expiry index: %v", ks)
	for k, kind := range ks {
		ttl := pttl(t, k)
		switch kind {
		case "k": // a bucket lives until it is full again, plus a second
			assert.Positive(t, ttl, "bucket %s", k)
			assert.LessOrEqual(t, ttl, 41*time.Second, "bucket %s", k)
		case "b": // a budget outlives its period
			assert.Greater(t, ttl, 31*24*time.Hour, "budget %s", k)
		case "r": // a record outlives its hold, for the expiry sweep to find it
			assert.Greater(t, ttl, holdTTL, "record %s", k)
		case "c": // a slot set outlives the holds in it
			assert.GreaterOrEqual(t, ttl, holdTTL, "slot set %s", k)
		case "exp":
			assert.Equal(t, time.Duration(-1), ttl, "the expiry index has no TTL: it empties instead")
		}
	}

	_, err = s.Settle(ctx, "r1", 100)
	require.NoError(t, err)
	ks = keys(t)
	assert.Equal(t, map[string]int{"k": 2, "b": 2, "d": 1}, kinds(ks),
		"settling leaves the buckets, the budgets and the outcome: %v", ks)
	for k, kind := range ks {
		ttl := pttl(t, k)
		assert.Positive(t, ttl, "every key left expires by itself: %s", k)
		if kind == "d" {
			assert.Greater(t, ttl, 23*time.Hour, "the outcome is kept for a day: %s", k)
		}
	}
}

// TestSlotSetLifetime checks that the set of a client's slots lives as long
// as its longest hold, whatever order holds of different TTLs come in.
func TestSlotSetLifetime(t *testing.T) {
	ctx := context.Background()
	c := srv.Client(t)
	s, tag := prefixedStore(t, c)
	long, short := admission("long", time.Hour), admission("short", time.Second)
	for _, req := range []limiter.Request{long, short} {
		d, err := s.Reserve(ctx, req)
		require.NoError(t, err)
		require.True(t, d.Allowed)
	}
	slots := scanKeys(t, c, tag+"c:")
	require.Len(t, slots, 1)
	ttl, err := c.PTTL(ctx, slots[0]).Result()
	require.NoError(t, err)
	assert.GreaterOrEqual(t, ttl, 59*time.Minute, "the one-second hold must not cut the hour-long hold's slot short")
	u, err := s.Usage(ctx, period, chain, epoch)
	require.NoError(t, err)
	assert.Equal(t, int64(2), u.InFlight)
}

// TestBucketWithoutRefill checks that a bucket that never refills is never
// forgotten: forgetting it would hand out its whole capacity again.
func TestBucketWithoutRefill(t *testing.T) {
	ctx := context.Background()
	c := srv.Client(t)
	s, tag := prefixedStore(t, c)
	quota := limiter.Limit{Capacity: 5}
	k := limiter.Key{Pool: "quota", Client: "once"}
	d, err := s.Reserve(ctx, limiter.Request{Takes: []limiter.Take{{Key: k, Limit: quota, Cost: 5}}})
	require.NoError(t, err)
	require.True(t, d.Allowed)
	assert.Zero(t, d.Buckets[0].Remaining)
	keys := scanKeys(t, c, tag+"k:")
	require.Len(t, keys, 1)
	ttl, err := c.PTTL(ctx, keys[0]).Result()
	require.NoError(t, err)
	assert.Equal(t, time.Duration(-1), ttl, "an empty bucket that never refills must not expire")
}

// TestExpireSkipsLostRecords loses a reservation's record (as maxmemory
// eviction would, or the record's own TTL when no sweep ran for a day) and
// checks that its entry in the expiry index does not stop the sweep from
// reaching the reservations behind it.
func TestExpireSkipsLostRecords(t *testing.T) {
	ctx := context.Background()
	c := srv.Client(t)
	s, tag := prefixedStore(t, c)
	budget := []limiter.Budget{{Owner: "acme", Limit: limiter.Unlimited}}
	hold := func(id string, at time.Time) {
		t.Helper()
		d, err := s.Reserve(ctx, limiter.Request{Now: at, Hold: &limiter.Hold{
			ID: id, TTL: time.Second, Period: period, Cost: 100, Budgets: budget,
		}})
		require.NoError(t, err)
		require.True(t, d.Allowed)
	}
	hold("lost", epoch)
	require.NoError(t, c.Del(ctx, tag+"r:lost").Err())
	hold("kept", epoch.Add(time.Millisecond)) // lapses after the lost one

	later := epoch.Add(time.Minute)
	ended := 0
	for range 3 { // a sweep of one at a time must get there
		n, err := s.Expire(ctx, later, 1)
		require.NoError(t, err)
		ended += n
	}
	assert.Equal(t, 1, ended, "one reservation was there to end")
	u, err := s.Usage(ctx, period, budget, later)
	require.NoError(t, err)
	assert.Equal(t, policy.Money(100), u.Budgets[0].Spent, "the kept hold was committed at its estimate")
	st, err := s.Settle(ctx, "kept", 1)
	require.NoError(t, err)
	assert.Equal(t, limiter.OutcomeExpired, st.Outcome)
	n, err := c.Exists(ctx, tag+"exp").Result()
	require.NoError(t, err)
	assert.Zero(t, n, "the index holds nothing once every reservation ended")
}

// busyWait keeps Redis busy for ARGV[1] microseconds: nothing else is
// served meanwhile, and what other clients sent runs when it ends, whether
// or not they still wait for the reply (a slow command, as under load).
var busyWait = redis.NewScript(`
local t = redis.call('TIME')
local start = t[1] * 1000000 + t[2]
while true do
  local n = redis.call('TIME')
  if n[1] * 1000000 + n[2] - start >= tonumber(ARGV[1]) then return 1 end
end`)

// TestLateReplyNotResent: a script whose reply comes after the client's
// read timeout still ran (Redis served it when it was free again). The
// client must not send it again: a second run would apply it twice (a
// refund given back twice, a lease taken twice, a commit charged twice).
func TestLateReplyNotResent(t *testing.T) {
	const (
		timeout = 100 * time.Millisecond
		stall   = 400 * time.Millisecond
	)
	ctx := context.Background()
	s := storeOn(t, newClient(t, srv.Addr, timeout))
	require.NoError(t, s.Load(ctx))
	var wg sync.WaitGroup
	for range 4 { // connections in the pool, as a busy client has: a second try finds one ready
		wg.Go(func() { _, _, err := levels(ctx, s); assert.NoError(t, err) })
	}
	wg.Wait()
	d, err := s.Reserve(ctx, admission("late", time.Minute)) // 40 of the pool's 100
	require.NoError(t, err)
	require.True(t, d.Allowed)

	admin := redis.NewClient(&redis.Options{Addr: srv.Addr, ReadTimeout: 10 * stall})
	t.Cleanup(func() { assert.NoError(t, admin.Close()) })
	require.NoError(t, busyWait.Load(ctx, admin).Err())
	busy := make(chan error, 1)
	go func() { busy <- busyWait.Run(ctx, admin, nil, stall.Microseconds()).Err() }()
	probe := redis.NewClient(&redis.Options{Addr: srv.Addr, ReadTimeout: 20 * time.Millisecond, MaxRetries: -1})
	t.Cleanup(func() { assert.NoError(t, probe.Close()) })
	require.Eventually(t, func() bool { return probe.Ping(ctx).Err() != nil }, time.Second, time.Millisecond,
		"the busy script runs (a ping times out)")
	_, err = s.Refund(ctx, []limiter.Refund{{Key: poolKey, Limit: poolLimit, Units: 10}}, epoch)
	require.Error(t, err, "the reply is late")
	assert.True(t, redisstore.Unavailable(err), "a timeout: Redis is slow")
	assert.False(t, redisstore.Unsent(err), "and the refund may have run: %v", err)
	require.NoError(t, <-busy)

	pool, _, err := levels(ctx, s)
	require.NoError(t, err)
	assert.Equal(t, int64(70), pool, "the refund ran once")
}
