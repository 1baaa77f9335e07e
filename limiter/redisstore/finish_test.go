package redisstore_test

import (
	"context"
	"encoding/binary"
	"errors"
	"strconv"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/tollgate/tollgate/internal/fakeclock"
	"github.com/tollgate/tollgate/internal/redistest"
	"github.com/tollgate/tollgate/limiter"
	"github.com/tollgate/tollgate/limiter/memstore"
	"github.com/tollgate/tollgate/limiter/redisstore"
	"github.com/tollgate/tollgate/policy"
)

// TestFinishRoundTrips: a whole call on Redis, counted by the RoundTrips
// hook once the scripts are loaded, is one admission (a reservation with
// its takes, budgets and slot) and one Finish (its cost, its refunds, the
// upstream's throttle): two round trips, where settling alone took three.
func TestFinishRoundTrips(t *testing.T) {
	ctx := context.Background()
	c := redis.NewClient(&redis.Options{Addr: srv.Addr, PoolSize: 1})
	t.Cleanup(func() { assert.NoError(t, c.Close()) })
	require.NoError(t, c.Ping(ctx).Err()) // the handshake is a round trip too: warm it first
	s := storeOn(t, c)
	require.NoError(t, s.Load(ctx))
	rt := &redisstore.RoundTrips{}
	c.AddHook(rt)

	d, err := s.Reserve(ctx, admission("call", time.Minute))
	require.NoError(t, err)
	require.True(t, d.Allowed)
	st, err := s.Finish(ctx, limiter.Ending{ID: "call", Outcome: limiter.OutcomeSettled, Actual: 1000,
		Used:      []limiter.PoolUse{{Pool: "chat", Units: 15}},
		Throttles: []limiter.Throttle{{Key: poolKey, Limit: poolLimit, Cap: 70}},
		Savings:   []limiter.Saving{{Strategy: "downgrade", Amount: 41_200_000}},
		Now:       epoch})
	require.NoError(t, err)
	assert.Equal(t, limiter.Settlement{ID: "call", Outcome: limiter.OutcomeSettled, Estimated: holdCost, Spent: 1000}, st)
	assert.Equal(t, int64(2), rt.Count(), "admit, then finish (its savings too): one round trip each")

	pool, client, err := levels(ctx, s)
	require.NoError(t, err)
	assert.Equal(t, int64(70), pool, "40 charged, 25 back (85), then capped at 70")
	assert.Equal(t, int64(35), client, "20 charged, 15 used: 5 back")
	before := rt.Count()
	u, err := s.Usage(ctx, period, chain, epoch)
	require.NoError(t, err)
	assert.Equal(t, int64(1), rt.Count()-before, "usage, savings included, is one round trip")
	assert.Zero(t, u.InFlight, "the slot is free")
	assert.Equal(t, policy.Money(1000), u.Budgets[1].Spent)
	assert.Equal(t, []limiter.Saving{{Strategy: "downgrade", Amount: 41_200_000}}, u.Savings)
}

// TestFinishRecordBounded: the record of what an admission charged is as
// large as its keys, and a hold charging more than MaxCharges buckets is
// refused before anything is written.
func TestFinishRecordBounded(t *testing.T) {
	ctx := context.Background()
	c := srv.Client(t)
	s, tag := prefixedStore(t, c)
	takes := make([]limiter.Take, limiter.MaxCharges+1)
	for i := range takes {
		takes[i] = limiter.Take{Key: limiter.Key{Pool: "p", Client: strings.Repeat("c", i+1)}, Limit: poolLimit, Cost: 1}
	}
	req := limiter.Request{Takes: takes, Hold: &limiter.Hold{ID: "many", TTL: time.Minute, Period: period, Cost: 1}, Now: epoch}
	_, err := s.Reserve(ctx, req)
	require.ErrorContains(t, err, "charges")
	assert.Empty(t, scanKeys(t, c, tag), "nothing written")

	req.Takes = takes[:limiter.MaxCharges]
	d, err := s.Reserve(ctx, req)
	require.NoError(t, err)
	require.True(t, d.Allowed)
	rec, err := c.HGet(ctx, tag+"r:many", "charges").Result()
	require.NoError(t, err)
	assert.Less(t, len(rec), limiter.MaxCharges*(20+len("n:p:n:")+limiter.MaxCharges+2), "a few bytes a bucket beside its key")
	st, err := s.Finish(ctx, limiter.Ending{ID: "many", Outcome: limiter.OutcomeReleased, Used: []limiter.PoolUse{{Pool: "p", Units: 0}}, Now: epoch})
	require.NoError(t, err)
	assert.False(t, st.Repeat)
	d, err = s.Reserve(ctx, limiter.Request{Takes: []limiter.Take{{Key: takes[limiter.MaxCharges-1].Key, Limit: poolLimit}}, Now: epoch})
	require.NoError(t, err)
	assert.Equal(t, poolLimit.Capacity, d.Buckets[0].Remaining, "the last charge was read back whole")
}

