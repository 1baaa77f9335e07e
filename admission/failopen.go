package admission

import (
	"context"
	"errors"
	"fmt"
	"sort"
	"sync"

	"github.com/tollgate/tollgate/limiter"
	"github.com/tollgate/tollgate/policy"
)

// Fail-open spend. A call let through because the store could not answer
// (defaults.store_unavailable: allow; outcome fail_open) costs money all the
// same. Its hold's cost is journaled here, by budget period, when it is
// admitted; under deferred settlement it carries a reservation id as any
// admitted call does, and its settle (ext_proc, or the API) journals the
// difference to what it really cost (a release gives the hold back). One
// never settled stays at its hold, as a lapsed reservation does.
// BookFailOpen books the journal into the store once it answers, in batches
// each applied exactly once (limiter.Booker: a batch is resent as it is
// until the store has it, and the store drops an id it has seen before).
//
// A fail-open admission may have reached the store although its answer never
// came back (a timeout after the script ran, then a retry refused as a
// duplicate): the store then holds a reservation under the call's id, which
// would lapse at its estimate and count the call twice. So each fail-open
// id is released in the store before its spend is trusted (releasing an id
// the store never had changes nothing), and what the store had already
// committed under it is taken back out of the journal.
//
// The journal lives in this process's memory: one that stops before the
// store answers again loses what it holds (Shutdown says so).

// maxUnsure bounds the fail-open ids kept for their release in the store;
// past it (an outage of hours at high rates) ids are not kept, and a call
// whose lost answer the store did apply would be counted twice.
const maxUnsure = 100_000

// spendKey is one budget period of one owner.
type spendKey struct{ owner, period string }

// spendBatch is spend booked under one id, resent as it is until the store
// has it.
type spendBatch struct {
	id     string
	deltas []limiter.SpendDelta
}

// failOpenHold is what a fail-open call holds in the journal until it
// settles: its hold's cost on each budget of its chain.
type failOpenHold struct {
	id     string
	owners []string
	period string
	cost   policy.Money
}

// failOpenBook is the journal of fail-open spend. Safe for concurrent use.
type failOpenBook struct {
	epoch string // this process's, so batch ids never meet another's

	mu       sync.Mutex
	journal  map[spendKey]policy.Money
	inflight *spendBatch
	seq      uint64
	unsure   []failOpenHold // ids to release in the store, oldest first
	dropped  int            // ids not kept past maxUnsure
}

func newFailOpenBook(epoch string) *failOpenBook {
	return &failOpenBook{epoch: epoch, journal: map[spendKey]policy.Money{}}
}

// admitted journals the hold of a call let through fail open, and returns
// what it holds until it settles (nil for a commit).
func (b *failOpenBook) admitted(h *limiter.Hold) *failOpenHold {
	fh := &failOpenHold{id: h.ID, period: h.Period, cost: h.Cost}
	for _, bud := range h.Budgets {
		fh.owners = append(fh.owners, bud.Owner)
	}
	b.mu.Lock()
	defer b.mu.Unlock()
	b.addLocked(fh.owners, fh.period, fh.cost)
	if h.Commit || h.ID == "" {
		return nil
	}
	if len(b.unsure) < maxUnsure {
		b.unsure = append(b.unsure, *fh)
	} else {
		b.dropped++
	}
	return fh
}

// settled journals what a fail-open call spent beyond (or short of) its
// hold.
func (b *failOpenBook) settled(fh *failOpenHold, spent policy.Money) {
	b.mu.Lock()
	defer b.mu.Unlock()
	b.addLocked(fh.owners, fh.period, spent-fh.cost)
}

func (b *failOpenBook) addLocked(owners []string, period string, delta policy.Money) {
	if delta == 0 {
		return
	}
	for _, o := range owners {
		k := spendKey{o, period}
		b.journal[k] += delta
		if b.journal[k] == 0 {
			delete(b.journal, k)
		}
	}
}

// unbooked reports the budget periods with spend not booked yet and its
// sum over them.
func (b *failOpenBook) unbooked() (periods int, total policy.Money) {
	b.mu.Lock()
	defer b.mu.Unlock()
	seen := map[spendKey]bool{}
	for k, v := range b.journal {
		seen[k] = true
		total += v
	}
	if b.inflight != nil {
		for _, d := range b.inflight.deltas {
			seen[spendKey{d.Owner, d.Period}] = true
			total += d.Spent
		}
	}
	return len(seen), total
}

