package memstore

import (
	"cmp"
	"context"
	"slices"
	"time"

	"github.com/tollgate/tollgate/limiter"
)

var _ limiter.Historian = (*Store)(nil)

// maxCostRecords bounds the cost records kept in memory, oldest forgotten
// first past it (each is a few hundred bytes).
const maxCostRecords = 200_000

type histKey struct{ client, month, route, model string }
type clientMonth struct{ client, month string }

type costEntry struct {
	rec limiter.CostRecord
	exp int64 // Unix µs
}

// history keeps what Finish booked: rows by client, month, route and
// model, each month forgotten its retention after its last booking, and
// cost records by request id, each for the cost TTL. Guarded by the
// ledger's lock.
type history struct {
	months  int
	costTTL time.Duration
	rows    map[histKey]*limiter.HistoryRow
	touched map[clientMonth]int64 // last booking, Unix µs
	costs   map[string]costEntry
	costQ   []expiryItem
	// swept is when months past their retention were last looked for
	// (Unix µs): at most once a historySweep, not on every call, which
	// would walk every client's months under the ledger's lock.
	swept int64
}

// historySweep is how often months past their retention are forgotten.
const historySweep = time.Minute

func newHistory(months int, costTTL time.Duration) history {
	if months == 0 {
		months = limiter.DefaultHistoryMonths
	}
	if costTTL == 0 {
		costTTL = limiter.DefaultCostTTL
	}
	return history{months: months, costTTL: costTTL, rows: map[histKey]*limiter.HistoryRow{},
		touched: map[clientMonth]int64{}, costs: map[string]costEntry{}}
}

// book records the end st of a call described by rec, at now.
func (h *history) book(rec *limiter.CallRecord, st limiter.Settlement, now int64) {
	if st.Outcome == limiter.OutcomeSettled {
		k := histKey{rec.Client, rec.Month, rec.Route, rec.Model}
		row := h.rows[k]
		if row == nil {
			row = &limiter.HistoryRow{Month: rec.Month, Route: rec.Route, Model: rec.Model}
			h.rows[k] = row
		}
		row.Calls++
		row.Cost += st.Spent
		row.InputTokens += rec.InputTokens
		row.OutputTokens += rec.OutputTokens
		row.Saved += rec.Saved
		h.touched[clientMonth{rec.Client, rec.Month}] = now
	}
	if rec.RequestID == "" {
		return
	}
	h.expireCosts(now)
	if e, ok := h.costs[rec.RequestID]; ok && e.exp > now {
		return // the first call to book an id keeps it: another's x-request-id cannot overwrite it
	}
	exp := now + h.costTTL.Microseconds()
	h.costs[rec.RequestID] = costEntry{exp: exp, rec: limiter.CostRecord{RequestID: rec.RequestID, Client: rec.Client, Route: rec.Route,
		Model: rec.Model, Outcome: st.Outcome, Estimate: rec.Estimate, Actual: st.Spent, Saved: rec.Saved,
		InputTokens: rec.InputTokens, OutputTokens: rec.OutputTokens, At: time.UnixMicro(now).UTC()}}
	h.costQ = append(h.costQ, expiryItem{id: rec.RequestID, exp: exp})
	for len(h.costs) > maxCostRecords && len(h.costQ) > 0 {
		h.dropFirstCost()
	}
}

// expireCosts forgets cost records past their TTL, and (once a
// historySweep) months of history past their retention.
func (h *history) expireCosts(now int64) {
	for len(h.costQ) > 0 && h.costQ[0].exp <= now {
		h.dropFirstCost()
	}
	if now-h.swept < historySweep.Microseconds() && now >= h.swept {
		return
	}
	h.swept = now
	keep := limiter.HistoryTTL(h.months).Microseconds()
	for cm, at := range h.touched {
		if now-at > keep {
			delete(h.touched, cm)
			for k := range h.rows {
				if k.client == cm.client && k.month == cm.month {
					delete(h.rows, k)
				}
			}
		}
	}
}

func (h *history) dropFirstCost() {
	it := h.costQ[0]
	h.costQ = h.costQ[1:]
	if e, ok := h.costs[it.id]; ok && e.exp == it.exp {
		delete(h.costs, it.id)
	}
}

// History returns the client's rows of months.
func (s *Store) History(ctx context.Context, client string, months []string) ([]limiter.HistoryRow, error) {
	if err := s.usable(ctx); err != nil {
		return nil, err
	}
	s.ledgerMu.Lock()
	defer s.ledgerMu.Unlock()
	var out []limiter.HistoryRow
	for _, m := range months {
		start := len(out)
		for k, row := range s.ledger.hist.rows {
			if k.client == client && k.month == m {
				out = append(out, *row)
			}
		}
		slices.SortFunc(out[start:], func(a, b limiter.HistoryRow) int {
			return cmp.Or(cmp.Compare(a.Route, b.Route), cmp.Compare(a.Model, b.Model))
		})
	}
	return out, nil
}

// CostRecord returns the cost record of requestID.
func (s *Store) CostRecord(ctx context.Context, requestID string) (limiter.CostRecord, error) {
	if err := s.usable(ctx); err != nil {
		return limiter.CostRecord{}, err
	}
	s.ledgerMu.Lock()
	defer s.ledgerMu.Unlock()
	e, ok := s.ledger.hist.costs[requestID]
	if !ok || e.exp <= limiter.Micros(s.clock.Now()) {
		return limiter.CostRecord{}, limiter.ErrNoCostRecord
	}
	return e.rec, nil
}

var _ limiter.Recorder = (*Store)(nil)

// Record books the history and cost records of calls ended elsewhere,
// exactly once per batch id.
func (s *Store) Record(ctx context.Context, batch string, ends []limiter.RecordedEnd) (bool, error) {
	if err := s.usable(ctx); err != nil {
		return false, err
	}
	if err := limiter.ValidateRecordBatch(batch, ends); err != nil {
		return false, err
	}
	at := limiter.Micros(s.clock.Now())
	s.ledgerMu.Lock()
	defer s.ledgerMu.Unlock()
	s.ledger.expire(at, 1<<30) // also forgets old batch ids
	key := "record:" + batch
	if _, seen := s.ledger.batches[key]; seen {
		return false, nil
	}
	for i := range ends {
		e := &ends[i]
		s.ledger.hist.book(&e.Record, limiter.Settlement{Outcome: e.Outcome, Spent: e.Spent}, limiter.Micros(e.At))
	}
	exp := at + s.ledger.limits.Retention.Microseconds()
	s.ledger.batches[key] = exp
	s.ledger.batchQ = append(s.ledger.batchQ, expiryItem{id: key, exp: exp})
	return true, nil
}
