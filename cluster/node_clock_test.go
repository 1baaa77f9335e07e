package cluster_test

import (
	"fmt"
	"testing"
	"time"

	"github.com/hashicorp/memberlist"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/tollgate/tollgate/cluster"
	"github.com/tollgate/tollgate/internal/fakeclock"
)

// quietRounds leaves a node's demand to what it says on joining: its own
// rounds come once an hour, and memberlist's periodic push/pull is off.
func quietRounds(c *cluster.NodeConfig) {
	c.DemandEvery = time.Hour
	c.Tune = func(mc *memberlist.Config) {
		fastProbes(mc)
		mc.PushPullInterval = 0
	}
}

// TestDemandGoesStale: a peer's demand counts toward the shares for three
// demand intervals of the node's clock after it was heard, and not a
// nanosecond longer; the fake clock moves hours without a sleep.
func TestDemandGoesStale(t *testing.T) {
	clk := fakeclock.New(epoch)
	nodes := startNodesWith(t, 2, func(i int, c *cluster.NodeConfig, r *recorder) {
		quietRounds(c)
		c.Clock = clk
		r.demand["gpt"] = []float64{30, 10}[i] // said in the push/pull of the join
	})
	require.Eventually(t, func() bool { return nodes[0].Share("gpt") == 0.75 && nodes[1].Share("gpt") == 0.25 },
		5*time.Second, 10*time.Millisecond, "each heard the other's demand on joining")

	clk.Advance(3 * time.Hour)
	assert.Equal(t, 0.75, nodes[0].Share("gpt"), "three intervals old: still counted")
	assert.Equal(t, 0.25, nodes[1].Share("gpt"))

	clk.Advance(time.Nanosecond)
	assert.Equal(t, 1.0, nodes[0].Share("gpt"), "stale: the peer's demand counts as none")
	assert.Equal(t, 1.0, nodes[1].Share("gpt"))
}

// TestPauseInTransit: a pause is sent as the time it ends, and a member
// applies what is left of it by its own clock; one already over when it
// arrives is not applied.
func TestPauseInTransit(t *testing.T) {
	tests := map[string]struct {
		ahead time.Duration // how far the receiver's clock is ahead of the sender's
		want  []string
	}{
		"same time":       {ahead: 0, want: []string{"node-0 gpt 30s 0"}},
		"ten seconds on":  {ahead: 10 * time.Second, want: []string{"node-0 gpt 20s 0"}},
		"a second left":   {ahead: 29 * time.Second, want: []string{"node-0 gpt 1s 0"}},
		"over on arrival": {ahead: 30 * time.Second, want: nil},
	}
	for name, tc := range tests {
		t.Run(name, func(t *testing.T) {
			clocks := []*fakeclock.Clock{fakeclock.New(epoch), fakeclock.New(epoch.Add(tc.ahead))}
			nodes := startNodesWith(t, 2, func(i int, c *cluster.NodeConfig, _ *recorder) { c.Clock = clocks[i] })
			nodes[0].Backoff("gpt", 30*time.Second, 0)
			nodes[0].Backoff("marker", 0, 7) // a signal that is always applied, sent after
			require.Eventually(t, func() bool {
				_, b := nodes[1].rec.heard()
				for _, s := range b {
					if s == "node-0 marker 0s 7" {
						return true
					}
				}
				return false
			}, 5*time.Second, 10*time.Millisecond)
			var gpt []string
			_, heard := nodes[1].rec.heard()
			for _, s := range heard {
				if s != "node-0 marker 0s 7" {
					gpt = append(gpt, s)
				}
			}
			assert.Equal(t, tc.want, gpt, fmt.Sprintf("receiver %v ahead", tc.ahead))
		})
	}
}

// TestSignalsOnAStoppedClock: two signals of one pool said at the same
// instant of the node's clock are both applied, in order (each carries a
// stamp later than the one before, not the clock's reading alone).
func TestSignalsOnAStoppedClock(t *testing.T) {
	clk := fakeclock.New(epoch)
	nodes := startNodesWith(t, 2, func(_ int, c *cluster.NodeConfig, _ *recorder) { c.Clock = clk })
	heard := func(n int) func() bool {
		return func() bool { _, b := nodes[1].rec.heard(); return len(b) >= n }
	}
	nodes[0].Backoff("gpt", 0, 5)
	require.Eventually(t, heard(1), 5*time.Second, 10*time.Millisecond)
	nodes[0].Backoff("gpt", 0, 3)
	require.Eventually(t, heard(2), 5*time.Second, 10*time.Millisecond, "the second signal, said at the same instant, is applied too")
	_, b := nodes[1].rec.heard()
	assert.Equal(t, []string{"node-0 gpt 0s 5", "node-0 gpt 0s 3"}, b)
}
