package queue_test

import (
	"context"
	"fmt"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"go.uber.org/goleak"

	"github.com/tollgate/tollgate/internal/fakeclock"
	"github.com/tollgate/tollgate/limiter"
	"github.com/tollgate/tollgate/limiter/memstore"
	"github.com/tollgate/tollgate/limiter/queue"
	"github.com/tollgate/tollgate/policy"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

var epoch = time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)

// rig is a queue on a fake clock in front of real token buckets (a memory
// store on the same clock).
type rig struct {
	t     *testing.T
	clk   *fakeclock.Clock
	store *memstore.Store
	q     *queue.Queue[limiter.Decision]
	pol   policy.Queue

	mu       sync.Mutex
	starving []string
	undoneBy map[string]int64 // units given back by Undo, by pool
	undone   atomic.Int64     // all of them
}

func newRig(t *testing.T, tune func(*policy.Queue)) *rig {
	t.Helper()
	r := &rig{t: t, clk: fakeclock.New(epoch), pol: policy.DefaultQueue(), undoneBy: map[string]int64{}}
	if tune != nil {
		tune(&r.pol)
	}
	s, err := memstore.New(memstore.Config{Clock: r.clk})
	require.NoError(t, err)
	r.store = s
	r.q = queue.New[limiter.Decision](queue.Config{
		Clock:  r.clk,
		Policy: func() policy.Queue { return r.pol },
		OnStarving: func(id, _ string, _ policy.Class, _ time.Duration) {
			r.mu.Lock()
			r.starving = append(r.starving, id)
			r.mu.Unlock()
		},
	})
	t.Cleanup(func() {
		require.NoError(t, r.q.Close())
		require.NoError(t, s.Close())
	})
	return r
}

// bucket is one resource: a token bucket named key.
type bucket struct {
	r     *rig
	key   limiter.Key
	limit limiter.Limit
}

func (r *rig) bucket(name string, capacity, refill int64) *bucket {
	return &bucket{r: r, key: limiter.Key{Pool: name}, limit: limiter.Limit{Capacity: capacity, Refill: refill}}
}

func (b *bucket) take(cost int64) limiter.Decision {
	d, err := b.r.store.Reserve(context.Background(), limiter.Request{Takes: []limiter.Take{{Key: b.key, Limit: b.limit, Cost: cost}}})
	require.NoError(b.r.t, err)
	return d
}

func (b *bucket) remaining() int64 { return b.take(0).Buckets[0].Remaining }

// try is a waiter's attempt on the bucket, as the Decider makes it.
func (b *bucket) try(cost int64) func(context.Context) queue.Attempt[limiter.Decision] {
	return func(ctx context.Context) queue.Attempt[limiter.Decision] {
		d, err := b.r.store.Reserve(ctx, limiter.Request{Takes: []limiter.Take{{Key: b.key, Limit: b.limit, Cost: cost}}})
		switch {
		case err != nil, d.Reason == limiter.ReasonExceedsCapacity:
			return queue.Attempt[limiter.Decision]{Final: true, Value: d}
		case d.Allowed:
			return queue.Attempt[limiter.Decision]{Granted: true, Value: d}
		}
		return queue.Attempt[limiter.Decision]{Key: b.key.String(), RetryAfter: d.RetryAfter, Value: d}
	}
}

func (b *bucket) undo(cost int64) func(context.Context, limiter.Decision) {
	return func(ctx context.Context, _ limiter.Decision) {
		_, err := b.r.store.Refund(ctx, []limiter.Refund{{Key: b.key, Limit: b.limit, Units: cost}}, time.Time{})
		assert.NoError(b.r.t, err)
		b.r.undone.Add(cost)
		b.r.mu.Lock()
		b.r.undoneBy[b.key.Pool] += cost
		b.r.mu.Unlock()
	}
}

// ended is one waiter's result.
type ended struct {
	id string
	r  queue.Result[limiter.Decision]
}

// submit queues a waiter for cost units of b, of class c with points, and
// returns the channel its end arrives on (shared by every waiter of out).
func (b *bucket) submit(out chan ended, id, client string, c policy.Class, points int, cost int64) *queue.Waiter[limiter.Decision] {
	cp := b.r.pol.Class(c)
	w := &queue.Waiter[limiter.Decision]{
		ID: id, Client: client, Class: c, Points: points, Units: cost,
		Deadline: b.r.clk.Now().Add(cp.MaxWait), MaxDepth: cp.MaxDepth,
		Try: b.try(cost), Undo: b.undo(cost),
	}
	b.r.q.Submit(b.key.String(), w, func(r queue.Result[limiter.Decision]) { out <- ended{id, r} })
	return w
}

