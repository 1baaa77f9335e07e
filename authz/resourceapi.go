package authz

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"maps"
	"net/http"
	"net/url"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/tollgate/tollgate/admission"
	"github.com/tollgate/tollgate/limiter"
	"github.com/tollgate/tollgate/policy"
)

// The resource API (docs/api.md): the seed service's endpoints where they
// fit a sidecar. Everything here is behind the token (apiMux), except
// GET /health on the health listener.

// maxCheckRequest bounds what /api/resources/check reads: a call's body as
// large as /api/estimate takes, and room for the rest.
const maxCheckRequest = maxEstimateBody + 64<<10

// CheckRequest is the body of POST /api/resources/check: a call as a
// worker would make it. Give url (or route: a route's name, its host and
// path prefix make the URL), and body (a JSON value, or a JSON string for
// a body that is not JSON), or model and max_tokens (an LLM call with that
// model and output allowance and an empty prompt). Class is sent in the
// policy's priority header.
type CheckRequest struct {
	Client    string            `json:"client"`
	URL       string            `json:"url,omitempty"`
	Route     string            `json:"route,omitempty"`
	Method    string            `json:"method,omitempty"`
	Class     string            `json:"class,omitempty"`
	Headers   map[string]string `json:"headers,omitempty"`
	Body      json.RawMessage   `json:"body,omitempty"`
	Model     string            `json:"model,omitempty"`
	MaxTokens *int64            `json:"max_tokens,omitempty"`
}

const checkUsage = `the body must be {"client": "acme", "url": "https://api.openai.com/v1/chat/completions", "body": {...}} ` +
	`or {"client": "acme", "route": "openai-chat", "model": "gpt-4o", "max_tokens": 500}`

// decodeCheck reads a CheckRequest strictly into the admission Request it
// describes; msg says what is wrong with it.
func decodeCheck(raw []byte, set *policy.Set) (admission.Request, string) {
	var req CheckRequest
	dec := json.NewDecoder(bytes.NewReader(raw))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&req); err != nil {
		return admission.Request{}, checkUsage + ": " + err.Error()
	}
	if dec.More() {
		return admission.Request{}, checkUsage + ": one JSON object, nothing after it"
	}
	if req.Client == "" {
		return admission.Request{}, "client is required: the id the call would carry in x-tollgate-client"
	}
	if (req.URL == "") == (req.Route == "") {
		return admission.Request{}, "give url (the upstream URL) or route (a route of the policy), one of them"
	}
	target := req.URL
	if req.Route != "" {
		var rt *policy.Route
		for _, r := range set.Routes {
			if r.Name == req.Route {
				rt = r
			}
		}
		switch {
		case rt == nil:
			return admission.Request{}, fmt.Sprintf("route %q is not in the policy", req.Route)
		case rt.Host == "" || strings.HasPrefix(rt.Host, "*"):
			return admission.Request{}, fmt.Sprintf("route %q matches many hosts: give the call's url instead", req.Route)
		}
		target = "https://" + rt.Host + rt.PathPrefix
	}
	u, err := url.Parse(target)
	if err != nil || u.Host == "" {
		return admission.Request{}, fmt.Sprintf("url %q must be an absolute URL such as https://api.openai.com/v1/chat/completions", target)
	}
	ar := admission.Request{ID: "check", Client: req.Client, Method: strings.ToUpper(req.Method), Host: u.Host, Path: u.EscapedPath(),
		Headers: make(map[string]string, len(req.Headers)+2)}
	if ar.Method == "" {
		ar.Method = http.MethodPost
	}
	if ar.Path == "" {
		ar.Path = "/"
	}
	for k, v := range req.Headers {
		ar.Headers[strings.ToLower(k)] = v
	}
	if req.Class != "" {
		if _, ok := policy.ParseClass(req.Class); !ok {
			return admission.Request{}, fmt.Sprintf("class %q: want immediate, fast, normal, batch or deferred", req.Class)
		}
		ar.Headers[strings.ToLower(set.Queue.PriorityHeader)] = req.Class
	}
	trimmed := bytes.TrimSpace(req.Body)
	hasBody := len(trimmed) > 0 && !bytes.Equal(trimmed, []byte("null"))
	switch {
	case hasBody && (req.Model != "" || req.MaxTokens != nil):
		return admission.Request{}, "give body, or model and max_tokens, not both"
	case hasBody && trimmed[0] == '"':
		var text string
		if err := json.Unmarshal(trimmed, &text); err != nil {
			return admission.Request{}, "body: " + err.Error()
		}
		ar.Body = []byte(text)
	case hasBody:
		ar.Body = trimmed
		if _, ok := ar.Headers["content-type"]; !ok {
			ar.Headers["content-type"] = "application/json"
		}
	case req.Model != "":
		m := map[string]any{"model": req.Model, "messages": []any{}}
		if req.MaxTokens != nil {
			if *req.MaxTokens < 0 {
				return admission.Request{}, "max_tokens must not be negative"
			}
			m["max_tokens"] = *req.MaxTokens
		}
		ar.Body, _ = json.Marshal(m) // a map of strings and numbers always encodes
		ar.Headers["content-type"] = "application/json"
	case req.MaxTokens != nil:
		return admission.Request{}, "max_tokens needs a model"
	}
	ar.BodySize = int64(len(ar.Body))
	return ar, ""
}

