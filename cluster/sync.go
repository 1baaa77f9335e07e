package cluster

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"math"
	"sort"
	"time"

	"github.com/tollgate/tollgate/limiter"
	"github.com/tollgate/tollgate/policy"
)

// loop syncs with the shared store every SyncEvery until Close.
func (s *Store) loop() {
	defer close(s.loopDone)
	t := time.NewTicker(s.cfg.SyncEvery)
	defer t.Stop()
	for {
		select {
		case <-s.stop:
			return
		case <-t.C:
			ctx, cancel := context.WithTimeout(context.Background(), max(s.cfg.SyncEvery*5, time.Second))
			s.sync(ctx)
			cancel()
		}
	}
}

// Sync does one round of the loop's work at once: book the journal, give
// back lapsed leases, renew slots, refresh budget views, and, while the
// shared store fails or in outage mode, see whether it answers (the probe
// that tells a slow store from a down one, health.go).
func (s *Store) Sync(ctx context.Context) { s.sync(ctx) }

func (s *Store) sync(ctx context.Context) {
	now := s.cfg.Clock.Now()
	s.mu.Lock()
	outage := s.outage
	s.mu.Unlock()
	if err := s.bookJournal(ctx); err != nil {
		s.judge(ctx, err)
		return // nothing else reaches the store either
	}
	if outage {
		s.recover(ctx, now)
	}
	s.mu.Lock()
	s.closeLapsed(now)
	s.mu.Unlock()
	_ = s.replayEnds(ctx, nil) // what the store could not take stays queued
	s.bookRecords(ctx)
	s.returnLapsed(ctx, now)
	if !s.prefetch(ctx, now) {
		s.renewSlots(ctx, now)
	}
	s.refreshViews(ctx, now)
	s.prune(now)
}

// bookJournal books what was decided here, exactly once: the batch in
// flight is resent as it is until the store has it (the store drops a
// batch id it has seen), then the journal becomes the next batch. While
// the store is unreachable the journal grows; nothing is lost.
func (s *Store) bookJournal(ctx context.Context) error {
	s.mu.Lock()
	if s.inflight == nil && (len(s.journal) > 0 || len(s.saved) > 0) {
		if deltas := s.takeJournal(); len(deltas) > 0 {
			s.batchSeq++
			s.inflight = &batch{id: fmt.Sprintf("%s:%d", s.epoch, s.batchSeq), deltas: deltas}
		}
	}
	b := s.inflight
	s.mu.Unlock()
	if b == nil {
		if s.isOutage() || s.failing() {
			_, err := s.shared.Usage(ctx, "probe", nil, time.Time{}) // anything that reaches the store
			return err
		}
		return nil
	}
	applied, err := s.shared.Book(ctx, b.id, b.deltas)
	if err != nil {
		return err
	}
	s.mu.Lock()
	cleared := s.inflight == b // the sync loop, a flush and a leave may send the same batch
	if cleared {
		s.inflight = nil
	}
	s.mu.Unlock()
	if applied {
		s.m.booked.Inc()
	}
	if cleared {
		s.peers.Spend(spentOnly(b.deltas)) // once per batch
	}
	return nil
}

// maxBatch bounds the budget periods of one batch (one script call); the
// rest waits for the next round.
const maxBatch = 500

// takeJournal moves up to maxBatch budget periods' spend, and their
// savings, out of the journal, in a stable order. s.mu is held.
func (s *Store) takeJournal() []limiter.SpendDelta {
	keys := make([]viewKey, 0, len(s.journal)+len(s.saved))
	for k := range s.journal {
		keys = append(keys, k)
	}
	for k := range s.saved {
		if _, ok := s.journal[k]; !ok {
			keys = append(keys, k)
		}
	}
	sort.Slice(keys, func(i, j int) bool {
		return keys[i].owner < keys[j].owner || (keys[i].owner == keys[j].owner && keys[i].period < keys[j].period)
	})
	var out []limiter.SpendDelta
	for _, k := range keys[:min(len(keys), maxBatch)] {
		d := limiter.SpendDelta{Owner: k.owner, Period: k.period, Spent: s.journal[k], Savings: s.takeSaved(k)}
		if d.Spent != 0 || len(d.Savings) > 0 {
			out = append(out, d)
		}
		delete(s.journal, k)
	}
	return out
}

func (s *Store) isOutage() bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.outage
}

// maxTries bounds how often a queued settle that the store refuses (not
// for being away) is tried again before it is dropped with a warning.
const maxTries = 50

