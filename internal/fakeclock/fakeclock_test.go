package fakeclock_test

import (
	"sync/atomic"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/tollgate/tollgate/internal/fakeclock"
)

var epoch = time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)

func TestAfterFunc(t *testing.T) {
	c := fakeclock.New(epoch)
	var fired atomic.Int32
	c.AfterFunc(2*time.Second, func() { fired.Add(1) })
	stop := c.AfterFunc(3*time.Second, func() { fired.Add(10) })
	assert.Equal(t, 2, c.Pending())

	c.Step(time.Second)
	assert.Zero(t, fired.Load(), "not due yet")
	c.Step(time.Second)
	assert.Equal(t, int32(1), fired.Load(), "Step returns once the due callbacks have")
	assert.True(t, stop(), "still pending")
	assert.False(t, stop(), "stopped once")
	c.Step(time.Hour)
	assert.Equal(t, int32(1), fired.Load())
	assert.Zero(t, c.Pending())
	assert.Equal(t, epoch.Add(time.Hour+2*time.Second), c.Now())

	done := make(chan struct{})
	c.AfterFunc(0, func() { close(done) })
	select {
	case <-done:
	case <-time.After(10 * time.Second):
		require.Fail(t, "a timer of no duration fires at once")
	}
	c.AfterFunc(time.Minute, func() { fired.Add(100) })
	c.Advance(time.Minute)
	require.Eventually(t, func() bool { return fired.Load() == 101 }, 10*time.Second, time.Millisecond, "Advance fires without waiting")
}

// TestNext: the earliest pending timer's time, none once stopped or fired.
func TestNext(t *testing.T) {
	start := epoch
	c := fakeclock.New(start)
	_, ok := c.Next()
	assert.False(t, ok)
	c.AfterFunc(3*time.Second, func() {})
	stop := c.AfterFunc(time.Second, func() {})
	at, ok := c.Next()
	require.True(t, ok)
	assert.Equal(t, start.Add(time.Second), at)
	stop()
	at, _ = c.Next()
	assert.Equal(t, start.Add(3*time.Second), at)
	c.Step(3 * time.Second)
	_, ok = c.Next()
	assert.False(t, ok)
}