func (s *Server) resourceRoutes(mux *http.ServeMux) {
	mux.HandleFunc("GET /status", s.status)
	mux.HandleFunc("GET /api/resources/availability", func(w http.ResponseWriter, r *http.Request) {
		if c := r.URL.Query().Get("client"); c != "" && !s.mayRead(w, c) {
			return
		}
		rep, err := s.svc.Availability(r.Context(), r.URL.Query().Get("client"))
		s.clientReport(w, "availability", rep, err)
	})
	mux.HandleFunc("POST /api/resources/check", s.check)
	mux.HandleFunc("POST /api/resources/estimate", s.estimate)
	mux.HandleFunc("POST /api/cost/estimate", s.estimate)
	mux.HandleFunc("POST /admin/scheduler/stop", func(w http.ResponseWriter, r *http.Request) {
		s.svc.StopScheduler()
		s.log.LogAttrs(r.Context(), slog.LevelWarn, "scheduler stopped: held calls stay held until POST /admin/scheduler/start")
		writeJSON(w, http.StatusOK, map[string]any{"scheduler": "stopped"})
	})
	mux.HandleFunc("POST /admin/scheduler/start", func(w http.ResponseWriter, r *http.Request) {
		s.svc.StartScheduler()
		s.log.LogAttrs(r.Context(), slog.LevelInfo, "scheduler started")
		writeJSON(w, http.StatusOK, map[string]any{"scheduler": "running"})
	})
}

func (s *Server) check(w http.ResponseWriter, r *http.Request) {
	raw, err := io.ReadAll(io.LimitReader(r.Body, maxCheckRequest+1))
	if err != nil {
		writeJSON(w, http.StatusBadRequest, apiError{"reading the body: " + err.Error()})
		return
	}
	if len(raw) > maxCheckRequest {
		writeJSON(w, http.StatusRequestEntityTooLarge, apiError{fmt.Sprintf("the request is over %d bytes", maxCheckRequest)})
		return
	}
	req, msg := decodeCheck(raw, s.svc.Policy())
	if msg != "" {
		writeJSON(w, http.StatusBadRequest, apiError{msg})
		return
	}
	if s.cfg.Client != "" {
		req.Client = s.cfg.Client // pinned (serve --client): as Check would see it
	}
	rep, err := s.svc.Check(r.Context(), &req)
	if err != nil {
		s.log.Error("check failed", slog.Any("error", err))
		writeJSON(w, http.StatusServiceUnavailable, apiError{err.Error()})
		return
	}
	writeJSON(w, http.StatusOK, rep)
}

// StatusReply answers GET /status.
type StatusReply struct {
	Version          string                       `json:"version"`
	Uptime           float64                      `json:"uptime_seconds"`
	Started          time.Time                    `json:"started"`
	Store            string                       `json:"store"`
	Settlement       string                       `json:"settlement"`
	Policy           StatusPolicy                 `json:"policy"`
	Fleet            any                          `json:"fleet,omitempty"`
	SchedulerStopped bool                         `json:"scheduler_stopped"`
	Queue            map[string]int               `json:"queue_by_class"`
	QueueTotal       int                          `json:"queue_total"`
	Pending          int                          `json:"pending_settlements"`
	Pools            []admission.PoolAvailability `json:"pools"`
	PoolsError       string                       `json:"pools_error,omitempty"`
}

// StatusPolicy names the policy in force: Revision is a digest of its
// compiled form, equal on every member that loaded the same policy.
type StatusPolicy struct {
	Revision string    `json:"revision"`
	LoadedAt time.Time `json:"loaded_at"`
	Files    []string  `json:"files"`
}

