package memstore

import (
	"container/heap"
	"context"
	"fmt"
	"math"
	"time"

	"github.com/tollgate/tollgate/limiter"
	"github.com/tollgate/tollgate/policy"
)

var _ limiter.Backend = (*Store)(nil)

// endedOverhead is the estimated bytes of one ended record besides its id
// (twice: the map key and the queue): map slot, settlement, queue item.
const endedOverhead = 160

// endedBytes estimates the memory of the record of id.
func endedBytes(id string) int64 { return endedOverhead + 2*int64(len(id)) }

// EndedStats describes the records of ended reservations a Store keeps.
type EndedStats struct {
	Kept    int
	Bytes   int64
	Evicted uint64 // forgotten before their retention, for the bounds
}

type budgetID struct{ owner, period string }

type budgetEntry struct{ spent, reserved policy.Money }

type reservation struct {
	cost   policy.Money
	period string
	owners []string
	slot   string // client whose slot it holds, "" for none
	exp    int64  // Unix µs
	// charges are what its admission took from each bucket, given back
	// (in part) when it is finished (see limiter.Ending.Refunds).
	charges []limiter.Charge
}

type ended struct {
	s   limiter.Settlement
	exp int64 // forget after (Unix µs)
}

// ledger holds budgets, slots and reservations under one lock; a Reserve
// with a Hold takes it after its shard locks, Settle and Release take it
// alone.
type ledger struct {
	budgets map[budgetID]*budgetEntry
	slots   map[string]map[string]int64 // client → reservation id → expiry µs
	resv    map[string]*reservation
	done    map[string]ended
	doneQ   []expiryItem // ended ids in the order they end, so their records are forgotten in order
	expiry  expiryHeap
	batches map[string]int64 // booked batch ids → forget after (Unix µs)
	batchQ  []expiryItem

	limits    EndedLimits
	doneBytes int64
	evicted   uint64

	saved savedLedger // clients' savings by period
	hist  history     // history and cost records (history.go)

	j *journal // nil: nothing is kept across restarts
}

// journal appends rec before a change is applied; without a journal it
// does nothing.
func (l *ledger) journal(rec journalRecord) error {
	if l.j == nil {
		return nil
	}
	// Compact first: the state then holds every line written so far, and
	// rec goes into the new file.
	if err := l.j.maybeCompact(l); err != nil {
		return err
	}
	return l.j.append(rec)
}

func owners(bs []limiter.Budget) []string {
	out := make([]string, len(bs))
	for i, b := range bs {
		out[i] = b.Owner
	}
	return out
}

func newLedger(limits EndedLimits, months int, costTTL time.Duration) ledger {
	return ledger{
		hist:    newHistory(months, costTTL),
		limits:  limits,
		budgets: map[budgetID]*budgetEntry{},
		slots:   map[string]map[string]int64{},
		resv:    map[string]*reservation{},
		done:    map[string]ended{},
		batches: map[string]int64{},
		saved:   savedLedger{by: map[budgetID]*savedEntry{}},
	}
}

// liveSlots counts a client's slots in use at now. Callers expire every
// lapsed reservation first (which frees its slot); slots leased by a
// sidecar lapse on their own, and are dropped here.
func (l *ledger) liveSlots(client string, now int64) int64 {
	set := l.slots[client]
	for id, exp := range set {
		if exp <= now {
			delete(set, id)
		}
	}
	if len(set) == 0 {
		delete(l.slots, client)
	}
	return int64(len(set))
}

func (l *ledger) states(h *limiter.Hold) []limiter.BudgetState {
	out := make([]limiter.BudgetState, len(h.Budgets))
	for i, b := range h.Budgets {
		out[i] = limiter.BudgetState{Owner: b.Owner, Limit: b.Limit}
		if e := l.budgets[budgetID{b.Owner, h.Period}]; e != nil {
			out[i].Spent, out[i].Reserved = e.spent, e.reserved
		}
	}
	return out
}

