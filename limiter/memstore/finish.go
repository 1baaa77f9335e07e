package memstore

import (
	"context"
	"errors"

	"github.com/tollgate/tollgate/limiter"
	"github.com/tollgate/tollgate/policy"
)

var _ limiter.Finisher = (*Store)(nil)

// Finish ends a reservation in one locked step: the ledger's end (money,
// slot, the record of its outcome), the refunds of the buckets it charged
// (the first time only), then the throttles (whether or not the id is
// known or still open). It locks the shards of every bucket it may touch,
// then the ledger, as Reserve does.
func (s *Store) Finish(ctx context.Context, e limiter.Ending) (limiter.Settlement, error) {
	if err := s.usable(ctx); err != nil {
		return limiter.Settlement{}, err
	}
	if err := e.Validate(); err != nil {
		return limiter.Settlement{}, err
	}
	now := e.Now
	if now.IsZero() {
		now = s.clock.Now()
	}
	at := limiter.Micros(now)
	throttles := limiter.ThrottleAdjustments(e.Throttles)
	for {
		// Which buckets the reservation charged is known only under the
		// ledger lock, which comes after the shard locks: peek, lock, and
		// start again in the rare case the id changed hands meanwhile.
		s.ledgerMu.Lock()
		peek := s.ledger.resv[e.ID]
		s.ledgerMu.Unlock()
		var refunds []limiter.Adjustment
		if peek != nil {
			refunds = limiter.RefundAdjustments(e.Refunds(peek.charges))
		}
		st, err := s.finishLocked(e, peek, refunds, throttles, at)
		if err != errChanged {
			return st, err
		}
	}
}

// errChanged says the reservation is no longer the one peeked at: Finish
// starts again. It never leaves the package.
var errChanged = errors.New("memstore: reservation changed while finishing")

// finishLocked runs Finish's step under its locks, or returns errChanged,
// having done nothing, when the reservation is no longer peek.
func (s *Store) finishLocked(e limiter.Ending, peek *reservation, refunds, throttles []limiter.Adjustment, at int64) (limiter.Settlement, error) {
	var stack [8]int
	idx := stack[:0]
	for _, a := range refunds {
		idx = append(idx, s.shardOf(a.Key))
	}
	for _, a := range throttles {
		idx = append(idx, s.shardOf(a.Key))
	}
	defer s.unlockShards(s.lockShards(idx))
	s.ledgerMu.Lock()
	defer s.ledgerMu.Unlock()
	if r := s.ledger.resv[e.ID]; r != nil && r != peek {
		return limiter.Settlement{}, errChanged
	}
	st, err := s.ledger.finish(e.ID, e.Outcome, e.Actual, e.Booked(), at)
	if err == nil && !st.Repeat && e.Record != nil {
		s.ledger.hist.book(e.Record, st, at)
	}
	if err == nil && !st.Repeat {
		for i, a := range refunds {
			s.adjustLocked(idx[i], a, at)
		}
	}
	for i, a := range throttles {
		s.adjustLocked(idx[len(refunds)+i], a, at)
	}
	return st, err
}

// Settle commits a reservation at its actual cost (Finish without refunds
// or throttles).
func (s *Store) Settle(ctx context.Context, id string, actual policy.Money) (limiter.Settlement, error) {
	return s.Finish(ctx, limiter.Ending{ID: id, Outcome: limiter.OutcomeSettled, Actual: actual})
}

// Release returns a reservation whole (Finish without refunds or
// throttles).
func (s *Store) Release(ctx context.Context, id string) (limiter.Settlement, error) {
	return s.Finish(ctx, limiter.Ending{ID: id, Outcome: limiter.OutcomeReleased})
}