func (s *Server) status(w http.ResponseWriter, r *http.Request) {
	set := s.svc.Policy()
	sum, _ := json.Marshal(set.Summary()) // plain data: always encodes
	digest := sha256.Sum256(sum)
	rep := StatusReply{Version: s.cfg.Version, Started: s.began, Uptime: time.Since(s.began).Seconds(),
		Store: storeKind(s.deps.Store), Settlement: s.svc.Settlement().String(),
		Policy:           StatusPolicy{Revision: hex.EncodeToString(digest[:6]), LoadedAt: set.LoadedAt, Files: set.Files},
		SchedulerStopped: s.svc.SchedulerStopped(), Queue: map[string]int{}, Pending: s.svc.Pending()}
	if rep.Version == "" {
		rep.Version = "dev"
	}
	for _, c := range policy.Classes {
		rep.Queue[c.String()] = 0
	}
	q := s.svc.QueueStatus()
	rep.QueueTotal = q.Total
	for _, l := range q.Lines {
		for class, st := range l.Classes {
			rep.Queue[class] += st.Depth
		}
	}
	if s.deps.Cluster != nil {
		rep.Fleet = s.deps.Cluster()
	}
	if av, err := s.svc.Availability(r.Context(), ""); err != nil {
		rep.PoolsError = err.Error()
	} else {
		rep.Pools = av.Pools
	}
	writeJSON(w, http.StatusOK, rep)
}

// storeKind names a store for people: memory, redis or fleet.
func storeKind(st admission.Store) string {
	switch t := fmt.Sprintf("%T", st); {
	case strings.Contains(t, "memstore."):
		return "memory"
	case strings.Contains(t, "redisstore."):
		return "redis"
	case strings.Contains(t, "cluster."):
		return "fleet"
	default:
		return strings.TrimPrefix(t, "*")
	}
}

// ReserveRequest is the body of POST /internal/reserve.
type ReserveRequest struct {
	Client string `json:"client"`
	Route  string `json:"route,omitempty"`
	Pool   string `json:"pool,omitempty"`
	Units  int64  `json:"units"`
	// Estimate is the money to hold, in dollars ("0.02"); absent: the
	// pools' unit prices times units.
	Estimate string `json:"estimate_usd,omitempty"`
	// RequestID names the work's cost record (GET /api/cost/{requestId}).
	RequestID string `json:"request_id,omitempty"`
}

// ConsumeRequest is the body of POST /internal/consume: the reservation,
// what the work cost, and (optional) the units it really used per pool.
type ConsumeRequest struct {
	ID     string           `json:"reservation_id"`
	Actual string           `json:"actual_cost_usd"`
	Used   map[string]int64 `json:"used_units,omitempty"`
}

// ReleaseRequest is the body of POST /internal/release.
type ReleaseRequest struct {
	ID string `json:"reservation_id"`
}

// maxInternalRequest bounds an /internal body: a few names and numbers.
const maxInternalRequest = 16 << 10

// decodeStrict reads one JSON object into v, refusing unknown fields and
// trailing data; the error says what was wrong for the 400.
func decodeStrict(raw []byte, v any) error {
	dec := json.NewDecoder(bytes.NewReader(raw))
	dec.DisallowUnknownFields()
	if err := dec.Decode(v); err != nil {
		return err
	}
	if dec.More() {
		return errors.New("one JSON object, nothing after it")
	}
	return nil
}

// decodeReserve reads a ReserveRequest into the ask it makes.
func decodeReserve(raw []byte) (admission.DirectAsk, error) {
	var req ReserveRequest
	if err := decodeStrict(raw, &req); err != nil {
		return admission.DirectAsk{}, err
	}
	if req.Client == "" {
		return admission.DirectAsk{}, errors.New("client is required")
	}
	ask := admission.DirectAsk{Client: req.Client, Route: req.Route, Pool: req.Pool, Units: req.Units, Cost: -1, RequestID: req.RequestID}
	if req.Estimate != "" {
		m, err := policy.ParseMoney(req.Estimate)
		if err != nil || m < 0 {
			return admission.DirectAsk{}, errors.New(`estimate_usd must be a non-negative dollar amount such as "0.0123"`)
		}
		ask.Cost = m
	}
	return ask, nil
}

// decodeConsume reads a ConsumeRequest.
func decodeConsume(raw []byte) (ConsumeRequest, policy.Money, error) {
	var req ConsumeRequest
	if err := decodeStrict(raw, &req); err != nil {
		return req, 0, err
	}
	if req.ID == "" {
		return req, 0, errors.New("reservation_id is required")
	}
	m, err := policy.ParseMoney(req.Actual)
	if err != nil || m < 0 {
		return req, 0, errors.New(`actual_cost_usd must be a non-negative dollar amount such as "0.0123"`)
	}
	return req, m, nil
}