// settle waits until the queue is idle with its timers armed: n timers
// pending on the fake clock and no line running.
func (r *rig) settle(n int) {
	r.t.Helper()
	require.Eventually(r.t, func() bool { return r.clk.Pending() == n }, 10*time.Second, time.Millisecond,
		"want %d armed timers, have %d", n, r.clk.Pending())
}

func recv(t *testing.T, ch <-chan ended) ended {
	t.Helper()
	select {
	case e := <-ch:
		return e
	case <-time.After(10 * time.Second):
		t.Fatal("no waiter ended")
		return ended{}
	}
}

func noneReady(t *testing.T, ch <-chan ended) {
	t.Helper()
	select {
	case e := <-ch:
		t.Fatalf("%s ended early: %v", e.id, e.r.Outcome)
	default:
	}
}

// TestOrderByScore: waiters that arrive together go by tier points and
// class urgency (the caller's points), then fairness, then arrival.
func TestOrderByScore(t *testing.T) {
	tests := map[string]struct {
		arrivals []struct {
			id, client string
			points     int
		}
		want []string
	}{
		"points decide": {
			arrivals: []struct {
				id, client string
				points     int
			}{{"basic-batch", "a", 10 + 10}, {"premium-fast", "b", 30 + 30}, {"standard-normal", "c", 20 + 20}, {"enterprise-batch", "d", 40 + 10}},
			want: []string{"premium-fast", "enterprise-batch", "standard-normal", "basic-batch"},
		},
		"ties go to the earliest": {
			arrivals: []struct {
				id, client string
				points     int
			}{{"first", "a", 40}, {"second", "b", 40}, {"third", "c", 40}, {"better", "d", 41}},
			want: []string{"better", "first", "second", "third"},
		},
	}
	for name, tc := range tests {
		t.Run(name, func(t *testing.T) {
			r := newRig(t, nil)
			b := r.bucket("gpt", 1, 1)
			require.True(t, b.take(1).Allowed) // drained: one unit a second from now on
			out := make(chan ended, len(tc.arrivals))
			for _, a := range tc.arrivals {
				b.submit(out, a.id, a.client, policy.Batch, a.points, 1)
			}
			var got []string
			for range tc.arrivals {
				r.settle(1)
				noneReady(t, out)
				r.clk.Advance(time.Second)
				e := recv(t, out)
				require.Equal(t, queue.Granted, e.r.Outcome, e.id)
				got = append(got, e.id)
			}
			assert.Equal(t, tc.want, got)
		})
	}
}

// TestFairness: of two clients with the same points, the one that has had
// less of the resource lately goes first.
func TestFairness(t *testing.T) {
	r := newRig(t, nil)
	b := r.bucket("gpt", 10, 1)
	for range 9 { // the hog takes nine of ten units, through the queue's record
		require.True(t, b.take(1).Allowed)
		r.q.Record(b.key.String(), "hog", 1)
	}
	require.True(t, b.take(1).Allowed)
	r.q.Record(b.key.String(), "light", 1)
	out := make(chan ended, 2)
	b.submit(out, "hog", "hog", policy.Normal, 40, 1) // arrives first
	b.submit(out, "light", "light", policy.Normal, 40, 1)
	r.settle(1)
	r.clk.Advance(time.Second)
	assert.Equal(t, "light", recv(t, out).id, "fairness 9 beats 1")
	r.settle(1)
	r.clk.Advance(time.Second)
	assert.Equal(t, "hog", recv(t, out).id)
}

