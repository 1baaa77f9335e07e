package queue_test

import (
	"context"
	"fmt"
	"runtime"
	"sync/atomic"
	"testing"
	"time"

	"github.com/tollgate/tollgate/limiter/queue"
	"github.com/tollgate/tollgate/policy"
)

// BenchmarkQueue100k: 100,000 waiters in one line, on the wall clock.
// enqueue: each arrival, which wakes the line for one attempt (that says
// wait); grant: the line letting all of them go, best first, after one
// Kick; cancel: each leaving by Remove. Reported per waiter, with the
// memory the queue holds for each.
func BenchmarkQueue100k(b *testing.B) {
	const n = 100_000
	type rig struct {
		q    *queue.Queue[int]
		ws   []*queue.Waiter[int]
		open atomic.Bool
		done atomic.Int64
	}
	pol := policy.DefaultQueue()
	pol.Classes[policy.Batch].MaxDepth = n
	build := func(b *testing.B) *rig {
		r := &rig{q: queue.New[int](queue.Config{Policy: func() policy.Queue { return pol },
			OnStarving: func(string, string, policy.Class, time.Duration) {}, // as in production: the alert is watched
			OnExit:     func(string, policy.Class, queue.Outcome, time.Duration) {}})}
		b.Cleanup(func() { _ = r.q.Close() })
		try := func(context.Context) queue.Attempt[int] {
			if r.open.Load() {
				return queue.Attempt[int]{Granted: true}
			}
			return queue.Attempt[int]{Key: "pool"}
		}
		deadline := time.Now().Add(time.Hour)
		r.ws = make([]*queue.Waiter[int], n)
		for i := range r.ws {
			r.ws[i] = &queue.Waiter[int]{ID: fmt.Sprint("w", i), Client: fmt.Sprint("c", i%64), Class: policy.Batch,
				Points: i % 71, Units: 1, Deadline: deadline, MaxDepth: n, Try: try}
		}
		return r
	}
	submitAll := func(r *rig) {
		for _, w := range r.ws {
			r.q.Submit("pool", w, func(queue.Result[int]) { r.done.Add(1) })
		}
	}
	waitDone := func(b *testing.B, r *rig) {
		for r.done.Load() < n {
			runtime.Gosched()
		}
	}

	b.Run("enqueue", func(b *testing.B) {
		b.ReportAllocs()
		var perWaiter uint64
		for b.Loop() {
			b.StopTimer()
			runtime.GC()
			var before, after runtime.MemStats
			runtime.ReadMemStats(&before)
			r := build(b) // the waiters count too: each call brings one
			b.StartTimer()
			submitAll(r)
			b.StopTimer()
			runtime.GC()
			runtime.ReadMemStats(&after)
			perWaiter = (after.HeapAlloc - before.HeapAlloc) / n
			_ = r.q.Close()
			b.StartTimer()
		}
		b.ReportMetric(float64(b.Elapsed().Nanoseconds())/float64(b.N*n), "ns/waiter")
		b.ReportMetric(float64(perWaiter), "bytes/waiter")
	})
	b.Run("grant", func(b *testing.B) {
		b.ReportAllocs()
		for b.Loop() {
			b.StopTimer()
			r := build(b)
			submitAll(r)
			r.open.Store(true)
			b.StartTimer()
			r.q.Kick("pool")
			waitDone(b, r)
		}
		b.ReportMetric(float64(b.Elapsed().Nanoseconds())/float64(b.N*n), "ns/grant")
	})
	b.Run("cancel", func(b *testing.B) {
		b.ReportAllocs()
		for b.Loop() {
			b.StopTimer()
			r := build(b)
			submitAll(r)
			b.StartTimer()
			for _, w := range r.ws {
				r.q.Remove(w.ID)
			}
			waitDone(b, r)
		}
		b.ReportMetric(float64(b.Elapsed().Nanoseconds())/float64(b.N*n), "ns/cancel")
	})
}
