package cluster

import (
	"context"
	"fmt"
	"log/slog"
	"time"

	"github.com/tollgate/tollgate/limiter"
)

// History and cost records: a call whose reservation the shared store
// holds books them there with its end (Finish passes the record on); a
// call decided here, on a lease or a slice, books them at the next sync,
// in a batch applied once, as its spend is booked.

var (
	_ limiter.Historian = (*Store)(nil)
	_ limiter.Recorder  = (*Store)(nil)
)

// maxPendingRecords bounds the records waiting for the shared store (an
// outage): past it the oldest are dropped and counted in the log, money
// being booked apart from them.
const maxPendingRecords = 100_000

type recordBatch struct {
	id   string
	ends []limiter.RecordedEnd
}

// recordLocked queues the record of a local reservation's first end. s.mu
// is held.
func (s *Store) recordLocked(e limiter.Ending, st limiter.Settlement, now time.Time) {
	if e.Record == nil || st.Repeat {
		return
	}
	s.records = append(s.records, limiter.RecordedEnd{Record: *e.Record, Outcome: st.Outcome, Spent: st.Spent, At: now})
	if over := len(s.records) - maxPendingRecords; over > 0 {
		s.records = s.records[over:]
		s.log.Warn("call records dropped: the shared store has been away too long", slog.Int("dropped", over))
	}
}

// bookRecords books the queued records, a batch at a time, each batch
// resent as it is until the store has it.
func (s *Store) bookRecords(ctx context.Context) {
	for {
		s.mu.Lock()
		if s.recBatch == nil && len(s.records) > 0 {
			n := min(len(s.records), limiter.MaxRecordBatch)
			s.recSeq++
			s.recBatch = &recordBatch{id: fmt.Sprintf("%s:r%d", s.epoch, s.recSeq), ends: s.records[:n:n]}
			s.records = s.records[n:]
		}
		b := s.recBatch
		s.mu.Unlock()
		if b == nil {
			return
		}
		bctx, cancel := background(ctx)
		_, err := s.shared.Record(bctx, b.id, b.ends)
		cancel()
		if err != nil {
			if !s.unreachable(context.Background(), err) {
				s.log.Warn("a batch of call records was refused; dropped", slog.String("batch", b.id), slog.Any("error", err))
				s.mu.Lock()
				s.recBatch = nil
				s.mu.Unlock()
			}
			return
		}
		s.mu.Lock()
		s.recBatch = nil
		s.mu.Unlock()
	}
}

// History reads the shared store's history (every member's calls).
func (s *Store) History(ctx context.Context, client string, months []string) ([]limiter.HistoryRow, error) {
	return s.shared.History(ctx, client, months)
}

// CostRecord reads a call's cost record from the shared store.
func (s *Store) CostRecord(ctx context.Context, requestID string) (limiter.CostRecord, error) {
	return s.shared.CostRecord(ctx, requestID)
}

// Record passes a batch on to the shared store.
func (s *Store) Record(ctx context.Context, batch string, ends []limiter.RecordedEnd) (bool, error) {
	return s.shared.Record(ctx, batch, ends)
}
