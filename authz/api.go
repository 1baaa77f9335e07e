package authz

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"strconv"

	"github.com/tollgate/tollgate/admission"
	"github.com/tollgate/tollgate/limiter"
	"github.com/tollgate/tollgate/policy"
)

// The JSON HTTP API for services and people. Money is always a decimal
// string of dollars ("0.0125"), never a JSON number, so no float touches it.

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
	// The client's period and its history by month, route and model
	// (?months=N, default 12), fleet-wide: the store books each call's row
	// as it settles.
	mux.HandleFunc("GET /api/usage/{client}", func(w http.ResponseWriter, r *http.Request) {
		if !s.mayRead(w, r.PathValue("client")) {
			return
		}
		months := 12
		if m := r.URL.Query().Get("months"); m != "" {
			n, err := strconv.Atoi(m)
			if err != nil || n < 1 || n > admission.MaxHistoryMonths {
				writeJSON(w, http.StatusBadRequest, apiError{fmt.Sprintf("months must be a whole number from 1 to %d", admission.MaxHistoryMonths)})
				return
			}
			months = n
		}
		rep, err := s.svc.History(r.Context(), r.PathValue("client"), months)
		s.clientReport(w, "usage history", rep, err)
	})
	mux.HandleFunc("GET /api/cost/{requestId}", func(w http.ResponseWriter, r *http.Request) {
		rep, err := s.svc.Cost(r.Context(), r.PathValue("requestId"))
		if err == nil && s.cfg.Client != "" && rep.Client != s.cfg.Client {
			err = admission.ErrNoCostRecord // another client's: as if there were none
		}
		switch {
		case errors.Is(err, admission.ErrNoCostRecord):
			writeJSON(w, http.StatusNotFound, apiError{"no cost record for that request id (never settled here, or past its retention, --cost-record-ttl)"})
		case err != nil:
			s.log.Error("cost record failed", slog.Any("error", err))
			writeJSON(w, http.StatusServiceUnavailable, apiError{err.Error()})
		default:
			writeJSON(w, http.StatusOK, rep)
		}
	})
	mux.HandleFunc("GET /api/usage/{client}/current", func(w http.ResponseWriter, r *http.Request) {
		if !s.mayRead(w, r.PathValue("client")) {
			return
		}
		rep, err := s.svc.Usage(r.Context(), r.PathValue("client"))
		switch {
		case errors.Is(err, admission.ErrUnknownClient):
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
		s.endReservation(w, r, func(ctx context.Context, id string) (limiter.Settlement, error) {
			return s.svc.Settle(ctx, id, cost)
		})
	})
	mux.HandleFunc("POST /api/reservations/{id}/release", func(w http.ResponseWriter, r *http.Request) {
		s.endReservation(w, r, s.svc.Release)
	})
}

func (s *Server) endReservation(w http.ResponseWriter, r *http.Request, end func(context.Context, string) (limiter.Settlement, error)) {
	if !s.mayEnd(w, r.PathValue("id")) {
		return
	}
	st, err := end(r.Context(), r.PathValue("id"))
	switch {
	case errors.Is(err, limiter.ErrUnknownReservation):
		writeJSON(w, http.StatusNotFound, apiError{err.Error()})
	case errors.Is(err, admission.ErrBadAsk):
		writeJSON(w, http.StatusBadRequest, apiError{err.Error()})
	case errors.Is(err, admission.ErrSettleTooLarge):
		s.m.settleRefused.Inc()
		s.log.LogAttrs(r.Context(), slog.LevelWarn, "settle refused: cost above what the reservation could cost",
			slog.String("reservation", r.PathValue("id")), slog.Any("error", err))
		writeJSON(w, http.StatusUnprocessableEntity, apiError{err.Error()})
	case err != nil:
		s.log.Error("ending a reservation failed", slog.String("reservation", r.PathValue("id")), slog.Any("error", err))
		writeJSON(w, http.StatusServiceUnavailable, apiError{err.Error()})
	default:
		writeJSON(w, http.StatusOK, settleReply(st))
	}
}

func (s *Server) queueRoutes(mux *http.ServeMux) {
	mux.HandleFunc("GET /api/queue/status", func(w http.ResponseWriter, _ *http.Request) {
		writeJSON(w, http.StatusOK, s.svc.QueueStatus())
	})
	mux.HandleFunc("GET /api/queue", func(w http.ResponseWriter, _ *http.Request) {
		writeJSON(w, http.StatusOK, map[string]any{"held": s.svc.QueueList()})
	})
	// {id} is a queue id (x-tollgate-queue-id, GET /api/queue) or a request
	// id; several calls may share a request id, and then the earliest held
	// one is meant.
	mux.HandleFunc("GET /api/queue/position/{id}", func(w http.ResponseWriter, r *http.Request) {
		p, ok := s.svc.QueuePosition(r.PathValue("id"))
		if !ok {
			writeJSON(w, http.StatusNotFound, apiError{"no call with that queue id or request id is held"})
			return
		}
		writeJSON(w, http.StatusOK, p)
	})
	mux.HandleFunc("DELETE /api/queue/{id}", func(w http.ResponseWriter, r *http.Request) {
		id := r.PathValue("id")
		p, ok := s.svc.QueuePosition(id)
		if !ok || !s.svc.QueueRemove(p.QueueID) {
			writeJSON(w, http.StatusNotFound, apiError{"no call with that queue id or request id is held"})
			return
		}
		s.log.LogAttrs(r.Context(), slog.LevelInfo, "call removed from the queue", slog.String("request_id", p.ID), slog.String("queue_id", p.QueueID))
		writeJSON(w, http.StatusOK, map[string]string{"queue_id": p.QueueID, "request_id": p.ID, "outcome": "removed"})
	})
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