// TestNoStarvation: a stream of high-priority arrivals cannot hold a
// waiting batch call past the wait horizon.
func TestNoStarvation(t *testing.T) {
	const horizon = 5 * time.Second
	r := newRig(t, func(p *policy.Queue) {
		p.WaitHorizon = horizon
		p.Classes[policy.Batch].MaxWait = time.Minute
		p.Classes[policy.Fast].MaxWait = time.Minute // no vip gives up: each step grants exactly one call
	})
	b := r.bucket("gpt", 1, 1)
	require.True(t, b.take(1).Allowed)
	out := make(chan ended, 64)
	b.submit(out, "batch", "low", policy.Batch, 10+10, 1)
	var grants []string
	for i := range 12 {
		// Two fresh high-priority calls arrive every second; one unit refills.
		b.submit(out, fmt.Sprintf("vip-%d-a", i), "vip", policy.Fast, 40+30, 1)
		b.submit(out, fmt.Sprintf("vip-%d-b", i), "vip", policy.Fast, 40+30, 1)
		r.settle(1)
		r.clk.Advance(time.Second)
		e := recv(t, out)
		grants = append(grants, e.id)
		if e.id == "batch" {
			// Granted at the first refill after it had waited the horizon.
			assert.Equal(t, int(horizon/time.Second)-1, i, "grants: %v", grants)
			assert.Equal(t, queue.Granted, e.r.Outcome)
			assert.Equal(t, horizon, e.r.Waited)
			return
		}
		if i < int(horizon/time.Second)-1 {
			assert.Contains(t, e.id, "vip", "before the horizon, score decides")
		}
	}
	t.Fatalf("the batch call starved: %v", grants)
}

// TestCancelHoldsNothing: a waiter whose caller goes away leaves at once; a
// grant that races the cancellation is given back.
func TestCancelHoldsNothing(t *testing.T) {
	t.Run("waiting", func(t *testing.T) {
		r := newRig(t, nil)
		b := r.bucket("gpt", 5, 1)
		require.True(t, b.take(5).Allowed)
		ctx, cancel := context.WithCancel(context.Background())
		done := make(chan queue.Result[limiter.Decision], 1)
		go func() {
			cp := r.pol.Class(policy.Normal)
			done <- r.q.Wait(ctx, b.key.String(), &queue.Waiter[limiter.Decision]{
				ID: "w", Client: "c", Class: policy.Normal, Points: 20, Units: 3, Deadline: r.clk.Now().Add(cp.MaxWait), MaxDepth: cp.MaxDepth,
				Try: b.try(3), Undo: b.undo(3),
			})
		}()
		r.settle(1)
		cancel()
		res := <-done
		assert.Equal(t, queue.Cancelled, res.Outcome)
		assert.Zero(t, r.q.Status().Total, "it left the queue at once")
		r.clk.Advance(10 * time.Second)
		assert.Equal(t, int64(5), b.remaining(), "it took nothing: the bucket refilled whole")
		_, ok := r.q.Position("w")
		assert.False(t, ok)
	})
	t.Run("a grant races the cancellation", func(t *testing.T) {
		r := newRig(t, nil)
		b := r.bucket("gpt", 5, 1)
		entered, release := make(chan struct{}), make(chan struct{})
		out := make(chan ended, 1)
		cp := r.pol.Class(policy.Normal)
		w := &queue.Waiter[limiter.Decision]{
			ID: "w", Client: "c", Class: policy.Normal, Points: 20, Units: 3, Deadline: r.clk.Now().Add(cp.MaxWait), MaxDepth: cp.MaxDepth,
			Try: func(ctx context.Context) queue.Attempt[limiter.Decision] {
				close(entered)
				<-release // the waiter leaves while the store decides
				return b.try(3)(ctx)
			},
			Undo: b.undo(3),
		}
		r.q.Submit(b.key.String(), w, func(res queue.Result[limiter.Decision]) { out <- ended{"w", res} })
		<-entered
		require.True(t, r.q.Remove("w"))
		close(release)
		assert.Equal(t, queue.Removed, recv(t, out).r.Outcome)
		require.Eventually(t, func() bool { return r.undone.Load() == 3 }, 10*time.Second, time.Millisecond, "the grant was given back")
		assert.Equal(t, int64(5), b.remaining(), "nothing is lost")
	})
}

// TestDeadline: a waiter whose deadline passes gets Timeout, with the last
// wait the resource gave; one whose turn cannot come in time is told at
// once rather than hold the line.
func TestDeadline(t *testing.T) {
	r := newRig(t, nil) // fast: 2 s
	b := r.bucket("gpt", 10, 1)
	require.True(t, b.take(10).Allowed)
	out := make(chan ended, 4)
	b.submit(out, "hopeless", "a", policy.Fast, 60, 5) // 5 s away, 2 s to wait
	e := recv(t, out)
	assert.Equal(t, "hopeless", e.id)
	assert.Equal(t, queue.Timeout, e.r.Outcome, "told at once")
	assert.Equal(t, 5*time.Second, e.r.RetryAfter)
	assert.Zero(t, e.r.Waited)

	b.submit(out, "slow", "a", policy.Fast, 60, 1) // 1 s away: it may wait
	b.submit(out, "behind", "b", policy.Fast, 50, 1)
	r.settle(1)
	r.clk.Advance(time.Second)
	assert.Equal(t, "slow", recv(t, out).id)
	r.settle(1)
	r.clk.Advance(time.Second) // behind is due now, and so is its deadline
	e = recv(t, out)
	assert.Equal(t, "behind", e.id)
	assert.Contains(t, []queue.Outcome{queue.Granted, queue.Timeout}, e.r.Outcome)
}