// replayEnds tells the shared store the settles and releases queued here
// (slices at what they spent, and what an outage held back); only picks
// which (nil: all). One the store cannot take now stays queued, in order;
// one it refuses is tried again for a few rounds; an unknown id is done
// with. It returns the error that stopped it when the store was away.
func (s *Store) replayEnds(ctx context.Context, only func(pendingEnd) bool) error {
	s.mu.Lock()
	var todo, rest []pendingEnd
	for _, e := range s.ends {
		if only == nil || only(e) {
			todo = append(todo, e)
		} else {
			rest = append(rest, e)
		}
	}
	s.ends = rest
	s.mu.Unlock()
	bctx, cancel := background(ctx)
	defer cancel()
	var keep []pendingEnd
	var away error
	// handled records what the store said of e: false when it must stay
	// queued because the store was away.
	handled := func(e pendingEnd, st limiter.Settlement, err error) bool {
		if err != nil && s.unreachable(context.Background(), err) { // our own context: a timeout is the store's
			return false
		}
		switch {
		case err == nil:
			s.m.replayed.Inc()
			if e.chain != "" && st.Repeat && e.outcome == limiter.OutcomeSettled && st.Spent != e.actual {
				// The slice lapsed in the store first (an outage outlasted its
				// grace) and stands at its size: book what it really spent.
				s.mu.Lock()
				for _, o := range e.owners {
					s.journal[viewKey{o, e.period}] += e.actual - st.Spent
				}
				s.mu.Unlock()
			}
		case errors.Is(err, limiter.ErrUnknownReservation):
			// Nothing to end: a slice whose reservation never landed.
		default:
			if e.tries++; e.tries < maxTries {
				keep = append(keep, e)
			} else {
				s.log.Warn("a queued settle was refused too often; dropped", slog.String("id", e.id), slog.Any("error", err))
			}
		}
		return true
	}
	bf, batches := s.raw.(limiter.BatchFinisher)
	for i := 0; i < len(todo); {
		// Plain ends (slices settled at what they spent) go together, one
		// call for a run of them (limiter.BatchFinisher).
		if run := plainRun(todo[i:], maxEndBatch); batches && run > 1 {
			endings := make([]limiter.Ending, run)
			for k, e := range todo[i : i+run] {
				endings[k] = limiter.Ending{ID: e.id, Outcome: e.outcome, Actual: e.actual}
			}
			sts, errs, err := bf.FinishBatch(bctx, endings)
			watched{Shared: s.raw, s: s}.note(bctx, err)
			if err != nil {
				if s.unreachable(context.Background(), err) {
					keep, away = append(keep, todo[i:]...), err
					break
				}
				for _, e := range todo[i : i+run] { // the call failed as a whole: each is tried again
					handled(e, limiter.Settlement{}, err)
				}
			} else {
				for k, e := range todo[i : i+run] {
					handled(e, sts[k], errs[k])
				}
			}
			i += run
			continue
		}
		e := todo[i]
		st, err := s.shared.Finish(bctx, limiter.Ending{ID: e.id, Outcome: e.outcome, Actual: e.actual, Used: e.used, Savings: e.savings, Record: e.record})
		if !handled(e, st, err) {
			keep, away = append(keep, todo[i:]...), err
			break
		}
		i++
	}
	if len(keep) > 0 {
		s.mu.Lock()
		s.ends = append(keep, s.ends...)
		s.mu.Unlock()
	}
	return away
}

// maxEndBatch bounds the ends of one batch call.
const maxEndBatch = 100

// plainRun is how many of ends, from the first, are plain (nothing to
// give back to buckets, no savings or call record to book), at most max.
func plainRun(ends []pendingEnd, max int) int {
	n := 0
	for n < len(ends) && n < max && len(ends[n].used) == 0 && len(ends[n].savings) == 0 && ends[n].record == nil {
		n++
	}
	return n
}

// returnLapsed gives the unused units of lapsed leases back to their
// shared buckets, in one call.
func (s *Store) returnLapsed(ctx context.Context, now time.Time) {
	s.mu.Lock()
	back := s.returning
	s.returning = nil
	for k, l := range s.leases {
		if l.units > 0 && !now.Before(l.exp) {
			back = append(back, limiter.Adjustment{Key: k, Limit: l.limit, Refund: l.units, Cap: limiter.NoCap})
			l.units = 0
		}
	}
	s.mu.Unlock()
	back = mergeRefunds(back)
	if len(back) == 0 {
		return
	}
	_, err := s.shared.Refund(ctx, refundsOf(back), time.Time{})
	if err == nil {
		s.announceRefills(poolUnits(back))
	}
	if err != nil {
		if s.unsent(err) {
			s.mu.Lock()
			s.returning = append(back, s.returning...) // given back when the store is
			s.mu.Unlock()
			return
		}
		// It may have been given back without an answer: giving it again
		// could return the units twice, and the fleet would admit beyond the
		// limit. Units not given back only wait for the bucket's refill.
		s.log.Warn("unused leased units may not have been given back", slog.Int("buckets", len(back)), slog.Any("error", err))
	}
}