// budget returns the entry of owner's budget in period, creating it.
func (l *ledger) budget(owner, period string) *budgetEntry {
	k := budgetID{owner, period}
	e := l.budgets[k]
	if e == nil {
		e = &budgetEntry{}
		l.budgets[k] = e
	}
	return e
}

// commit spends a Hold's cost at once.
func (l *ledger) commit(h *limiter.Hold) error {
	if err := l.journal(journalRecord{Kind: "c", Period: h.Period, Amount: int64(h.Cost), Owners: owners(h.Budgets)}); err != nil {
		return err
	}
	for _, b := range h.Budgets {
		l.budget(b.Owner, h.Period).spent += h.Cost
	}
	return nil
}

func (l *ledger) hold(h *limiter.Hold, charges []limiter.Charge, now int64) error {
	if err := l.journal(journalRecord{Kind: "h", ID: h.ID, Period: h.Period, Amount: int64(h.Cost), Owners: owners(h.Budgets)}); err != nil {
		return err
	}
	r := &reservation{cost: h.Cost, period: h.Period, exp: now + h.TTL.Microseconds(), charges: charges}
	for _, b := range h.Budgets {
		l.budget(b.Owner, h.Period).reserved += h.Cost
		r.owners = append(r.owners, b.Owner)
	}
	if h.Slot != nil {
		r.slot = h.Slot.Client
		if l.slots[r.slot] == nil {
			l.slots[r.slot] = map[string]int64{}
		}
		l.slots[r.slot][h.ID] = r.exp
	}
	l.resv[h.ID] = r
	heap.Push(&l.expiry, expiryItem{id: h.ID, exp: r.exp})
	return nil
}

// finish ends reservation id: spend is what is committed (the estimate on
// expiry, the actual on settle, nothing on release), and savings (see
// limiter.Ending.Booked) are booked to its client in the same journal line.
// It is the one end of a reservation (Finish adds the refunds of its
// charges).
func (l *ledger) finish(id string, outcome limiter.Outcome, actual policy.Money, savings []limiter.Saving, now int64) (limiter.Settlement, error) {
	if e, ok := l.done[id]; ok {
		s := e.s
		s.Repeat = true
		return s, nil
	}
	r := l.resv[id]
	if r == nil {
		return limiter.Settlement{}, fmt.Errorf("%w: %q", limiter.ErrUnknownReservation, id)
	}
	spend := outcome.Spend(r.cost, actual)
	if len(r.owners) == 0 {
		savings = nil // no client to book them to
	}
	if err := l.journal(journalRecord{Kind: "e", ID: id, Amount: int64(spend), Savings: savingsRecord(savings), At: savedAt(savings, now)}); err != nil {
		return limiter.Settlement{}, err
	}
	if len(savings) > 0 {
		l.saved.book(r.owners[0], r.period, savings, now)
	}
	for _, owner := range r.owners {
		e := l.budget(owner, r.period)
		e.reserved -= r.cost
		e.spent += spend
	}
	if r.slot != "" {
		delete(l.slots[r.slot], id)
		if len(l.slots[r.slot]) == 0 {
			delete(l.slots, r.slot)
		}
	}
	delete(l.resv, id)
	s := limiter.Settlement{ID: id, Outcome: outcome, Estimated: r.cost, Spent: spend}
	exp := now + l.limits.Retention.Microseconds()
	l.done[id] = ended{s: s, exp: exp}
	l.doneQ = append(l.doneQ, expiryItem{id: id, exp: exp})
	l.doneBytes += endedBytes(id)
	// Over a bound: forget the oldest now, before their retention.
	k := 0
	for k < len(l.doneQ)-1 && (len(l.done) > l.limits.MaxCount || l.doneBytes > l.limits.MaxBytes) {
		l.forgetDone(l.doneQ[k].id)
		l.evicted++
		k++
	}
	l.dropDoneQ(k)
	return s, nil
}