func TestDeadlineExpiresBehindTheBest(t *testing.T) {
	r := newRig(t, nil)
	b := r.bucket("gpt", 10, 1)
	require.True(t, b.take(10).Allowed)
	out := make(chan ended, 4)
	b.submit(out, "best", "a", policy.Batch, 70, 9) // 9 s away, may wait 60
	b.submit(out, "fast", "b", policy.Fast, 10, 1)  // behind it, 2 s deadline
	r.settle(1)
	r.clk.Advance(2 * time.Second)
	e := recv(t, out)
	assert.Equal(t, "fast", e.id)
	assert.Equal(t, queue.Timeout, e.r.Outcome, "its deadline came while the best waited")
	r.settle(1)
	r.clk.Advance(7 * time.Second)
	assert.Equal(t, "best", recv(t, out).id)
}

func TestQueueFull(t *testing.T) {
	r := newRig(t, func(p *policy.Queue) { p.Classes[policy.Normal].MaxDepth = 2 })
	b := r.bucket("gpt", 1, 1)
	require.True(t, b.take(1).Allowed)
	out := make(chan ended, 4)
	b.submit(out, "1", "a", policy.Normal, 20, 1)
	b.submit(out, "2", "a", policy.Normal, 20, 1)
	b.submit(out, "3", "a", policy.Normal, 20, 1)
	e := recv(t, out)
	assert.Equal(t, "3", e.id)
	assert.Equal(t, queue.Full, e.r.Outcome)
	b.submit(out, "other class", "a", policy.Batch, 10, 1) // another class has room
	r.settle(1)
	noneReady(t, out)
	st := r.q.Status()
	require.Len(t, st.Lines, 1)
	assert.Equal(t, 2, st.Lines[0].Classes["normal"].Depth)
	assert.Equal(t, 1, st.Lines[0].Classes["batch"].Depth)
	assert.Equal(t, 3, st.Total)
	assert.Equal(t, st.Total, r.q.Len())
}

// TestParkedUntil: a deferred waiter stays out of line until its NotBefore
// (the off-peak window), then queues; one whose deadline comes first times
// out without ever being tried.
func TestParkedUntil(t *testing.T) {
	r := newRig(t, nil)
	b := r.bucket("gpt", 5, 1)
	out := make(chan ended, 2)
	tries := atomic.Int64{}
	submit := func(id string, notBefore, deadline time.Duration) {
		try := b.try(1)
		r.q.Submit(b.key.String(), &queue.Waiter[limiter.Decision]{
			ID: id, Client: "c", Class: policy.Deferred, Points: 10, Units: 1,
			NotBefore: r.clk.Now().Add(notBefore), Deadline: r.clk.Now().Add(deadline), MaxDepth: 10,
			Try: func(ctx context.Context) queue.Attempt[limiter.Decision] { tries.Add(1); return try(ctx) },
		}, func(res queue.Result[limiter.Decision]) { out <- ended{id, res} })
	}
	submit("waits", 3*time.Minute, 5*time.Minute)
	submit("too late", 10*time.Minute, 2*time.Minute)
	st := r.q.Status()
	assert.Equal(t, 2, st.Parked)
	pos, ok := r.q.Position("waits")
	require.True(t, ok)
	assert.True(t, pos.Parked)
	assert.Zero(t, pos.Position)

	r.settle(1)
	r.clk.Advance(2 * time.Minute)
	e := recv(t, out)
	assert.Equal(t, "too late", e.id)
	assert.Equal(t, queue.Timeout, e.r.Outcome)
	r.settle(1)
	noneReady(t, out)
	assert.Zero(t, tries.Load(), "nothing is tried before the window opens, though the bucket is full")
	r.clk.Advance(time.Minute)
	e = recv(t, out)
	assert.Equal(t, "waits", e.id)
	assert.Equal(t, queue.Granted, e.r.Outcome)
	assert.Equal(t, 3*time.Minute, e.r.Waited)
}

