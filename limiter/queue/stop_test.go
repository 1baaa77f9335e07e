package queue_test

import (
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/tollgate/tollgate/limiter/queue"
	"github.com/tollgate/tollgate/policy"
)

// TestStopHoldsStartResumes: while the scheduler is stopped nothing is let
// go, though capacity is back and lines are kicked; new calls still queue;
// Start lets them go, best first.
func TestStopHoldsStartResumes(t *testing.T) {
	r := newRig(t, nil)
	b := r.bucket("gpt", 2, 1)
	require.True(t, b.take(2).Allowed)
	r.q.Stop()
	require.True(t, r.q.Stopped())
	out := make(chan ended, 2)
	b.submit(out, "first", "a", policy.Normal, 40, 1)
	r.settle(1) // the line's timer, for its deadline
	r.clk.Advance(3 * time.Second)
	r.q.KickAll()
	b.submit(out, "second", "b", policy.Normal, 20, 1)
	r.settle(1)
	noneReady(t, out)
	assert.Equal(t, 2, r.q.Status().Total, "both still held")
	assert.Equal(t, int64(2), b.remaining(), "nothing was taken for them")

	r.q.Start()
	r.q.Start() // idempotent
	assert.False(t, r.q.Stopped())
	got := []string{recv(t, out).id, recv(t, out).id}
	assert.Equal(t, []string{"first", "second"}, got)
}

// TestStoppedStillTimesOut: a held call still ends at its max wait while
// the scheduler is stopped.
func TestStoppedStillTimesOut(t *testing.T) {
	r := newRig(t, nil)
	b := r.bucket("gpt", 1, 1)
	r.q.Stop()
	out := make(chan ended, 1)
	b.submit(out, "held", "a", policy.Fast, 40, 1) // capacity is there: only the stop holds it
	r.settle(1)
	noneReady(t, out)
	r.clk.Advance(r.pol.Class(policy.Fast).MaxWait + time.Millisecond)
	e := recv(t, out)
	assert.Equal(t, queue.Timeout, e.r.Outcome)
	assert.Equal(t, int64(1), b.remaining())
}
