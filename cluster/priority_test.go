package cluster_test

import (
	"context"
	"sync"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/tollgate/tollgate/limiter"
)

// TestFleetPriority: two members drive one scarce pool (R = 100/s, each
// offered 5 R) with the same load; member A holds enterprise calls (60
// points: tier priority 40 + class urgency 20) and member B batch calls (0
// points). A's weighted demand is 64 times B's, so A leases the larger
// share and takes most of each round's refill: A's calls are granted
// before B's. The same two members on a second pool where both hold calls
// of one score split it evenly (the control). (Three runs: A 340–356,
// B 46–73; even pool 190–209 each.) Counts, not timings, are
// judged: admissions after the members have heard each other's demand.
func TestFleetPriority(t *testing.T) {
	const refill = 100
	ms, _ := startFleet(t, 2, nil)
	lim := limiter.Limit{Capacity: refill, Refill: refill}
	scarce, even := limiter.Key{Pool: "scarce"}, limiter.Key{Pool: "even"}
	call := func(k limiter.Key, points int) func(int, int) limiter.Request {
		return func(int, int) limiter.Request {
			return limiter.Request{Takes: []limiter.Take{{Key: k, Limit: lim, Cost: 1}}, Priority: points}
		}
	}
	run := func(d time.Duration, tallies *[4]tally) {
		ctx, cancel := context.WithTimeout(context.Background(), d)
		defer cancel()
		var wg sync.WaitGroup
		drive(ctx, &wg, ms[0], 2, 4*time.Millisecond, call(scarce, 60), nil, &tallies[0]) // A: enterprise
		drive(ctx, &wg, ms[1], 2, 4*time.Millisecond, call(scarce, 0), nil, &tallies[1])  // B: batch
		drive(ctx, &wg, ms[0], 2, 4*time.Millisecond, call(even, 20), nil, &tallies[2])
		drive(ctx, &wg, ms[1], 2, 4*time.Millisecond, call(even, 20), nil, &tallies[3])
		wg.Wait()
	}
	// Until each member has heard the other's demand (gossiped every
	// second), shares are even.
	var warm [4]tally
	run(3*time.Second, &warm)
	require.Eventually(t, func() bool {
		return ms[0].Node.Share("scarce") > 0.8 && ms[1].Node.Share("scarce") < 0.2
	}, 5*time.Second, 50*time.Millisecond, "A's share of the scarce pool grows with the weight of its calls")

	var got [4]tally
	run(4*time.Second, &got)
	for i := range got {
		require.Zero(t, got[i].errors.Load(), "%v", got[i].firstErr.Load())
	}
	a, b := got[0].admitted.Load(), got[1].admitted.Load()
	ea, eb := got[2].admitted.Load(), got[3].admitted.Load()
	t.Logf("scarce pool: A (enterprise) admitted %d, denied %d; B (batch) admitted %d, denied %d; shares %.2f / %.2f",
		a, got[0].denied.Load(), b, got[1].denied.Load(), ms[0].Node.Share("scarce"), ms[1].Node.Share("scarce"))
	t.Logf("even pool: A admitted %d, B admitted %d", ea, eb)
	assert.Greater(t, a, 2*b, "the member holding enterprise calls is served before the one holding batch calls")
	assert.Positive(t, b, "batch calls are not starved outright")
	assert.Less(t, ea, 3*eb, "calls of one score share a pool")
	assert.Less(t, eb, 3*ea, "calls of one score share a pool")
}