// TestKick: a waiter blocked on a resource with no refill time (a
// concurrency slot) waits for a Kick, then moves on. A waiter blocked by
// another resource moves to that resource's line.
func TestKick(t *testing.T) {
	r := newRig(t, nil)
	var free atomic.Bool
	out := make(chan ended, 2)
	cp := r.pol.Class(policy.Normal)
	r.q.Submit("slots:acme", &queue.Waiter[limiter.Decision]{
		ID: "w", Client: "acme", Class: policy.Normal, Points: 20, Deadline: r.clk.Now().Add(cp.MaxWait), MaxDepth: 10,
		Try: func(context.Context) queue.Attempt[limiter.Decision] {
			if free.Load() {
				return queue.Attempt[limiter.Decision]{Granted: true}
			}
			return queue.Attempt[limiter.Decision]{Key: "slots:acme"}
		},
	}, func(res queue.Result[limiter.Decision]) { out <- ended{"w", res} })
	r.settle(1) // only the deadline timer: no refill time to wait for
	noneReady(t, out)
	r.q.Kick("slots:acme")
	r.settle(1)
	noneReady(t, out)
	free.Store(true)
	r.q.Kick("slots:other", "slots:acme")
	assert.Equal(t, queue.Granted, recv(t, out).r.Outcome)

	// Blocked elsewhere: the waiter moves lines.
	b := r.bucket("gpt", 1, 1)
	require.True(t, b.take(1).Allowed)
	try := b.try(1)
	moved := 0
	r.q.Submit("slots:acme", &queue.Waiter[limiter.Decision]{
		ID: "m", Client: "acme", Class: policy.Normal, Points: 20, Deadline: r.clk.Now().Add(cp.MaxWait), MaxDepth: 10,
		Try: func(ctx context.Context) queue.Attempt[limiter.Decision] { moved++; return try(ctx) },
	}, func(res queue.Result[limiter.Decision]) { out <- ended{"m", res} })
	r.settle(1)
	st := r.q.Status()
	require.Len(t, st.Lines, 1)
	assert.Equal(t, b.key.String(), st.Lines[0].Key, "it waits in the bucket's line now")
	r.clk.Advance(time.Second)
	assert.Equal(t, queue.Granted, recv(t, out).r.Outcome)
}

func TestRemoveAndPosition(t *testing.T) {
	r := newRig(t, nil)
	b := r.bucket("gpt", 1, 1)
	require.True(t, b.take(1).Allowed)
	out := make(chan ended, 3)
	b.submit(out, "low", "a", policy.Batch, 20, 1)
	b.submit(out, "high", "b", policy.Fast, 70, 1)
	b.submit(out, "mid", "c", policy.Normal, 40, 1)
	r.settle(1)
	for id, want := range map[string]int{"high": 1, "mid": 2, "low": 3} {
		p, ok := r.q.Position(id)
		require.True(t, ok, id)
		assert.Equal(t, want, p.Position, id)
		assert.Equal(t, 3, p.Depth)
		assert.Equal(t, b.key.String(), p.Key)
	}
	p, _ := r.q.Position("high")
	assert.InDelta(t, 70+10, p.Score, 1e-9, "70 points and full fairness, nothing waited yet")
	require.True(t, r.q.Remove("mid"))
	assert.False(t, r.q.Remove("mid"), "only once")
	assert.False(t, r.q.Remove("nobody"))
	e := recv(t, out)
	assert.Equal(t, "mid", e.id)
	assert.Equal(t, queue.Removed, e.r.Outcome)
	p, _ = r.q.Position("low")
	assert.Equal(t, 2, p.Position)
}

func TestStarvationAlert(t *testing.T) {
	r := newRig(t, func(p *policy.Queue) {
		p.StarvationAlert = 30 * time.Second
		p.Classes[policy.Batch].MaxWait = time.Hour
	})
	b := r.bucket("gpt", 1000, 1)
	require.True(t, b.take(1000).Allowed)
	out := make(chan ended, 1)
	b.submit(out, "starved", "a", policy.Batch, 20, 1000) // 1000 s away
	r.settle(1)
	r.clk.Advance(29 * time.Second)
	r.settle(1)
	r.mu.Lock()
	assert.Empty(t, r.starving)
	r.mu.Unlock()
	r.clk.Advance(time.Second)
	require.Eventually(t, func() bool {
		r.mu.Lock()
		defer r.mu.Unlock()
		return len(r.starving) == 1 && r.starving[0] == "starved"
	}, 10*time.Second, time.Millisecond)
	r.settle(1)
	r.clk.Advance(10 * time.Minute)
	r.settle(1)
	r.mu.Lock()
	assert.Len(t, r.starving, 1, "raised once")
	r.mu.Unlock()
}