func (s *Server) internalRoutes(mux *http.ServeMux) {
	read := func(w http.ResponseWriter, r *http.Request) ([]byte, bool) {
		raw, err := io.ReadAll(io.LimitReader(r.Body, maxInternalRequest+1))
		if err != nil || len(raw) > maxInternalRequest {
			writeJSON(w, http.StatusBadRequest, apiError{fmt.Sprintf("the body must be one JSON object of at most %d bytes", maxInternalRequest)})
			return nil, false
		}
		return raw, true
	}
	mux.HandleFunc("POST /internal/reserve", func(w http.ResponseWriter, r *http.Request) {
		raw, ok := read(w, r)
		if !ok {
			return
		}
		ask, err := decodeReserve(raw)
		if err != nil {
			writeJSON(w, http.StatusBadRequest, apiError{`the body must be {"client": "acme", "pool": "d1-rows", "units": 100, "estimate_usd": "0.01"}: ` + err.Error()})
			return
		}
		if s.cfg.Client != "" && ask.Client != s.cfg.Client {
			writeJSON(w, http.StatusForbidden, apiError{fmt.Sprintf("this sidecar is pinned to client %q: it reserves for no other", s.cfg.Client)})
			return
		}
		res, err := s.svc.ReserveDirect(r.Context(), ask)
		switch {
		case errors.Is(err, admission.ErrUnknownClient):
			writeJSON(w, http.StatusForbidden, apiError{err.Error()})
		case errors.Is(err, admission.ErrBadAsk):
			writeJSON(w, http.StatusBadRequest, apiError{err.Error()})
		case err != nil:
			s.log.Error("direct reservation failed", slog.Any("error", err))
			writeJSON(w, http.StatusServiceUnavailable, apiError{err.Error()})
		case !res.Allowed:
			if res.RetryAfter > 0 {
				w.Header().Set("Retry-After", strconv.FormatInt(int64(res.RetryAfter+0.999), 10))
			}
			writeJSON(w, http.StatusTooManyRequests, res)
		default:
			writeJSON(w, http.StatusOK, res)
		}
	})
	mux.HandleFunc("POST /internal/release", func(w http.ResponseWriter, r *http.Request) {
		raw, ok := read(w, r)
		if !ok {
			return
		}
		var req ReleaseRequest
		if err := decodeStrict(raw, &req); err != nil || req.ID == "" {
			msg := "reservation_id is required"
			if err != nil {
				msg = err.Error()
			}
			writeJSON(w, http.StatusBadRequest, apiError{`the body must be {"reservation_id": "..."}: ` + msg})
			return
		}
		if !s.mayEnd(w, req.ID) {
			return
		}
		r.SetPathValue("id", req.ID)
		s.endReservation(w, r, s.svc.Release)
	})
	mux.HandleFunc("POST /internal/consume", func(w http.ResponseWriter, r *http.Request) {
		raw, ok := read(w, r)
		if !ok {
			return
		}
		req, actual, err := decodeConsume(raw)
		if err != nil {
			writeJSON(w, http.StatusBadRequest, apiError{`the body must be {"reservation_id": "...", "actual_cost_usd": "0.01", "used_units": {"pool": 80}}: ` + err.Error()})
			return
		}
		if !s.mayEnd(w, req.ID) {
			return
		}
		used := make([]limiter.PoolUse, 0, len(req.Used))
		for _, pool := range slices.Sorted(maps.Keys(req.Used)) {
			used = append(used, limiter.PoolUse{Pool: pool, Units: req.Used[pool]})
		}
		r.SetPathValue("id", req.ID)
		s.endReservation(w, r, func(ctx context.Context, id string) (limiter.Settlement, error) {
			return s.svc.Consume(ctx, id, actual, used)
		})
	})
}

// mayRead refuses, on a sidecar pinned to one client, to show another
// client's data (its usage, history, cost records, savings, buckets): the
// pod's own client is all such a sidecar speaks for.
func (s *Server) mayRead(w http.ResponseWriter, client string) bool {
	if s.cfg.Client == "" || client == s.cfg.Client {
		return true
	}
	writeJSON(w, http.StatusForbidden, apiError{fmt.Sprintf("this sidecar is pinned to client %q and shows no other client's data", s.cfg.Client)})
	return false
}

// mayEnd refuses, on a sidecar pinned to one client, to end a reservation
// it cannot tell is that client's.
func (s *Server) mayEnd(w http.ResponseWriter, id string) bool {
	if s.cfg.Client == "" {
		return true
	}
	if c, ok := s.svc.ReservationClient(id); !ok || c != s.cfg.Client {
		writeJSON(w, http.StatusForbidden, apiError{fmt.Sprintf("this sidecar is pinned to client %q and did not make that reservation for it", s.cfg.Client)})
		return false
	}
	return true
}