func (l *ledger) forgetDone(id string) {
	delete(l.done, id)
	l.doneBytes -= endedBytes(id)
}

// dropDoneQ drops the first k items of doneQ, copying the rest when it is
// worth it so the array does not grow for ever.
func (l *ledger) dropDoneQ(k int) {
	if k == 0 {
		return
	}
	if k >= len(l.doneQ)/2 {
		l.doneQ = append(l.doneQ[:0:0], l.doneQ[k:]...)
	} else {
		l.doneQ = l.doneQ[k:]
	}
}

// expire ends up to max lapsed reservations at their estimate, and forgets
// old outcomes.
func (l *ledger) expire(now int64, max int) int {
	n := 0
	for l.expiry.Len() > 0 && l.expiry[0].exp <= now && n < max {
		it := heap.Pop(&l.expiry).(expiryItem)
		if r := l.resv[it.id]; r != nil && r.exp == it.exp {
			_, _ = l.finish(it.id, limiter.OutcomeExpired, 0, nil, now)
			n++
		}
	}
	// Retention is one constant, so records end in the order they were
	// written: forget from the front, never scanning the rest.
	k := 0
	for k < len(l.doneQ) && l.doneQ[k].exp <= now {
		l.forgetDone(l.doneQ[k].id)
		k++
	}
	l.dropDoneQ(k)
	k = 0
	for k < len(l.batchQ) && l.batchQ[k].exp <= now {
		delete(l.batches, l.batchQ[k].id)
		k++
	}
	if k > 0 {
		l.batchQ = append(l.batchQ[:0:0], l.batchQ[k:]...)
	}
	l.saved.forget(now)
	return n
}

// Expire commits lapsed reservations at their estimate.
func (s *Store) Expire(ctx context.Context, now time.Time, max int) (int, error) {
	if err := s.usable(ctx); err != nil {
		return 0, err
	}
	if now.IsZero() {
		now = s.clock.Now()
	}
	s.ledgerMu.Lock()
	defer s.ledgerMu.Unlock()
	return s.ledger.expire(limiter.Micros(now), max), nil
}

// Usage reports a budget chain's period.
func (s *Store) Usage(ctx context.Context, period string, budgets []limiter.Budget, now time.Time) (limiter.Usage, error) {
	if err := s.usable(ctx); err != nil {
		return limiter.Usage{}, err
	}
	if now.IsZero() {
		now = s.clock.Now()
	}
	s.ledgerMu.Lock()
	defer s.ledgerMu.Unlock()
	u := limiter.Usage{Budgets: s.ledger.states(&limiter.Hold{Period: period, Budgets: budgets})}
	if len(budgets) > 0 {
		s.ledger.expire(limiter.Micros(now), math.MaxInt)
		u.InFlight = s.ledger.liveSlots(budgets[0].Owner, limiter.Micros(now))
		u.Savings = s.ledger.saved.of(budgets[0].Owner, period)
	}
	return u, nil
}

type expiryItem struct {
	id  string
	exp int64
}

type expiryHeap []expiryItem

func (h expiryHeap) Len() int           { return len(h) }
func (h expiryHeap) Less(i, j int) bool { return h[i].exp < h[j].exp }
func (h expiryHeap) Swap(i, j int)      { h[i], h[j] = h[j], h[i] }
func (h *expiryHeap) Push(x any)        { *h = append(*h, x.(expiryItem)) }
func (h *expiryHeap) Pop() any {
	old := *h
	it := old[len(old)-1]
	*h = old[:len(old)-1]
	return it
}

// Ended reports the records of ended reservations kept now.
func (s *Store) Ended() EndedStats {
	s.ledgerMu.Lock()
	defer s.ledgerMu.Unlock()
	return EndedStats{Kept: len(s.ledger.done), Bytes: s.ledger.doneBytes, Evicted: s.ledger.evicted}
}