func TestClose(t *testing.T) {
	r := newRig(t, nil)
	b := r.bucket("gpt", 1, 1)
	require.True(t, b.take(1).Allowed)
	out := make(chan ended, 2)
	b.submit(out, "a", "a", policy.Normal, 20, 1)
	r.q.Submit("k", &queue.Waiter[limiter.Decision]{ID: "p", Class: policy.Deferred, MaxDepth: 1, Deadline: epoch.Add(time.Hour), NotBefore: epoch.Add(time.Minute),
		Try: b.try(1)}, func(res queue.Result[limiter.Decision]) { out <- ended{"p", res} })
	r.settle(2)
	require.NoError(t, r.q.Close())
	for range 2 {
		assert.Equal(t, queue.Closed, recv(t, out).r.Outcome)
	}
	r.q.Submit("k", &queue.Waiter[limiter.Decision]{Class: policy.Normal, MaxDepth: 1}, func(res queue.Result[limiter.Decision]) { out <- ended{"late", res} })
	assert.Equal(t, queue.Closed, recv(t, out).r.Outcome)
	assert.Zero(t, r.clk.Pending(), "no timer left behind")
}

// TestSharedRequestID: calls sharing a request id each get their own queue
// id; each can be found, listed and removed by it, and by the request id
// one after the other (earliest first).
func TestSharedRequestID(t *testing.T) {
	r := newRig(t, nil)
	b := r.bucket("gpt", 1, 1)
	require.True(t, b.take(1).Allowed)
	out := make(chan ended, 4)
	ws := []*queue.Waiter[limiter.Decision]{
		b.submit(out, "same", "a", policy.Batch, 20, 1),
		b.submit(out, "same", "b", policy.Fast, 70, 1),
		b.submit(out, "same", "c", policy.Normal, 40, 1),
		b.submit(out, "other", "d", policy.Normal, 10, 1),
	}
	r.settle(1)

	list := r.q.List()
	require.Len(t, list, len(ws))
	ids := map[string]string{} // client → queue id
	for i, e := range list {
		assert.Equal(t, i+1, e.Position.Position, "listed best first")
		assert.Equal(t, b.key.String(), e.Key)
		assert.Regexp(t, `^q-\d+$`, e.QueueID)
		ids[e.Client] = e.QueueID
	}
	require.Len(t, ids, 4, "queue ids are unique")
	assert.Equal(t, []string{"b", "c", "a", "d"}, []string{list[0].Client, list[1].Client, list[2].Client, list[3].Client})
	assert.Equal(t, "fast", list[0].Class)
	assert.Equal(t, "same", list[0].ID)

	tests := map[string]struct {
		remove     string
		wantClient string
	}{
		"by queue id, the middle one": {remove: ids["c"], wantClient: "c"},
		"by request id, the earliest": {remove: "same", wantClient: "a"},
		"by request id, the next":     {remove: "same", wantClient: "b"},
	}
	for _, name := range []string{"by queue id, the middle one", "by request id, the earliest", "by request id, the next"} {
		tc := tests[name]
		t.Run(name, func(t *testing.T) {
			p, ok := r.q.Position(tc.remove)
			require.True(t, ok)
			require.True(t, r.q.Remove(tc.remove))
			e := recv(t, out)
			assert.Equal(t, queue.Removed, e.r.Outcome)
			assert.Equal(t, ids[tc.wantClient], e.r.QueueID, "the result names its queue id")
			assert.Equal(t, p.QueueID, e.r.QueueID, "Position found the one Remove took")
			_, ok = r.q.Position(e.r.QueueID)
			assert.False(t, ok, "gone")
		})
	}
	assert.False(t, r.q.Remove("same"), "none left with that request id")
	list = r.q.List()
	require.Len(t, list, 1)
	assert.Equal(t, "d", list[0].Client)
	assert.Equal(t, 1, list[0].Position.Position)
}
