package cluster_test

import (
	"context"
	"fmt"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/tollgate/tollgate/cluster"
	"github.com/tollgate/tollgate/internal/fakeclock"
	"github.com/tollgate/tollgate/limiter"
	"github.com/tollgate/tollgate/limiter/memstore"
)

// unreachable is a shared store that cannot be reached: every call fails
// as a lost connection does, so a member decides in outage mode.
type unreachable struct{ *memstore.Store }

func (unreachable) Reserve(context.Context, limiter.Request) (limiter.Decision, error) {
	return limiter.Decision{}, errLost
}

func (unreachable) Lease(context.Context, []limiter.LeaseAsk, time.Time) ([]limiter.LeaseGrant, error) {
	return nil, errLost
}

// fleetOf is a member of a fleet of n live members, each with an even
// share of the demand.
type fleetOf struct {
	name string
	n    int
}

func (f fleetOf) Name() string                       { return f.name }
func (f fleetOf) Live() int                          { return f.n }
func (f fleetOf) Share(string) float64               { return 1 / float64(f.n) }
func (fleetOf) Spend([]limiter.SpendDelta)           {}
func (fleetOf) Backoff(string, time.Duration, int64) {}

// TestOutageSharesOfARate: in outage mode each of N members refills its
// bucket at exactly 1/N of the pool's rate, also when the rate is no
// whole number of units a second or is smaller than N: together the
// members never hand out more than the rate over the outage (they start
// from empty, having no lease), and over whole periods exactly the rate.
// (Shares in whole units a second gave 55/s each for 166/s among three,
// and 1/s each for 1/s among three: three times the rate.)
func TestOutageSharesOfARate(t *testing.T) {
	tests := map[string]struct {
		limit   limiter.Limit
		members int
		period  time.Duration // after which each member's share is whole
		each    int64         // units each member hands out per period
	}{
		"10000/min among 3": {limit: limiter.Limit{Capacity: 10_000, Refill: 500, Per: 3 * time.Second}, members: 3, period: 3 * time.Minute, each: 10_000},
		"166/s among 3":     {limit: limiter.Limit{Capacity: 10_000, Refill: 166}, members: 3, period: 3 * time.Second, each: 166},
		"1/s among 3":       {limit: limiter.Limit{Capacity: 10, Refill: 1}, members: 3, period: 3 * time.Second, each: 1},
		"100/h among 2":     {limit: limiter.Limit{Capacity: 100, Refill: 1, Per: 36 * time.Second}, members: 2, period: 72 * time.Second, each: 1},
	}
	for name, tc := range tests {
		t.Run(name, func(t *testing.T) {
			ctx := context.Background()
			clk := fakeclock.New(epoch)
			mem, err := memstore.New(memstore.Config{Clock: clk})
			require.NoError(t, err)
			t.Cleanup(func() { assert.NoError(t, mem.Close()) })
			members := make([]*cluster.Store, tc.members)
			for i := range members {
				cfg := cluster.DefaultConfig()
				cfg.Clock, cfg.SyncEvery = clk, time.Hour
				s, err := cluster.NewStore(cfg, unreachable{mem}, fleetOf{fmt.Sprint("m", i), tc.members}, prometheus.NewRegistry())
				require.NoError(t, err)
				t.Cleanup(func() { assert.ErrorContains(t, s.Close(), "leaving in outage mode", "the store is still unreachable") })
				members[i] = s
			}
			k := limiter.Key{Pool: "gpt"}
			takeAll := func(s *cluster.Store) int64 {
				var n int64
				for {
					d, err := s.Reserve(ctx, limiter.Request{Takes: []limiter.Take{{Key: k, Limit: tc.limit, Cost: 1}}})
					require.NoError(t, err)
					if !d.Allowed {
						return n
					}
					n++
				}
			}
			// Slow is not down: a member enters outage mode once the store
			// has answered nothing for DownAfter.
			for _, s := range members {
				d, err := s.Reserve(ctx, limiter.Request{Takes: []limiter.Take{{Key: k, Limit: tc.limit, Cost: 1}}})
				require.NoError(t, err)
				require.False(t, d.Allowed, "slow, and holding nothing: refused for now")
			}
			clk.Advance(cluster.DefaultConfig().DownAfter)
			var given int64
			for _, s := range members {
				given += takeAll(s)
			}
			for _, s := range members {
				mode, _ := s.Mode()
				require.Equal(t, "outage", mode)
			}
			require.Zero(t, given, "no lease, nothing to start from")

			start := clk.Now()
			for p := int64(1); p <= 3; p++ {
				for step := 1; step <= 7; step++ {
					clk.Set(start.Add(time.Duration(p-1)*tc.period + time.Duration(step)*tc.period/7))
					for _, s := range members {
						given += takeAll(s)
					}
					rate := time.Duration(tc.limit.Refill) * clk.Now().Sub(start) / max(tc.limit.Per, time.Second)
					require.LessOrEqual(t, given, int64(rate), "never more than the rate over the outage")
				}
				assert.Equal(t, p*tc.each*int64(tc.members), given, "after %d periods: exactly each member's share", p)
			}
		})
	}
}