// next returns the batch to send: the one in flight, else one made of up to
// maxFailOpenBatch budget periods of the journal, else nil.
func (b *failOpenBook) next() *spendBatch {
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.inflight != nil || len(b.journal) == 0 {
		return b.inflight
	}
	keys := make([]spendKey, 0, len(b.journal))
	for k := range b.journal {
		keys = append(keys, k)
	}
	sort.Slice(keys, func(i, j int) bool {
		return keys[i].owner < keys[j].owner || (keys[i].owner == keys[j].owner && keys[i].period < keys[j].period)
	})
	var deltas []limiter.SpendDelta
	for _, k := range keys[:min(len(keys), maxFailOpenBatch)] {
		deltas = append(deltas, limiter.SpendDelta{Owner: k.owner, Period: k.period, Spent: b.journal[k]})
		delete(b.journal, k)
	}
	b.seq++
	b.inflight = &spendBatch{id: fmt.Sprintf("failopen:%s:%d", b.epoch, b.seq), deltas: deltas}
	return b.inflight
}

// landed clears batch once the store has it; a second sender of the same
// batch finds it cleared already.
func (b *failOpenBook) landed(batch *spendBatch) {
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.inflight == batch {
		b.inflight = nil
	}
}

// takeUnsure moves up to n ids to release out of the list: each is
// released by one caller only.
func (b *failOpenBook) takeUnsure(n int) []failOpenHold {
	b.mu.Lock()
	defer b.mu.Unlock()
	n = min(n, len(b.unsure))
	out := b.unsure[:n:n]
	b.unsure = b.unsure[n:]
	return out
}

// putBackUnsure returns ids not released yet to the front of the list.
func (b *failOpenBook) putBackUnsure(hs []failOpenHold) {
	if len(hs) == 0 {
		return
	}
	b.mu.Lock()
	defer b.mu.Unlock()
	b.unsure = append(append([]failOpenHold{}, hs...), b.unsure...)
}

// maxFailOpenBatch bounds the budget periods of one batch (one store call).
const maxFailOpenBatch = 500

// releasesPerRound bounds the fail-open ids released in the store per
// BookFailOpen, so that a round stays short after a long outage.
const releasesPerRound = 1000

// BookFailOpen books the spend of calls let through fail open into the
// store, if it answers: it releases in the store the reservations their
// admissions may have made without an answer (taking out of the journal
// what the store had committed under them), then books the journal, each
// batch exactly once. It returns the error that stopped it, with the store
// away; what is left waits for the next call. Safe to call concurrently
// (the server's loop calls it every second, and Shutdown once more).
func (s *Service) BookFailOpen(ctx context.Context) error {
	b := s.failOpen
	var releaseErr error
	todo := b.takeUnsure(releasesPerRound)
	for i, fh := range todo {
		st, err := s.store.Finish(ctx, limiter.Ending{ID: fh.id, Outcome: limiter.OutcomeReleased})
		switch {
		case errors.Is(err, limiter.ErrUnknownReservation):
		case err != nil:
			// Tried again next round; the journal is booked meanwhile.
			b.putBackUnsure(todo[i:])
			releaseErr = fmt.Errorf("admission: release fail-open reservation %s: %w", fh.id, err)
		case st.Repeat && st.Spent != 0:
			// The store had it, and it has lapsed (or ended) there at
			// st.Spent: that much is booked already.
			b.mu.Lock()
			b.addLocked(fh.owners, fh.period, -st.Spent)
			b.mu.Unlock()
		}
		if releaseErr != nil {
			break
		}
	}
	for range 10 { // a bounded round: the rest waits for the next call
		batch := b.next()
		if batch == nil {
			break
		}
		applied, err := s.store.Book(ctx, batch.id, batch.deltas)
		if err != nil {
			return errors.Join(releaseErr, fmt.Errorf("admission: book fail-open spend (batch %s): %w", batch.id, err))
		}
		b.landed(batch)
		if applied {
			s.m.failOpenBooked.Inc()
		}
	}
	if err := s.BookCacheSavings(ctx); err != nil {
		return errors.Join(releaseErr, err)
	}
	return releaseErr
}

// FailOpenUnbooked reports the spend of calls let through fail open that is
// not booked into the store yet: how many budget periods it touches, and
// its sum over them (a call's cost counts once per budget of its chain).
func (s *Service) FailOpenUnbooked() (periods int, total policy.Money) { return s.failOpen.unbooked() }
