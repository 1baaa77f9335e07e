package limiter

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"time"

	"github.com/tollgate/tollgate/policy"
)

// History and cost records: ending a reservation whose Ending carries a
// CallRecord books, in the same store step as the money, a row of its
// client's history (by month, route and model: calls, cost, tokens,
// savings) on its first settle, and the call's cost record under its
// request id on its first end of either kind. Both are fleet-wide on
// Redis (keys with a TTL) and kept for a configured time. Amounts are
// integer nano-dollars and token counts, never floats.

// CallRecord describes the call a reservation was for.
type CallRecord struct {
	// RequestID names the cost record ("": none is kept).
	RequestID string
	Client    string
	// Month is the history's period ("2026-01").
	Month        string
	Route, Model string
	// InputTokens and OutputTokens are what the call really used (0 for a
	// call not counted in tokens).
	InputTokens, OutputTokens int64
	Estimate                  policy.Money
	// Saved is what the call's rewrites and cache saved (negative: cost).
	Saved policy.Money
}

// Limits of a CallRecord: its names are short, its amounts exact.
const (
	MaxRecordName  = 256
	MaxRequestID   = 128
	maxRecordMonth = 16
)

// Validate refuses a record no store can keep.
func (c *CallRecord) Validate() error {
	switch {
	case c.Client == "" || len(c.Client) > MaxRecordName || len(c.Route) > MaxRecordName || len(c.Model) > MaxRecordName:
		return fmt.Errorf("record: client %q, route and model must be 1 to %d bytes", c.Client, MaxRecordName)
	case c.Month == "" || len(c.Month) > maxRecordMonth || strings.ContainsAny(c.Month, " \n:"):
		return fmt.Errorf("record: month %q is not a period", c.Month)
	case len(c.RequestID) > MaxRequestID || strings.ContainsAny(c.RequestID, " \n"):
		return fmt.Errorf("record: request id of %d bytes, or with spaces", len(c.RequestID))
	case c.InputTokens < 0 || c.OutputTokens < 0 || c.InputTokens >= MaxMoney || c.OutputTokens >= MaxMoney:
		return errors.New("record: token counts out of range [0, 2^53)")
	case c.Estimate < 0 || c.Estimate >= MaxMoney || c.Saved <= -MaxMoney || c.Saved >= MaxMoney:
		return errors.New("record: amounts out of range")
	}
	return nil
}

// HistoryRow is one month, route and model of a client's history.
type HistoryRow struct {
	Month, Route, Model       string
	Calls                     int64
	Cost                      policy.Money
	InputTokens, OutputTokens int64
	Saved                     policy.Money
}

// CostRecord is one call's cost, as its end booked it.
type CostRecord struct {
	RequestID, Client, Route, Model string
	Outcome                         Outcome
	Estimate, Actual, Saved         policy.Money
	InputTokens, OutputTokens       int64
	// At is when the call ended.
	At time.Time
}

// ErrNoCostRecord is returned for a request id with no cost record (never
// booked, or past its retention).
var ErrNoCostRecord = errors.New("limiter: no cost record for that request id")

// Historian reads what Finish booked. Safe for concurrent use.
type Historian interface {
	// History returns the client's rows of the given months (most recent
	// first as given), ordered by month as asked, then route, then model.
	History(ctx context.Context, client string, months []string) ([]HistoryRow, error)
	// CostRecord returns the cost record of a request id, or
	// ErrNoCostRecord.
	CostRecord(ctx context.Context, requestID string) (CostRecord, error)
}

// Retention of history and cost records.
const (
	DefaultHistoryMonths = 13
	MaxHistoryMonths     = 120
	DefaultCostTTL       = 24 * time.Hour
	MaxCostTTL           = 90 * 24 * time.Hour
)

// HistoryTTL is how long a month of history outlives its last booking:
// months whole months of 31 days.
func HistoryTTL(months int) time.Duration { return time.Duration(months) * 31 * 24 * time.Hour }

// ValidateRetention refuses retention settings a store cannot keep.
func ValidateRetention(months int, costTTL time.Duration) error {
	var errs []error
	if months < 0 || months > MaxHistoryMonths {
		errs = append(errs, fmt.Errorf("history retention %d months out of range [0, %d]", months, MaxHistoryMonths))
	}
	if costTTL < 0 || costTTL > MaxCostTTL || costTTL%time.Second != 0 {
		errs = append(errs, fmt.Errorf("cost record retention %v must be whole seconds up to %v", costTTL, MaxCostTTL))
	}
	return errors.Join(errs...)
}

// RecordedEnd is the end of a call decided elsewhere (a fleet member's
// local reservation), booked into history and cost records later.
type RecordedEnd struct {
	Record  CallRecord
	Outcome Outcome
	Spent   policy.Money
	At      time.Time
}

// MaxRecordBatch bounds the ends one Record batch carries.
const MaxRecordBatch = 256

// Recorder books the history and cost records of calls ended elsewhere,
// in batches applied exactly once (a batch id seen before, within a day,
// changes nothing), as Booker books their spend.
type Recorder interface {
	Record(ctx context.Context, batch string, ends []RecordedEnd) (applied bool, err error)
}

// ValidateRecordBatch refuses a batch no store can book.
func ValidateRecordBatch(batch string, ends []RecordedEnd) error {
	if batch == "" || len(batch) > MaxRequestID || strings.ContainsAny(batch, " \n") {
		return fmt.Errorf("limiter: record batch id %q is empty, long or has spaces", batch)
	}
	if len(ends) > MaxRecordBatch {
		return fmt.Errorf("limiter: record batch %s: %d ends, more than %d", batch, len(ends), MaxRecordBatch)
	}
	for i := range ends {
		e := &ends[i]
		if err := e.Record.Validate(); err != nil {
			return fmt.Errorf("limiter: record batch %s: %w", batch, err)
		}
		if e.Spent < 0 || e.Spent >= MaxMoney || (e.Outcome != OutcomeSettled && e.Outcome != OutcomeReleased && e.Outcome != OutcomeExpired) {
			return fmt.Errorf("limiter: record batch %s: end %d: outcome %q, spent %d", batch, i, e.Outcome, e.Spent)
		}
	}
	return nil
}
