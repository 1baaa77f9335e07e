package redisstore_test

import (
	"context"
	"net"
	"syscall"
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

// masterOf is the address of the master that holds key.
func masterOf(t *testing.T, c *redis.ClusterClient, key string) string {
	t.Helper()
	slot, err := c.ClusterKeySlot(context.Background(), key).Result()
	require.NoError(t, err)
	slots, err := c.ClusterSlots(context.Background()).Result()
	require.NoError(t, err)
	for _, s := range slots {
		if int64(s.Start) <= slot && slot <= int64(s.End) {
			return s.Nodes[0].Addr
		}
	}
	t.Fatalf("no master holds slot %d", slot)
	return ""
}

// TestSpreadPartialRefundNotUnsent: a refund spread over two masters, one
// of which cannot be reached, gives back the units on the other; its
// error must not say Unsent, or a caller (a fleet member's sync) sends the
// whole refund again and the reachable pool gets its units twice.
func TestSpreadPartialRefundNotUnsent(t *testing.T) {
	ctx := context.Background()
	prefix := redistest.Prefix(t)
	good := spreadStore(t, rc.Client(t), prefix)
	lim := limiter.Limit{Capacity: 10, Refill: 1}
	// Two pools on different masters.
	keyOf := func(pool string) string { return "{" + prefix + ":p:" + redisstore.HashTagForTest(pool) + "}:k:x" }
	admin := rc.Client(t)
	a, b := "pool-a", ""
	for i := range 64 {
		cand := "pool-b" + string(rune('a'+i%26)) + string(rune('a'+i/26))
		if masterOf(t, admin, keyOf(cand)) != masterOf(t, admin, keyOf(a)) {
			b = cand
			break
		}
	}
	require.NotEmpty(t, b, "a pool on another master")
	for _, p := range []string{a, b} {
		d, err := good.Reserve(ctx, limiter.Request{Now: storetest.Epoch, Takes: []limiter.Take{{Key: limiter.Key{Pool: p}, Limit: lim, Cost: 5}}})
		require.NoError(t, err)
		require.True(t, d.Allowed)
	}
	down := masterOf(t, admin, keyOf(b))
	cut := redis.NewClusterClient(&redis.ClusterOptions{Addrs: rc.Addrs(), MaxRedirects: 0,
		Dialer: func(ctx context.Context, network, addr string) (net.Conn, error) {
			if addr == down {
				return nil, &net.OpError{Op: "dial", Net: network, Err: syscall.ECONNREFUSED}
			}
			var d net.Dialer
			return d.DialContext(ctx, network, addr)
		}})
	t.Cleanup(func() { _ = cut.Close() })
	partial := spreadStore(t, cut, prefix)
	_, err := partial.Refund(ctx, []limiter.Refund{{Key: limiter.Key{Pool: a}, Limit: lim, Units: 5}, {Key: limiter.Key{Pool: b}, Limit: lim, Units: 5}}, storetest.Epoch)
	require.Error(t, err)
	assert.False(t, partial.Unsent(err), "part of the refund ran: sent again, it would give pool-a its units twice")
	left := func(p string) int64 {
		d, err := good.Peek(ctx, limiter.Request{Now: storetest.Epoch, Takes: []limiter.Take{{Key: limiter.Key{Pool: p}, Limit: lim}}})
		require.NoError(t, err)
		return d.Buckets[0].Remaining
	}
	assert.Equal(t, int64(10), left(a), "the reachable pool got its units back")
	assert.Equal(t, int64(5), left(b))
}

// TestSpreadPeekPoolDenies: a dry run that a shared pool refuses answers as
// the admission would, spread or not: the pool's reason and wait, and the
// tenant's slots and budgets as they are (not as an admission would leave
// them).
func TestSpreadPeekPoolDenies(t *testing.T) {
	ctx := context.Background()
	for name, spread := range map[string]bool{"one tag": false, "spread": true} {
		t.Run(name, func(t *testing.T) {
			s := clusterStore(t, rc.Client(t), redistest.Prefix(t), spread)
			d, err := s.Reserve(ctx, call("first", "acme/ops", 9, 100))
			require.NoError(t, err)
			require.True(t, d.Allowed)
			peek, err := s.Peek(ctx, call("second", "acme/ops", 5, 100))
			require.NoError(t, err)
			res, err := s.Reserve(ctx, call("second", "acme/ops", 5, 100))
			require.NoError(t, err)
			require.False(t, res.Allowed)
			assert.Equal(t, limiter.ReasonRateLimited, peek.Reason)
			assert.Equal(t, res.Reason, peek.Reason)
			assert.Equal(t, res.Blocking, peek.Blocking)
			assert.Equal(t, res.RetryAfter, peek.RetryAfter)
			assert.Equal(t, res.InFlight, peek.InFlight)
			require.Len(t, peek.Budgets, len(res.Budgets))
			for i := range res.Budgets {
				assert.Equal(t, res.Budgets[i].Reserved, peek.Budgets[i].Reserved, "budget %d", i)
				assert.Equal(t, res.Budgets[i].Spent, peek.Budgets[i].Spent, "budget %d", i)
			}
		})
	}
}

// TestSpreadFinishRecordOfAnotherTenant: a reservation held on a shared
// pool alone lives in the slot of no tenant; finishing it with a call
// record of a client booked that client's history in the same script, a
// CROSSSLOT error on every try. Spread, the history goes to the client's
// slot after the finish, once.
func TestSpreadFinishRecordOfAnotherTenant(t *testing.T) {
	ctx := context.Background()
	s := spreadStore(t, rc.Client(t), redistest.Prefix(t))
	req := limiter.Request{Now: storetest.Epoch, Takes: []limiter.Take{{Key: limiter.Key{Pool: "gpt"}, Limit: sharedLimit, Cost: 1}},
		Hold: &limiter.Hold{ID: "solo", TTL: time.Minute, Period: spreadPeriod, Cost: 10}}
	d, err := s.Reserve(ctx, req)
	require.NoError(t, err)
	require.True(t, d.Allowed)
	rec := &limiter.CallRecord{RequestID: "q-solo", Client: "acme", Month: spreadPeriod, Route: "openai", Model: "gpt-4o", InputTokens: 3, OutputTokens: 4, Estimate: 10}
	e := limiter.Ending{ID: "solo", Outcome: limiter.OutcomeSettled, Actual: 7, Now: storetest.Epoch, Record: rec}
	st, err := s.Finish(ctx, e)
	require.NoError(t, err)
	assert.Equal(t, policy.Money(7), st.Spent)
	again, err := s.Finish(ctx, e)
	require.NoError(t, err)
	assert.True(t, again.Repeat)
	rows, err := s.History(ctx, "acme", []string{spreadPeriod})
	require.NoError(t, err)
	assert.Equal(t, []limiter.HistoryRow{{Month: spreadPeriod, Route: "openai", Model: "gpt-4o", Calls: 1, Cost: 7, InputTokens: 3, OutputTokens: 4}}, rows)
	c, err := s.CostRecord(ctx, "q-solo")
	require.NoError(t, err)
	assert.Equal(t, policy.Money(7), c.Actual)
}