// poolUnits sums the pool-wide units of give-backs by pool.
func poolUnits(adj []limiter.Adjustment) map[string]int64 {
	out := map[string]int64{}
	for _, a := range adj {
		if a.Key.Client == "" && a.Refund > 0 {
			out[a.Key.Pool] += a.Refund
		}
	}
	return out
}

// refundsOf converts merged lease give-backs for the shared store.
func refundsOf(adj []limiter.Adjustment) []limiter.Refund {
	out := make([]limiter.Refund, len(adj))
	for i, a := range adj {
		out[i] = limiter.Refund{Key: a.Key, Limit: a.Limit, Units: a.Refund}
	}
	return out
}

// mergeRefunds sums refunds by bucket (Refund wants each once).
func mergeRefunds(adj []limiter.Adjustment) []limiter.Adjustment {
	idx := map[limiter.Key]int{}
	var out []limiter.Adjustment
	for _, a := range adj {
		if i, ok := idx[a.Key]; ok {
			out[i].Refund = clampRefund(out[i].Refund+a.Refund, a.Limit)
			continue
		}
		idx[a.Key] = len(out)
		a.Refund = clampRefund(a.Refund, a.Limit)
		out = append(out, a)
	}
	return out
}

// clampRefund bounds a merged refund to what one may be: never past the
// capacity, a charge no deeper than the largest capacity.
func clampRefund(units int64, l limiter.Limit) int64 {
	return max(min(units, l.Capacity), -policy.MaxCapacity)
}

// renewSlots keeps leased slots while they are used and gives them back
// when they are not.
func (s *Store) renewSlots(ctx context.Context, now time.Time) {
	type renewal struct {
		client string
		max    int64
	}
	idle := func(sl *slotLease) bool { return sl.inUse == 0 && now.Sub(sl.used) > s.cfg.SlotTTL/2 }
	var todo []renewal
	s.mu.Lock()
	for client, sl := range s.slots {
		if sl.held == 0 && sl.inUse == 0 && sl.busy == 0 {
			delete(s.slots, client)
			continue
		}
		due := sl.held > 0 && sl.exp.Sub(now) < s.cfg.SlotTTL/2
		if due || (idle(sl) && sl.held > 0) || sl.held > s.slotWant(max(sl.inUse, sl.peak), sl.max) || sl.held < sl.inUse {
			todo = append(todo, renewal{client, sl.max})
		}
	}
	s.mu.Unlock()
	for _, r := range todo {
		_, _, err := s.leaseSlots(ctx, r.client, r.max, func(sl *slotLease) int64 {
			if idle(sl) {
				sl.peak = 0
				return 0
			}
			w := s.slotWant(max(sl.inUse, sl.peak), sl.max)
			sl.peak = sl.inUse // the next round keeps the peak seen until then
			return w
		})
		if err != nil {
			return
		}
	}
}

// refreshViews reads the budgets this member decided against lately, so
// that its views include everyone's spend: the views of one period in one
// call (up to maxViewBatch budgets each), not one call per budget, so that
// a member serving many clients, each with its own budget, reads them all
// in a round trip or two.
func (s *Store) refreshViews(ctx context.Context, now time.Time) {
	byPeriod := map[string][]viewKey{}
	var periods []string
	s.mu.Lock()
	for k, v := range s.views {
		if now.Sub(v.touch) < 5*s.cfg.ViewTTL && now.Sub(v.fetched) >= s.cfg.ViewTTL/2 {
			if byPeriod[k.period] == nil {
				periods = append(periods, k.period)
			}
			byPeriod[k.period] = append(byPeriod[k.period], k)
		}
	}
	s.mu.Unlock()
	sort.Strings(periods)
	for _, p := range periods {
		todo := byPeriod[p]
		for len(todo) > 0 {
			chunk := todo[:min(len(todo), maxViewBatch)]
			todo = todo[len(chunk):]
			budgets := make([]limiter.Budget, len(chunk))
			snaps := make([]snap, len(chunk))
			s.mu.Lock()
			for i, k := range chunk {
				budgets[i] = limiter.Budget{Owner: k.owner, Limit: s.views[k].limit}
				snaps[i] = s.snapOf(k.owner, k.period)
			}
			s.mu.Unlock()
			u, err := s.shared.Usage(ctx, p, budgets, time.Time{})
			if err != nil {
				return
			}
			if len(u.Budgets) != len(chunk) {
				return
			}
			s.mu.Lock()
			for i, k := range chunk {
				if v := s.views[k]; v != nil {
					v.rebase(u.Budgets[i].Spent+u.Budgets[i].Reserved, snaps[i], now)
				}
			}
			s.mu.Unlock()
		}
	}
}

