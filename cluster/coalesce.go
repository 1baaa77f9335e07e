package cluster

import (
	"context"
	"errors"
	"sync"
	"time"

	"github.com/tollgate/tollgate/limiter"
)

// Coalescing: calls that miss a lease at the same moment (many clients,
// each with its own bucket and slots, arriving together) would each make
// their own round trip, and Redis answers them one after the other. They
// are sent together instead: the first to miss sends its asks at once;
// those that miss while a batch is in flight wait for it to land and go
// in the next one, all in one limiter.BatchLeaser call (group commit). A
// call's bucket asks and its slot lease travel together, so even a call
// alone needs one round trip, not two. Each ask is answered as it would be
// alone; two calls asking the same bucket go in successive batches, never
// merged, so that each hears the answer to its own need.

// leaseCall is one call's part of a batch.
type leaseCall struct {
	asks   []limiter.LeaseAsk
	slot   *limiter.SlotLease // nil: none
	grants []limiter.LeaseGrant
	held   limiter.SlotGrant
	err    error
	done   chan struct{} // closed when answered
	turn   chan struct{} // closed when it is this call's turn to send the next batch
}

// coalescer queues the calls waiting for the next batch.
type coalescer struct {
	mu      sync.Mutex
	pending []*leaseCall
	sending bool // a batch is in flight; its sender hands the turn on
}

// maxCoalesced bounds the calls of one batch.
const maxCoalesced = 64

// leaseTogether sends c's asks and slot lease in the next batch and waits
// for its answer (ctx bounds the round trip it sends, not the wait: an
// answer is always recorded).
func (s *Store) leaseTogether(ctx context.Context, bl limiter.BatchLeaser, c *leaseCall) {
	c.done, c.turn = make(chan struct{}), make(chan struct{})
	co := &s.co
	co.mu.Lock()
	co.pending = append(co.pending, c)
	lead := !co.sending
	if lead {
		co.sending = true
	}
	co.mu.Unlock()
	for !lead {
		select {
		case <-c.done:
			return
		case <-c.turn:
			lead = true
		}
	}
	s.sendBatch(ctx, bl)
	<-c.done // answered in the batch sent, or a later one whose sender this call's turn passed to
}

// sendBatch sends the pending calls that do not ask a bucket twice, then
// hands the turn to the first call still pending, if any.
func (s *Store) sendBatch(ctx context.Context, bl limiter.BatchLeaser) {
	co := &s.co
	co.mu.Lock()
	var batch, rest []*leaseCall
	keys := map[limiter.Key]bool{}
	for _, c := range co.pending {
		clash := len(batch) >= maxCoalesced
		for _, a := range c.asks {
			clash = clash || keys[a.Key]
		}
		if clash {
			rest = append(rest, c)
			continue
		}
		for _, a := range c.asks {
			keys[a.Key] = true
		}
		batch = append(batch, c)
	}
	co.pending = rest
	co.mu.Unlock()

	var asks []limiter.LeaseAsk
	var slots []limiter.SlotLease
	for _, c := range batch {
		asks = append(asks, c.asks...)
		if c.slot != nil {
			slots = append(slots, *c.slot)
		}
	}
	grants, held, err := watched{Shared: s.raw, s: s}.leaseBatch(ctx, bl, asks, slots)
	if err == nil && (len(grants) != len(asks) || len(held) != len(slots)) {
		err = errors.New("cluster: a lease batch answered the wrong number of asks")
	}
	ai, si := 0, 0
	for _, c := range batch {
		c.err = err
		if err == nil {
			c.grants = grants[ai : ai+len(c.asks)]
			if c.slot != nil {
				c.held = held[si]
				si++
			}
		}
		ai += len(c.asks)
		close(c.done)
	}

	co.mu.Lock()
	if len(co.pending) > 0 {
		close(co.pending[0].turn) // it sends the next batch (sending stays true)
	} else {
		co.sending = false
	}
	co.mu.Unlock()
}

// leaseBatch is the shared store's batch, its outcome noted as every
// call's is (health.go).
func (w watched) leaseBatch(ctx context.Context, bl limiter.BatchLeaser, asks []limiter.LeaseAsk, slots []limiter.SlotLease) ([]limiter.LeaseGrant, []limiter.SlotGrant, error) {
	g, h, err := bl.LeaseBatch(ctx, asks, slots, time.Time{})
	w.note(ctx, err)
	return g, h, err
}
