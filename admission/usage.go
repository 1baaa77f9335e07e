package admission

import (
	"context"
	"errors"
	"time"

	"github.com/tollgate/tollgate/costing"
	"github.com/tollgate/tollgate/limiter"
	"github.com/tollgate/tollgate/policy"
)

// UsageBudget is one budget of a client's chain. Money is a decimal string
// of dollars ("0.0125"), never a JSON number, so no float touches it.
type UsageBudget struct {
	Owner     string `json:"owner"`
	Limit     string `json:"limit_usd"` // "unlimited" when not capped
	Spent     string `json:"spent_usd"`
	Reserved  string `json:"reserved_usd"`
	Remaining string `json:"remaining_usd"`
}

// UsageReport answers GET /api/usage/{client}.
type UsageReport struct {
	Client        string        `json:"client"`
	Known         bool          `json:"known"`
	Tier          string        `json:"tier"`
	Period        string        `json:"period"`
	PeriodEnds    time.Time     `json:"period_ends"`
	InFlight      int64         `json:"in_flight"`
	MaxConcurrent int64         `json:"max_concurrent"`
	Budgets       []UsageBudget `json:"budgets"`
	// Savings are what the optimizer's rewrites saved the client this
	// period, by strategy (a negative amount: a strategy that cost more
	// than it saved), and their total.
	Savings      map[string]string `json:"savings_usd"`
	SavingsTotal string            `json:"savings_total_usd"`
	// Forecast projects the client's own budget to the period's end; nil
	// for a client whose budget is not watched (see alerts.budget_clients).
	Forecast *UsageForecast `json:"forecast,omitempty"`
}

// UsageForecast is a client's projected use (spent and reserved) at the
// end of the period, from its use so far and its rate over RateWindow
// (the span sampled so far, up to alerts.forecast_window).
type UsageForecast struct {
	Spend      string `json:"forecast_usd"`
	PerHour    string `json:"rate_usd_per_hour"`
	RateWindow string `json:"rate_window"` // "0s": too few samples yet, the forecast is the use now
	// ExceedsBudget: the projection is above the budget; CrossesAt is when
	// the budget runs out at the recent rate (absent once it has).
	ExceedsBudget bool       `json:"forecast_exceeds_budget"`
	CrossesAt     *time.Time `json:"budget_crossed_at,omitempty"`
}

// ErrUnknownClient is returned for a client the policy does not know and
// does not let in.
var ErrUnknownClient = errors.New("unknown client, and the policy denies unknown clients")

// Usage reports a client's spend this period along its parent chain.
func (s *Service) Usage(ctx context.Context, clientID string) (UsageReport, error) {
	set := s.policies.Policy()
	c, ok := set.Client(clientID)
	if !ok {
		return UsageReport{}, ErrUnknownClient
	}
	now := s.clock.Now()
	_, known := set.Clients[clientID]
	rep := UsageReport{Client: clientID, Known: known, Tier: c.Tier.Name, Period: set.Defaults.Period(now),
		PeriodEnds: set.Defaults.PeriodEnd(now), MaxConcurrent: c.Tier.MaxConcurrent}
	u, err := s.store.Usage(ctx, rep.Period, Chain(c), time.Time{})
	if err != nil {
		return UsageReport{}, err
	}
	rep.InFlight = u.InFlight
	for _, b := range u.Budgets {
		ub := UsageBudget{Owner: b.Owner, Limit: "unlimited", Spent: b.Spent.String(), Reserved: b.Reserved.String(), Remaining: "unlimited"}
		if b.Limit >= 0 {
			ub.Limit, ub.Remaining = b.Limit.String(), b.Remaining().String()
		}
		rep.Budgets = append(rep.Budgets, ub)
	}
	rep.Savings = make(map[string]string, len(u.Savings))
	for _, sv := range u.Savings {
		rep.Savings[sv.Strategy] = sv.Amount.String()
	}
	rep.SavingsTotal = limiter.SavingsTotal(u.Savings).String()
	if len(u.Budgets) > 0 {
		own := u.Budgets[0]
		if f, ok := s.forecastOf(clientID, rep.Period, own.Spent+own.Reserved, own.Limit, rep.PeriodEnds); ok {
			rep.Forecast = &UsageForecast{Spend: f.Spend.String(), PerHour: f.PerHour.String(), RateWindow: f.Window.Round(time.Second).String(),
				ExceedsBudget: f.Exceeds}
			if !f.Crosses.IsZero() {
				at := f.Crosses.UTC()
				rep.Forecast.CrossesAt = &at
			}
		}
	}
	return rep, nil
}

// Settle ends a reservation at its actual cost, for a caller that learned
// it outside Envoy (the JSON API). The store keeps what the admission
// charged each bucket; those units stay spent. A cost above SettleBound is
// refused with a *SettleBoundError and changes nothing.
func (s *Service) Settle(ctx context.Context, id string, actual policy.Money) (limiter.Settlement, error) {
	if bound, basis := s.SettleBound(id); actual > bound {
		return limiter.Settlement{ID: id}, &SettleBoundError{Actual: actual, Bound: bound, Basis: basis}
	}
	return s.end(ctx, limiter.Ending{ID: id, Outcome: limiter.OutcomeSettled, Actual: actual})
}

// Release ends a reservation with nothing spent.
func (s *Service) Release(ctx context.Context, id string) (limiter.Settlement, error) {
	return s.end(ctx, limiter.Ending{ID: id, Outcome: limiter.OutcomeReleased})
}

func (s *Service) end(ctx context.Context, e limiter.Ending) (limiter.Settlement, error) {
	if p := s.pending.takeFailOpen(e.ID); p != nil {
		// Let through fail open: its spend goes to the fail-open journal.
		spent := e.Outcome.Spend(p.failOpen.cost, e.Actual)
		s.failOpen.settled(p.failOpen, spent)
		logSettled(s.dlog, s.clock, p, e.ID, string(e.Outcome), spent, costing.Usage{})
		return limiter.Settlement{ID: e.ID, Outcome: e.Outcome, Estimated: p.failOpen.cost, Spent: spent}, nil
	}
	if e.Record == nil {
		if p := s.pending.peek(e.ID); p != nil {
			e.Record = callRecord(s.clock.Now(), p, p.est.InputTokens, p.est.OutputTokens, nil)
		}
	}
	// A settle must land even if the caller hangs up.
	st, err := s.store.Finish(context.WithoutCancel(ctx), e)
	if err != nil {
		return st, err
	}
	// The call is over: ext_proc has nothing left to settle, and its slot
	// may let a held call go.
	p := s.pending.take(st.ID)
	if !st.Repeat {
		logSettled(s.dlog, s.clock, p, e.ID, string(e.Outcome), st.Spent, costing.Usage{})
	}
	if p != nil {
		p.lead.abandon(ctx, "ended") // its answer, if any, is not followed any more
		s.settler.kickSettled(p)
	} else {
		s.queue.KickAll()
	}
	return st, nil
}
