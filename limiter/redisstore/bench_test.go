package redisstore_test

import (
	"context"
	"strconv"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/tollgate/tollgate/internal/redistest"
	"github.com/tollgate/tollgate/limiter"
	"github.com/tollgate/tollgate/limiter/memstore"
	"github.com/tollgate/tollgate/limiter/redisstore"
	"github.com/tollgate/tollgate/limiter/storetest"
	"github.com/tollgate/tollgate/policy"
)

// benchRedis returns a store with a prefix of b's own on the package's
// redis-server, its scripts loaded.
func benchRedis(b *testing.B) limiter.Backend { return redisFactory(b)() }

// redisFactory returns a maker of empty Redis stores: each has a prefix of
// its own on one client (connected, scripts loaded), so a new one costs no
// round trip.
func redisFactory(b *testing.B) func() limiter.Backend {
	b.Helper()
	c := srv.Client(b)
	s, err := redisstore.New(c, redisstore.Config{Prefix: redistest.Prefix(b)})
	require.NoError(b, err)
	require.NoError(b, s.Load(context.Background()))
	return func() limiter.Backend {
		s, err := redisstore.New(c, redisstore.Config{Prefix: redistest.Prefix(b)})
		require.NoError(b, err)
		return s
	}
}

// memoryFactory returns a maker of empty memory stores as the sidecar runs
// them by default; each new one closes the one before.
func memoryFactory(b *testing.B) func() limiter.Backend {
	b.Helper()
	var last *memstore.Store
	b.Cleanup(func() {
		if last != nil {
			require.NoError(b, last.Close())
		}
	})
	return func() limiter.Backend {
		if last != nil {
			require.NoError(b, last.Close())
		}
		s, err := memstore.New(memstore.DefaultConfig())
		require.NoError(b, err)
		last = s
		return s
	}
}

func BenchmarkStore(b *testing.B) {
	storetest.Bench(b, func(b *testing.B) limiter.Store { return benchRedis(b) })
}

