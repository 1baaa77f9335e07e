package memstore

import (
	"context"

	"github.com/tollgate/tollgate/limiter"
)

var _ limiter.Peeker = (*Store)(nil)

// Peek decides req as Reserve would now and changes nothing: buckets are
// read into copies and never stored back, the ledger is only read (a lapsed
// hold still counts as reserved rather than spent, which leaves every
// budget's total, and so the decision, as Reserve's lapse-first step would).
func (s *Store) Peek(ctx context.Context, req limiter.Request) (limiter.Decision, error) {
	if err := s.usable(ctx); err != nil {
		return limiter.Decision{}, err
	}
	if err := req.Validate(); err != nil {
		return limiter.Decision{}, err
	}
	now := req.Now
	if now.IsZero() {
		now = s.clock.Now()
	}
	at := limiter.Micros(now)
	idx := make([]int, len(req.Takes))
	for i := range req.Takes {
		idx[i] = s.shardOf(req.Takes[i].Key)
	}
	defer s.unlockShards(s.lockShards(idx))
	buckets := make([]limiter.Bucket, len(req.Takes))
	for i, t := range req.Takes {
		buckets[i] = s.entryAt(idx[i], t.Key, t.Limit, at).b
	}
	h := req.Hold
	if h == nil {
		return limiter.Apply(buckets, req.Takes), nil
	}
	s.ledgerMu.Lock()
	defer s.ledgerMu.Unlock()
	var inFlight int64
	if h.Slot != nil && !h.Commit {
		for _, exp := range s.ledger.slots[h.Slot.Client] {
			if exp > at {
				inFlight++
			}
		}
	}
	return limiter.ApplyHold(buckets, req.Takes, h, s.ledger.states(h), inFlight), nil
}