// maxViewBatch bounds the budgets one view refresh reads (one script call).
const maxViewBatch = 200

// prune forgets views and leases long unused.
func (s *Store) prune(now time.Time) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.forgetDone(now, 0)
	for k, v := range s.views {
		if now.Sub(v.touch) > 10*time.Minute {
			delete(s.views, k)
		}
	}
	for k, l := range s.leases {
		if l.units == 0 && now.Sub(l.exp) > time.Minute && now.After(l.shortUntil) && now.After(l.pausedUntil) {
			delete(s.leases, k)
		}
	}
}

// handBack returns what this member holds, for a clean leave: unused lease
// units, leased slots, and its journal, booked.
func (s *Store) handBack(ctx context.Context) error {
	s.mu.Lock()
	var back []limiter.Adjustment
	for k, l := range s.leases {
		if l.units > 0 {
			back = append(back, limiter.Adjustment{Key: k, Limit: l.limit, Refund: l.units, Cap: limiter.NoCap})
			l.units = 0
		}
	}
	back = append(back, s.returning...)
	s.returning = nil
	for k, sl := range s.slices {
		s.closeSlice(k, sl)
	}
	type slotBack struct {
		client string
		max    int64
	}
	var slots []slotBack
	for client, sl := range s.slots {
		if sl.held > sl.inUse {
			slots = append(slots, slotBack{client, sl.max})
		}
	}
	outage := s.outage
	s.mu.Unlock()
	if outage {
		return fmt.Errorf("cluster: leaving in outage mode: the spend decided since it began could not be booked")
	}
	var firstErr error
	if back = mergeRefunds(back); len(back) > 0 {
		if _, err := s.shared.Refund(ctx, refundsOf(back), time.Time{}); err != nil {
			firstErr = err
		} else {
			s.announceRefills(poolUnits(back))
		}
	}
	for _, b := range slots { // calls still in flight keep theirs until they lapse
		if _, _, err := s.leaseSlots(ctx, b.client, b.max, func(sl *slotLease) int64 { return sl.inUse }); err != nil && firstErr == nil {
			firstErr = err
		}
	}
	for ctx.Err() == nil {
		s.mu.Lock()
		pending := s.inflight != nil || len(s.journal) > 0 || len(s.saved) > 0
		s.mu.Unlock()
		if !pending {
			break
		}
		if err := s.bookJournal(ctx); err != nil {
			return fmt.Errorf("cluster: book the journal before leaving: %w", err)
		}
	}
	if err := s.replayEnds(ctx, nil); err != nil && firstErr == nil {
		firstErr = fmt.Errorf("cluster: settle slices and queued ends before leaving: %w", err)
	}
	s.bookRecords(ctx) // history and cost records of local calls: best effort
	return firstErr
}

// rate measures demand: units over a sliding window (two fixed halves).
type rate struct {
	window    time.Duration
	start     time.Time
	cur, prev float64
}

func (r *rate) add(now time.Time, units float64) {
	r.roll(now)
	r.cur += units
}

func (r *rate) roll(now time.Time) {
	half := r.window / 2
	switch el := now.Sub(r.start); {
	case el < half:
	case el < 2*half:
		r.prev, r.cur, r.start = r.cur, 0, r.start.Add(half)
	default:
		r.prev, r.cur, r.start = 0, 0, now
	}
}

// perSecond is the rate over the last half window: the current half, and
// the part of the previous one that the half window ending now overlaps.
func (r *rate) perSecond(now time.Time) float64 {
	r.roll(now)
	half := r.window / 2
	w := 1 - math.Min(float64(now.Sub(r.start))/float64(half), 1)
	return (r.cur + w*r.prev) / half.Seconds()
}

// record notes demand for key's pool (pool-wide buckets only).
func (s *Store) record(k limiter.Key, units int64) {
	if k.Client != "" {
		return
	}
	now := s.cfg.Clock.Now()
	s.demandMu.Lock()
	r := s.demand[k.Pool]
	if r == nil {
		r = &rate{window: s.cfg.DemandWindow, start: now}
		s.demand[k.Pool] = r
	}
	r.add(now, float64(units))
	s.demandMu.Unlock()
}

// Demand is this member's demand per pool, units a second: what the Node
// broadcasts.
func (s *Store) Demand() map[string]float64 {
	now := s.cfg.Clock.Now()
	s.demandMu.Lock()
	defer s.demandMu.Unlock()
	out := make(map[string]float64, len(s.demand))
	for p, r := range s.demand {
		if v := r.perSecond(now); v > 0 {
			out[p] = math.Round(v*100) / 100 // a report that fits a packet
		}
	}
	return out
}
