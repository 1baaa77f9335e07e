package memstore

import (
	"context"
	"fmt"
	"time"

	"github.com/tollgate/tollgate/limiter"
)

var (
	_ limiter.Leaser     = (*Store)(nil)
	_ limiter.SlotLeaser = (*Store)(nil)
	_ limiter.Booker     = (*Store)(nil)
)

// Lease hands out slices of buckets (see limiter.ApplyLease), all under
// their shard locks at once.
func (s *Store) Lease(ctx context.Context, asks []limiter.LeaseAsk, now time.Time) ([]limiter.LeaseGrant, error) {
	if err := s.usable(ctx); err != nil {
		return nil, err
	}
	for i, a := range asks {
		if err := a.Validate(); err != nil {
			return nil, err
		}
		for _, b := range asks[:i] {
			if b.Key == a.Key {
				return nil, fmt.Errorf("memstore: bucket %s leased twice in one call", a.Key)
			}
		}
	}
	if now.IsZero() {
		now = s.clock.Now()
	}
	at := limiter.Micros(now)
	idx := make([]int, len(asks))
	for i := range asks {
		idx[i] = s.shardOf(asks[i].Key)
	}
	defer s.unlockShards(s.lockShards(idx))
	out := make([]limiter.LeaseGrant, len(asks))
	for i, a := range asks {
		m := s.shards[idx[i]].buckets
		e := s.entryAt(idx[i], a.Key, a.Limit, at)
		e.b, out[i] = limiter.ApplyLease(e.b, a) // written back only when it granted, as lease.lua does
		if out[i].Granted > 0 {
			m[a.Key] = e
		}
	}
	return out, nil
}

// slotName is a holder's i-th leased slot, 1-based.
func slotName(holder string, i int64) string { return fmt.Sprintf("L:%s:%d", holder, i) }

// LeaseSlots sets the holder's slots of the client (see
// limiter.SlotLeaser). Leased slots sit in the client's slot set beside
// the reservations' own, so every admission counts them.
func (s *Store) LeaseSlots(ctx context.Context, l limiter.SlotLease, now time.Time) (held, inFlight int64, err error) {
	if err := s.usable(ctx); err != nil {
		return 0, 0, err
	}
	if err := l.Validate(); err != nil {
		return 0, 0, err
	}
	if now.IsZero() {
		now = s.clock.Now()
	}
	at := limiter.Micros(now)
	s.ledgerMu.Lock()
	defer s.ledgerMu.Unlock()
	s.ledger.expire(at, 1<<30)
	s.ledger.liveSlots(l.Client, at) // lapsed leases go, as lapsed reservations do
	set := s.ledger.slots[l.Client]
	var mine int64
	for ; ; mine++ {
		if _, ok := set[slotName(l.Holder, mine+1)]; !ok {
			break
		}
	}
	others := int64(len(set)) - mine
	target := max(min(l.Want, l.Max-others), 0)
	if set == nil && target > 0 {
		set = map[string]int64{}
		s.ledger.slots[l.Client] = set
	}
	for i := target + 1; i <= mine; i++ {
		delete(set, slotName(l.Holder, i))
	}
	exp := at + l.TTL.Microseconds()
	for i := int64(1); i <= target; i++ {
		set[slotName(l.Holder, i)] = exp
	}
	if len(set) == 0 {
		delete(s.ledger.slots, l.Client)
	}
	return target, others + target, nil
}

// Book applies a batch of spend exactly once.
func (s *Store) Book(ctx context.Context, batch string, deltas []limiter.SpendDelta) (bool, error) {
	if err := s.usable(ctx); err != nil {
		return false, err
	}
	if err := limiter.ValidateBatch(batch, deltas); err != nil {
		return false, err
	}
	at := limiter.Micros(s.clock.Now())
	s.ledgerMu.Lock()
	defer s.ledgerMu.Unlock()
	s.ledger.expire(at, 1<<30) // also forgets old batch ids
	if _, seen := s.ledger.batches[batch]; seen {
		return false, nil
	}
	for _, d := range deltas {
		if err := s.ledger.journal(journalRecord{Kind: "c", Period: d.Period, Amount: int64(d.Spent), Owners: []string{d.Owner},
			Savings: savingsRecord(d.Savings), At: savedAt(d.Savings, at)}); err != nil {
			return false, err
		}
		s.ledger.budget(d.Owner, d.Period).spent += d.Spent
		if len(d.Savings) > 0 {
			s.ledger.saved.book(d.Owner, d.Period, d.Savings, at)
		}
	}
	exp := at + s.ledger.limits.Retention.Microseconds()
	s.ledger.batches[batch] = exp
	s.ledger.batchQ = append(s.ledger.batchQ, expiryItem{id: batch, exp: exp})
	return true, nil
}