// BenchmarkScripts measures each script of the Redis store, one call at a
// time (so ns/op is one round trip to a loopback Redis plus the script), and
// the memory store doing the same work beside it. Requests carry no time:
// each store reads its own clock, as in production. Limits and budgets are
// large enough that every admission is granted.
//
// The benchmarks with holds work in batches of holdBatch calls, each on a
// new, empty store prepared with the timer stopped (the holds that settle
// and release end are made there too). So every call meets the same state,
// at most holdBatch holds in flight or ended, whatever b.N is, and the timer
// stops once per batch rather than once per call.
func BenchmarkScripts(b *testing.B) {
	const holdBatch = 100
	big := limiter.Limit{Capacity: 1_000_000_000, Refill: 1_000_000_000}
	pool := []limiter.Take{{Key: limiter.Key{Pool: "bench"}, Limit: big, Cost: 1}}
	poolClient := []limiter.Take{pool[0], {Key: limiter.Key{Pool: "bench", Client: "acme/team"}, Limit: big, Cost: 1}}
	budgets := []limiter.Budget{{Owner: "acme/team", Limit: 1 << 52}, {Owner: "acme", Limit: limiter.Unlimited}}
	// One admission per id of a batch; ids repeat from batch to batch, each
	// batch having a store of its own.
	admissions := make([]limiter.Request, holdBatch)
	for i := range admissions {
		admissions[i] = limiter.Request{Takes: poolClient, Hold: &limiter.Hold{
			ID: "h" + strconv.Itoa(i), TTL: time.Minute, Period: "2026-01", Cost: 1000, Budgets: budgets,
			Slot: &limiter.Slot{Client: "acme/team", Max: 1 << 30},
		}}
	}
	ctx := context.Background()
	must := func(b *testing.B, err error) {
		if err != nil {
			b.Fatal(err)
		}
	}
	granted := func(b *testing.B, d limiter.Decision, err error) {
		must(b, err)
		if !d.Allowed {
			b.Fatalf("denied: %s", d.Reason)
		}
	}
	// untimed runs f with the timer stopped.
	untimed := func(b *testing.B, f func()) {
		b.StopTimer()
		f()
		b.StartTimer()
	}
	// held returns a new store holding every admission of a batch.
	held := func(b *testing.B, fresh func() limiter.Backend) limiter.Backend {
		s := fresh()
		for _, req := range admissions {
			d, err := s.Reserve(ctx, req)
			granted(b, d, err)
		}
		return s
	}

	scripts := []struct {
		name string
		run  func(b *testing.B, fresh func() limiter.Backend)
	}{
		{"reserve", func(b *testing.B, fresh func() limiter.Backend) {
			s, req := fresh(), limiter.Request{Takes: pool}
			for b.Loop() {
				d, err := s.Reserve(ctx, req)
				granted(b, d, err)
			}
		}},
		{"reserve+hold", func(b *testing.B, fresh func() limiter.Backend) {
			var s limiter.Backend
			for i := 0; b.Loop(); i++ {
				if i%holdBatch == 0 {
					untimed(b, func() { s = fresh() })
				}
				d, err := s.Reserve(ctx, admissions[i%holdBatch])
				granted(b, d, err)
			}
		}},
		{"peek+hold", func(b *testing.B, fresh func() limiter.Backend) {
			s := fresh()
			p, ok := s.(limiter.Peeker)
			if !ok {
				b.Fatalf("%T has no Peek", s)
			}
			for i := 0; b.Loop(); i++ {
				d, err := p.Peek(ctx, admissions[i%holdBatch])
				granted(b, d, err)
			}
		}},
		{"settle", func(b *testing.B, fresh func() limiter.Backend) {
			var s limiter.Backend
			for i := 0; b.Loop(); i++ {
				if i%holdBatch == 0 {
					untimed(b, func() { s = held(b, fresh) })
				}
				_, err := s.Settle(ctx, admissions[i%holdBatch].Hold.ID, 600)
				must(b, err)
			}
		}},
		{"release", func(b *testing.B, fresh func() limiter.Backend) {
			var s limiter.Backend
			for i := 0; b.Loop(); i++ {
				if i%holdBatch == 0 {
					untimed(b, func() { s = held(b, fresh) })
				}
				_, err := s.Release(ctx, admissions[i%holdBatch].Hold.ID)
				must(b, err)
			}
		}},
		{"finish", func(b *testing.B, fresh func() limiter.Backend) { // settle, refund both buckets, cap the pool
			var s limiter.Backend
			e := limiter.Ending{Outcome: limiter.OutcomeSettled, Actual: 600, Used: []limiter.PoolUse{{Pool: "bench", Units: 0}},
				Throttles: []limiter.Throttle{{Key: pool[0].Key, Limit: big, Cap: big.Capacity - 1000}}}
			for i := 0; b.Loop(); i++ {
				if i%holdBatch == 0 {
					untimed(b, func() { s = held(b, fresh) })
				}
				e.ID = admissions[i%holdBatch].Hold.ID
				_, err := s.(limiter.Finisher).Finish(ctx, e)
				must(b, err)
			}
		}},
		{"expire", func(b *testing.B, fresh func() limiter.Backend) { // nothing is due
			s := fresh()
			for b.Loop() {
				n, err := s.Expire(ctx, time.Time{}, 100)
				must(b, err)
				if n != 0 {
					b.Fatalf("expired %d", n)
				}
			}
		}},
		{"usage", func(b *testing.B, fresh func() limiter.Backend) {
			s := fresh()
			d, err := s.Reserve(ctx, admissions[0])
			granted(b, d, err)
			for b.Loop() {
				u, err := s.Usage(ctx, "2026-01", budgets, time.Time{})
				must(b, err)
				if u.Budgets[0].Reserved != policy.Money(1000) {
					b.Fatalf("usage %+v", u)
				}
			}
		}},
	}
	backends := []struct {
		name    string
		factory func(b *testing.B) func() limiter.Backend
	}{
		{"memory", memoryFactory},
		{"redis", redisFactory},
	}
	for _, be := range backends {
		b.Run(be.name, func(b *testing.B) {
			for _, sc := range scripts {
				b.Run(sc.name, func(b *testing.B) {
					fresh := be.factory(b)
					b.ReportAllocs()
					sc.run(b, fresh)
				})
			}
		})
	}
}