// FuzzFinish ends a held call with whatever Ending the input describes, on
// the Redis store and the memory store side by side. Neither may panic;
// they must agree (the same settlement, or both refuse or both find no
// reservation, and the same buckets after); and a refused ending must leave
// the reservation held, its slot and money still there to end properly:
// malformed input never leaks a reservation.
//
// Input: id and outcome select among a few good and bad values; actual and
// the units are raw; each 8-byte group of rest adds a PoolUse (odd first
// byte) or a Throttle.
func FuzzFinish(f *testing.F) {
	f.Add(uint8(0), uint8(0), int64(1000), []byte{1, 0, 0, 0, 0, 0, 0, 15, 2, 1, 0, 0, 0, 0, 0, 70})
	f.Add(uint8(0), uint8(1), int64(0), []byte{1, 1, 0, 0, 0, 0, 0, 0})
	f.Add(uint8(1), uint8(0), int64(5), []byte{})
	f.Add(uint8(2), uint8(2), int64(-1), []byte{1, 0, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff})
	f.Add(uint8(0), uint8(0), int64(1)<<53, []byte{1, 0, 0, 0, 0, 0, 0, 1, 1, 0, 0, 0, 0, 0, 0, 2})
	f.Add(uint8(3), uint8(0), int64(7), []byte{0, 2, 0, 0, 0, 0, 0, 0, 0, 2, 0, 0, 0, 0, 0, 0})
	f.Add(uint8(0), uint8(0), int64(7), []byte{4, 3, 0x7f, 0, 0, 0, 0, 0, 6, 3, 0, 0, 0, 1, 0, 0})
	f.Add(uint8(0), uint8(0), int64(7), []byte{1, 0, 0, 0, 0, 0, 0, 15, 2, 16, 0, 0, 0, 0, 0, 70, 4, 21, 0, 0, 0, 0, 0, 3}) // fractional throttles
	c := srv.Client(f)
	var runs atomic.Int64 // fuzzing runs many inputs under one test name: keep their prefixes apart
	f.Fuzz(func(t *testing.T, idSel, outSel uint8, actual int64, rest []byte) {
		ctx := context.Background()
		e := fuzzEnding(idSel, outSel, actual, rest)
		clk := fakeclock.New(epoch)
		mem, err := memstore.New(memstore.Config{Clock: clk})
		require.NoError(t, err)
		defer func() { assert.NoError(t, mem.Close()) }()
		red, err := redisstore.New(c, redisstore.Config{Prefix: redistest.Prefix(t) + ":" + strconv.FormatInt(runs.Add(1), 10)})
		require.NoError(t, err)
		stores := map[string]interface {
			limiter.Backend
			limiter.Finisher
		}{"memory": mem, "redis": red}

		type outcome struct {
			st            limiter.Settlement
			refused, lost bool
			pool, client  int64
			inFlight      int64
		}
		got := map[string]outcome{}
		for name, s := range stores {
			d, err := s.Reserve(ctx, admission("call", time.Minute))
			require.NoError(t, err)
			require.True(t, d.Allowed)
			st, err := s.Finish(ctx, e)
			o := outcome{st: st, lost: errors.Is(err, limiter.ErrUnknownReservation)}
			o.refused = err != nil && !o.lost
			if o.refused {
				require.Error(t, e.Validate(), "%s refused a valid ending: %v", name, err)
			}
			lv, err := s.Reserve(ctx, limiter.Request{Takes: []limiter.Take{{Key: poolKey, Limit: poolLimit}, {Key: clientKey, Limit: clientLimit}}, Now: epoch})
			require.NoError(t, err)
			o.pool, o.client = lv.Buckets[0].Remaining, lv.Buckets[1].Remaining
			u, err := s.Usage(ctx, period, chain, epoch)
			require.NoError(t, err)
			o.inFlight = u.InFlight
			got[name] = o

			// Whatever happened, the call ends properly now: nothing leaks.
			_, err = s.Release(ctx, "call")
			require.NoError(t, err, name)
			u, err = s.Usage(ctx, period, chain, epoch)
			require.NoError(t, err)
			assert.Zero(t, u.InFlight, "%s: the slot is free", name)
			assert.Zero(t, u.Budgets[0].Reserved, "%s: nothing is held", name)
			if o.refused {
				assert.Equal(t, int64(1), o.inFlight, "%s: a refused ending leaves the reservation held", name)
				assert.Equal(t, [2]int64{60, 30}, [2]int64{o.pool, o.client}, "%s: a refused ending changes no bucket", name)
			}
		}
		assert.Equal(t, got["memory"], got["redis"], "the stores agree on %+v", e)
	})
}

