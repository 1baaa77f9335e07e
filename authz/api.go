package authz

import (
	"context"
	"encoding/json"
	"errors"
	"io"
	"log/slog"
	"net/http"
	"time"

	"github.com/tollgate/tollgate/limiter"
	"github.com/tollgate/tollgate/policy"
)

// The JSON HTTP API for services and people. Money is always a decimal
// string of dollars ("0.0125"), never a JSON number, so no float touches it.

// UsageBudget is one budget of a client's chain.
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
}

// Usage reports a client's spend this period along its parent chain.
func (d *Decider) Usage(ctx context.Context, clientID string) (UsageReport, error) {
	l, ok := d.store.(limiter.Ledger)
	if !ok {
		return UsageReport{}, errors.New("the limiter store keeps no budgets")
	}
	set := d.policies.Policy()
	c, ok := set.Client(clientID)
	if !ok {
		return UsageReport{}, errUnknownClient
	}
	now := d.clock.Now()
	_, known := set.Clients[clientID]
	rep := UsageReport{Client: clientID, Known: known, Tier: c.Tier.Name, Period: set.Defaults.Period(now),
		PeriodEnds: set.Defaults.PeriodEnd(now), MaxConcurrent: c.Tier.MaxConcurrent}
	u, err := l.Usage(ctx, rep.Period, Chain(c), time.Time{})
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
	return rep, nil
}

var errUnknownClient = errors.New("unknown client, and the policy denies unknown clients")

// SettleRequest is the body of POST /api/reservations/{id}/settle: the
// call's actual cost in dollars.
type SettleRequest struct {
	ActualCost string `json:"actual_cost_usd"`
}

// SettleReply reports an ended reservation.
type SettleReply struct {
	ID        string `json:"id"`
	Outcome   string `json:"outcome"`
	Estimated string `json:"estimated_usd"`
	Spent     string `json:"spent_usd"`
	Repeat    bool   `json:"repeat"`
}

func settleReply(s limiter.Settlement) SettleReply {
	return SettleReply{ID: s.ID, Outcome: string(s.Outcome), Estimated: s.Estimated.String(), Spent: s.Spent.String(), Repeat: s.Repeat}
}

func (s *Server) apiRoutes(mux *http.ServeMux) {
	mux.HandleFunc("GET /api/usage/{client}", func(w http.ResponseWriter, r *http.Request) {
		rep, err := s.decider.Usage(r.Context(), r.PathValue("client"))
		switch {
		case errors.Is(err, errUnknownClient):
			writeJSON(w, http.StatusNotFound, apiError{err.Error()})
		case err != nil:
			s.log.Error("usage failed", slog.Any("error", err))
			writeJSON(w, http.StatusServiceUnavailable, apiError{err.Error()})
		default:
			writeJSON(w, http.StatusOK, rep)
		}
	})
	mux.HandleFunc("POST /api/reservations/{id}/settle", func(w http.ResponseWriter, r *http.Request) {
		var req SettleRequest
		body, err := io.ReadAll(io.LimitReader(r.Body, 4096))
		if err == nil {
			err = json.Unmarshal(body, &req)
		}
		if err != nil {
			writeJSON(w, http.StatusBadRequest, apiError{"body must be {\"actual_cost_usd\": \"0.0123\"}: " + err.Error()})
			return
		}
		cost, err := policy.ParseMoney(req.ActualCost)
		if err != nil || cost < 0 {
			writeJSON(w, http.StatusBadRequest, apiError{"actual_cost_usd must be a non-negative dollar amount such as \"0.0123\""})
			return
		}
		s.endReservation(w, r, func(ctx context.Context, l limiter.Ledger, id string) (limiter.Settlement, error) {
			return l.Settle(ctx, id, cost)
		})
	})
	mux.HandleFunc("POST /api/reservations/{id}/release", func(w http.ResponseWriter, r *http.Request) {
		s.endReservation(w, r, func(ctx context.Context, l limiter.Ledger, id string) (limiter.Settlement, error) {
			return l.Release(ctx, id)
		})
	})
}

func (s *Server) endReservation(w http.ResponseWriter, r *http.Request, end func(context.Context, limiter.Ledger, string) (limiter.Settlement, error)) {
	l, ok := s.deps.Store.(limiter.Ledger)
	if !ok {
		writeJSON(w, http.StatusNotImplemented, apiError{"the limiter store keeps no reservations"})
		return
	}
	// A settle must land even if the caller hangs up.
	st, err := end(context.WithoutCancel(r.Context()), l, r.PathValue("id"))
	switch {
	case errors.Is(err, limiter.ErrUnknownReservation):
		writeJSON(w, http.StatusNotFound, apiError{err.Error()})
	case err != nil:
		s.log.Error("ending a reservation failed", slog.String("reservation", r.PathValue("id")), slog.Any("error", err))
		writeJSON(w, http.StatusServiceUnavailable, apiError{err.Error()})
	default:
		// The call is over: ext_proc has nothing left to settle, and its slot
		// may let a held call go.
		if p := s.decider.pending.take(st.ID); p != nil {
			s.decider.kickSettled(p)
		} else {
			s.decider.queue.KickAll()
		}
		writeJSON(w, http.StatusOK, settleReply(st))
	}
}

type apiError struct {
	Error string `json:"error"`
}

func writeJSON(w http.ResponseWriter, status int, v any) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(status)
	enc := json.NewEncoder(w)
	enc.SetIndent("", "  ")
	_ = enc.Encode(v)
}
