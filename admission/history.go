package admission

import (
	"context"
	"errors"
	"strings"
	"time"
	"unicode/utf8"

	"github.com/tollgate/tollgate/limiter"
	"github.com/tollgate/tollgate/policy"
)

// History and cost records: every call that ends through the store books
// its row of its client's history (month, route, model) and its cost
// record (by request id) in the same step as its money (limiter.CallRecord
// on the Ending). This file builds the record and reads them back.

// callRecord describes p's call for its Ending: the tokens the response
// reported (estimated ones when it reported none), what it saved. Values a
// store would refuse (an over-long model name, a request id with spaces)
// are cut or left out, so that a record never stops a settle.
func callRecord(now time.Time, p *pendingCall, in, out int64, savings []limiter.Saving) *limiter.CallRecord {
	model := p.est.Model
	if !p.est.ModelKnown && p.est.PriceEntry != "" {
		// A model the policy prices by its catch-all entry ("*") is booked
		// under that entry: the worker names the model, and rows kept for
		// months must not grow with every name it sends.
		model = p.est.PriceEntry
	}
	r := &limiter.CallRecord{Client: p.client, Month: p.set.Defaults.Period(now), Model: cut(model, limiter.MaxRecordName),
		InputTokens: max(in, 0), OutputTokens: max(out, 0), Estimate: p.est.Cost, Saved: limiter.SavingsTotal(savings)}
	if p.route != nil {
		r.Route = p.route.Name
	} else if len(p.est.Pools) > 0 {
		r.Route = "pool:" + p.est.Pools[0].Pool.Name // a direct reservation of one pool
	}
	if id := p.requestID; len(id) <= limiter.MaxRequestID && !strings.ContainsAny(id, " \n") {
		r.RequestID = id
	}
	if r.Validate() != nil {
		return nil
	}
	return r
}

// cut is s in at most n bytes, cut on a rune boundary.
func cut(s string, n int) string {
	if len(s) <= n {
		return s
	}
	for n > 0 && !utf8.RuneStart(s[n]) {
		n--
	}
	return s[:n]
}

// HistoryMonth is one month of a client's history.
type HistoryMonth struct {
	Month        string       `json:"month"`
	Calls        int64        `json:"calls"`
	Cost         string       `json:"cost_usd"`
	InputTokens  int64        `json:"input_tokens"`
	OutputTokens int64        `json:"output_tokens"`
	Saved        string       `json:"saved_usd"`
	Rows         []HistoryRow `json:"by_route_and_model"`
}

// HistoryRow is one route and model of a month.
type HistoryRow struct {
	Route        string `json:"route"`
	Model        string `json:"model"`
	Calls        int64  `json:"calls"`
	Cost         string `json:"cost_usd"`
	InputTokens  int64  `json:"input_tokens"`
	OutputTokens int64  `json:"output_tokens"`
	Saved        string `json:"saved_usd"`
}

// UsageHistory answers GET /api/usage/{client}: the current period's
// usage and the history of the last months (the current one first).
type UsageHistory struct {
	UsageReport
	History []HistoryMonth `json:"history"`
}

// MaxHistoryMonths bounds the months one history request reads.
const MaxHistoryMonths = 24

// History reports a client's usage this period and its history over the
// last months (1 to MaxHistoryMonths), the current one first.
func (s *Service) History(ctx context.Context, clientID string, months int) (UsageHistory, error) {
	rep, err := s.Usage(ctx, clientID)
	if err != nil {
		return UsageHistory{}, err
	}
	set := s.policies.Policy()
	months = min(max(months, 1), MaxHistoryMonths)
	var periods []string
	t := s.clock.Now()
	for range months {
		periods = append(periods, set.Defaults.Period(t))
		start := set.Defaults.PeriodEnd(t).AddDate(0, -1, 0) // the period's first instant
		t = start.Add(-time.Nanosecond)
	}
	rows, err := s.store.History(ctx, clientID, periods)
	if err != nil {
		return UsageHistory{}, err
	}
	out := UsageHistory{UsageReport: rep, History: make([]HistoryMonth, len(periods))}
	index := map[string]int{}
	for i, p := range periods {
		out.History[i] = HistoryMonth{Month: p, Cost: "0", Saved: "0", Rows: []HistoryRow{}}
		index[p] = i
	}
	costs, saved := make([]policy.Money, len(periods)), make([]policy.Money, len(periods))
	for _, r := range rows {
		i, ok := index[r.Month]
		if !ok {
			continue
		}
		m := &out.History[i]
		m.Calls += r.Calls
		m.InputTokens += r.InputTokens
		m.OutputTokens += r.OutputTokens
		costs[i] += r.Cost
		saved[i] += r.Saved
		m.Rows = append(m.Rows, HistoryRow{Route: r.Route, Model: r.Model, Calls: r.Calls, Cost: r.Cost.String(),
			InputTokens: r.InputTokens, OutputTokens: r.OutputTokens, Saved: r.Saved.String()})
	}
	for i := range out.History {
		out.History[i].Cost, out.History[i].Saved = costs[i].String(), saved[i].String()
	}
	return out, nil
}

// CostReport answers GET /api/cost/{requestId}.
type CostReport struct {
	RequestID    string    `json:"request_id"`
	Client       string    `json:"client"`
	Route        string    `json:"route"`
	Model        string    `json:"model"`
	Outcome      string    `json:"outcome"`
	Estimate     string    `json:"estimate_usd"`
	Actual       string    `json:"actual_usd"`
	Saved        string    `json:"saved_usd"`
	InputTokens  int64     `json:"input_tokens"`
	OutputTokens int64     `json:"output_tokens"`
	At           time.Time `json:"at"`
}

// ErrNoCostRecord is returned by Cost for a request id without a record.
var ErrNoCostRecord = limiter.ErrNoCostRecord

// Cost reports the settled cost of the call with requestID.
func (s *Service) Cost(ctx context.Context, requestID string) (CostReport, error) {
	if requestID == "" || len(requestID) > limiter.MaxRequestID {
		return CostReport{}, ErrNoCostRecord
	}
	r, err := s.store.CostRecord(ctx, requestID)
	if err != nil {
		if errors.Is(err, limiter.ErrNoCostRecord) {
			return CostReport{}, ErrNoCostRecord
		}
		return CostReport{}, err
	}
	return CostReport{RequestID: r.RequestID, Client: r.Client, Route: r.Route, Model: r.Model, Outcome: string(r.Outcome),
		Estimate: r.Estimate.String(), Actual: r.Actual.String(), Saved: r.Saved.String(),
		InputTokens: r.InputTokens, OutputTokens: r.OutputTokens, At: r.At}, nil
}