// fuzzEnding builds FuzzFinish's Ending.
func fuzzEnding(idSel, outSel uint8, actual int64, rest []byte) limiter.Ending {
	ids := []string{"call", "other", "", "a b"}
	outcomes := []limiter.Outcome{limiter.OutcomeSettled, limiter.OutcomeReleased, limiter.OutcomeExpired, "done"}
	pools := []string{"chat", "other", "", "chat\n"}
	keys := []limiter.Key{poolKey, clientKey, {Pool: "elsewhere"}, {Pool: "chat", Client: "x y"}}
	limits := []limiter.Limit{poolLimit, clientLimit, {Capacity: 0, Refill: 1}, {Capacity: 10, Refill: 1 << 40},
		{Capacity: 100, Refill: 1, Per: 36 * time.Second}, {Capacity: 50, Refill: 500, Per: 3 * time.Second}, // 100/h, 10000/min: rescaled
		{Capacity: 100, Refill: 1, Per: 1500 * time.Millisecond}, {Capacity: 100_000, Refill: 1, Per: 24 * time.Hour}} // refused
	e := limiter.Ending{ID: ids[int(idSel)%len(ids)], Outcome: outcomes[int(outSel)%len(outcomes)], Actual: policy.Money(actual), Now: epoch}
	for len(rest) >= 8 && len(e.Used)+len(e.Throttles) < 8 {
		g := rest[:8]
		rest = rest[8:]
		n := int64(binary.BigEndian.Uint64(append([]byte{0, 0}, g[2:]...)))
		if g[2]&0x80 != 0 {
			n = -n
		}
		if g[0]&1 == 1 {
			e.Used = append(e.Used, limiter.PoolUse{Pool: pools[int(g[1])%len(pools)], Units: n})
			continue
		}
		e.Throttles = append(e.Throttles, limiter.Throttle{Key: keys[int(g[1])%len(keys)], Limit: limits[int(g[1]>>2)%len(limits)],
			Cap: n % 200, Pause: time.Duration(g[0]>>1) * time.Second})
	}
	return e
}

// TestFinishOddKeys: the record of charges is delimited by lengths, so a
// pool or client name holding digits, colons, spaces, newlines or bytes of
// any kind is refunded like any other.
func TestFinishOddKeys(t *testing.T) {
	tests := map[string]limiter.Key{
		"colons and digits": {Pool: "3:a:1", Client: "2:b"},
		"space and newline": {Pool: "p q", Client: "x\n5:y z"},
		"empty client":      {Pool: "12345"},
		"binary":            {Pool: "\x00\xff", Client: "\x01:\x02"},
		"unicode":           {Pool: "gpt-4o", Client: "équipe/東京"},
	}
	for name, k := range tests {
		t.Run(name, func(t *testing.T) {
			ctx := context.Background()
			s := newStore(t)
			other := limiter.Key{Pool: k.Pool + "x", Client: k.Client}
			d, err := s.Reserve(ctx, limiter.Request{Takes: []limiter.Take{{Key: k, Limit: poolLimit, Cost: 30}, {Key: other, Limit: poolLimit, Cost: 30}},
				Hold: &limiter.Hold{ID: "odd", TTL: time.Minute, Period: period, Cost: 1}, Now: epoch})
			require.NoError(t, err)
			require.True(t, d.Allowed)
			_, err = s.Finish(ctx, limiter.Ending{ID: "odd", Outcome: limiter.OutcomeSettled, Used: []limiter.PoolUse{{Pool: k.Pool, Units: 10}}, Now: epoch})
			require.NoError(t, err)
			d, err = s.Reserve(ctx, limiter.Request{Takes: []limiter.Take{{Key: k, Limit: poolLimit}, {Key: other, Limit: poolLimit}}, Now: epoch})
			require.NoError(t, err)
			assert.Equal(t, []int64{90, 70}, []int64{d.Buckets[0].Remaining, d.Buckets[1].Remaining}, "20 back to the named pool, none to its neighbour")
		})
	}
}
