package queue_test

import (
	"context"
	"fmt"
	"math/rand/v2"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/tollgate/tollgate/limiter"
	"github.com/tollgate/tollgate/limiter/queue"
	"github.com/tollgate/tollgate/policy"
)

// TestPropertyConservation drives two buckets with random arrivals (of
// every class, deferred ones parked), removals and refills on the fake
// clock, and checks at the end that every waiter ended exactly once, that
// every unit an attempt reserved went to a waiter that got it or back to
// its bucket, that no bucket gave out more than it held and refilled, and
// that nothing is left in the queue.
func TestPropertyConservation(t *testing.T) {
	for seed := range uint64(8) {
		t.Run(fmt.Sprint("seed ", seed), func(t *testing.T) {
			rng := rand.New(rand.NewPCG(seed, 42))
			r := newRig(t, func(p *policy.Queue) {
				p.WaitHorizon = 3 * time.Second
				p.Classes[policy.Normal].MaxDepth = 40
			})
			buckets := []*bucket{r.bucket("a", 5, 2), r.bucket("b", 3, 1)}
			var reserved, granted [2]atomic.Int64
			var mu sync.Mutex
			ends := map[string]queue.Outcome{}
			out := make(chan ended, 1024)
			var ids []string
			const steps = 60
			for step := range steps {
				for range rng.IntN(4) { // arrivals
					bi := rng.IntN(2)
					b := buckets[bi]
					cost := 1 + rng.Int64N(3)
					class := policy.Classes[1+rng.IntN(4)]
					cp := r.pol.Class(class)
					id := fmt.Sprintf("w%d-%d", step, len(ids))
					ids = append(ids, id)
					try := b.try(cost)
					w := &queue.Waiter[limiter.Decision]{
						ID: id, Client: fmt.Sprint("c", rng.IntN(3)), Class: class, Points: rng.IntN(71), Units: cost,
						Deadline: r.clk.Now().Add(cp.MaxWait), MaxDepth: cp.MaxDepth,
						Try: func(ctx context.Context) queue.Attempt[limiter.Decision] {
							a := try(ctx)
							if a.Granted {
								reserved[bi].Add(cost)
							}
							return a
						},
						Undo: b.undo(cost),
					}
					if class == policy.Deferred {
						w.NotBefore = r.clk.Now().Add(time.Duration(rng.IntN(5)) * time.Second)
					}
					r.q.Submit(b.key.String(), w, func(res queue.Result[limiter.Decision]) {
						if res.Outcome == queue.Granted {
							granted[bi].Add(cost)
						}
						out <- ended{id, res}
					})
				}
				if len(ids) > 0 && rng.IntN(3) == 0 { // a removal (often of someone already gone)
					r.q.Remove(ids[rng.IntN(len(ids))])
				}
				drain(t, out, &mu, ends)
				r.clk.Advance(time.Duration(100+rng.IntN(900)) * time.Millisecond)
			}
			// Let every wait end (the longest class waits 5 minutes): a second
			// of fake time per check.
			require.Eventually(t, func() bool {
				drain(t, out, &mu, ends)
				if len(ends) == len(ids) {
					return true
				}
				r.clk.Advance(time.Second)
				return false
			}, 30*time.Second, time.Millisecond, "%d of %d waiters ended", len(ends), len(ids))
			assert.Zero(t, r.q.Status().Total, "nobody is left waiting")
			elapsed := r.clk.Now().Sub(epoch)
			for i, b := range buckets {
				assert.Equal(t, reserved[i].Load(), granted[i].Load()+undoneOf(r, b),
					"bucket %s: every unit reserved reached its waiter or came back", b.key.Pool)
				assert.LessOrEqual(t, granted[i].Load(), b.limit.Capacity+int64(elapsed.Seconds()+1)*b.limit.Refill,
					"bucket %s gave out no more than it held and refilled", b.key.Pool)
			}
			counts := map[queue.Outcome]int{}
			for _, o := range ends {
				counts[o]++
			}
			t.Logf("%d waiters: %v", len(ids), counts)
		})
	}
}

// undoneOf is what the rig's Undo gave back to bucket b.
func undoneOf(r *rig, b *bucket) int64 {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.undoneBy[b.key.Pool]
}

func drain(t *testing.T, out <-chan ended, mu *sync.Mutex, ends map[string]queue.Outcome) {
	t.Helper()
	for {
		select {
		case e := <-out:
			mu.Lock()
			_, twice := ends[e.id]
			ends[e.id] = e.r.Outcome
			mu.Unlock()
			require.False(t, twice, "%s ended twice", e.id)
		default:
			return
		}
	}
}
