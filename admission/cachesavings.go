package admission

import (
	"context"
	"fmt"
	"maps"
	"slices"
	"strings"
	"sync"

	"github.com/tollgate/tollgate/limiter"
	"github.com/tollgate/tollgate/policy"
)

// The savings of answers from the cache. A hit is answered from memory;
// what it saved is added here, summed by client, budget period and
// strategy, and booked in the store within a second (the server's loop
// calls BookFailOpen, which calls BookCacheSavings; Shutdown once more):
// one batch of spend deltas with no spend and the savings, sent as it is
// until the store has it, applied once by its id (limiter.Booker, as the
// spend of calls let through fail open and a fleet member's spend are).
// Exact (integers, summed), once (by batch id), and cheap: a store round
// trip a second for all clients, not one per hit, and no per-hit record in
// the store. What is not booked yet is lost with the process (Shutdown
// books it once more first).

// savingsKey is one client's savings of one budget period; tier labels the
// savings metric.
type savingsKey struct{ owner, period, tier string }

// maxSavingsBatch bounds the deltas of one batch (one store call).
const maxSavingsBatch = 500

// savingsBook sums cached answers' savings until they are booked. Safe for
// concurrent use.
type savingsBook struct {
	epoch string // this process's, so batch ids never meet another's

	mu       sync.Mutex
	pending  map[savingsKey]map[string]policy.Money
	inflight *savingsBatch
	seq      uint64
}

type savingsBatch struct {
	id     string
	deltas []limiter.SpendDelta
	tiers  []string // deltas[i]'s tier, for the metric
}

func newSavingsBook(epoch string) *savingsBook {
	return &savingsBook{epoch: epoch, pending: map[savingsKey]map[string]policy.Money{}}
}

// add adds amount to key's strategy, holding the sum below what a store
// books (2^53 nano-dollars: $9M saved within a second is not a real case).
func (b *savingsBook) add(key savingsKey, strategy string, amount policy.Money) {
	b.mu.Lock()
	defer b.mu.Unlock()
	by := b.pending[key]
	if by == nil {
		by = map[string]policy.Money{}
		b.pending[key] = by
	}
	by[strategy] = min(by[strategy]+min(amount, limiter.MaxMoney-1), limiter.MaxMoney-1)
}

// next returns the batch to send: the one in flight, else one made of up
// to maxSavingsBatch of the pending sums, else nil.
func (b *savingsBook) next() *savingsBatch {
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.inflight != nil || len(b.pending) == 0 {
		return b.inflight
	}
	keys := slices.SortedFunc(maps.Keys(b.pending), func(x, y savingsKey) int {
		return strings.Compare(x.owner+"\x00"+x.period+"\x00"+x.tier, y.owner+"\x00"+y.period+"\x00"+y.tier)
	})
	batch := &savingsBatch{}
	for _, k := range keys[:min(len(keys), maxSavingsBatch)] {
		batch.deltas = append(batch.deltas, limiter.SpendDelta{Owner: k.owner, Period: k.period, Savings: limiter.SavingsList(b.pending[k])})
		batch.tiers = append(batch.tiers, k.tier)
		delete(b.pending, k)
	}
	b.seq++
	batch.id = fmt.Sprintf("cache:%s:%d", b.epoch, b.seq)
	b.inflight = batch
	return batch
}

// landed clears batch once the store has it.
func (b *savingsBook) landed(batch *savingsBatch) {
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.inflight == batch {
		b.inflight = nil
	}
}

// unbooked reports whether savings wait to be booked.
func (b *savingsBook) unbooked() bool {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.inflight != nil || len(b.pending) > 0
}

// BookCacheSavings books what answers from the cache saved since the last
// call, in batches each applied exactly once; it returns the error that
// stopped it (the store away), and what is left waits for the next call.
// Safe to call concurrently.
func (s *Service) BookCacheSavings(ctx context.Context) error {
	for range 10 { // a bounded round
		batch := s.cacheSavings.next()
		if batch == nil {
			return nil
		}
		applied, err := s.store.Book(ctx, batch.id, batch.deltas)
		if err != nil {
			return fmt.Errorf("admission: book cached answers' savings (batch %s): %w", batch.id, err)
		}
		s.cacheSavings.landed(batch)
		if applied {
			for i, d := range batch.deltas {
				s.m.savings.booked(batch.tiers[i], d.Savings)
			}
		}
	}
	return nil
}

// CacheSavingsUnbooked reports whether answers from the cache saved
// anything not booked in the store yet.
func (s *Service) CacheSavingsUnbooked() bool { return s.cacheSavings.unbooked() }
