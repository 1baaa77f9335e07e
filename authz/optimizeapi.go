package authz

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"strings"

	"github.com/tollgate/tollgate/admission"
	"github.com/tollgate/tollgate/policy"
)

// The optimize API: what the optimizer would do to a call, what it saved
// a client this month, and what more it could save.

// AnalyzeRequest is the body of POST /api/optimize/analyze: a call as a
// worker would make it. Body is the call's JSON body as a JSON value, or a
// JSON string holding a body that is not JSON (a form). Class, when given,
// is sent in the policy's priority header (x-tollgate-priority).
type AnalyzeRequest struct {
	Client  string            `json:"client"`
	URL     string            `json:"url"`
	Class   string            `json:"class,omitempty"`
	Headers map[string]string `json:"headers,omitempty"`
	Body    json.RawMessage   `json:"body,omitempty"`
}

// maxAnalyzeRequest bounds what /api/optimize/analyze reads: a body as
// large as /api/estimate takes, and room for the rest.
const maxAnalyzeRequest = maxEstimateBody + 64<<10

func (s *Server) optimizeRoutes(mux *http.ServeMux) {
	mux.HandleFunc("POST /api/optimize/analyze", s.analyze)
	mux.HandleFunc("GET /api/optimize/stats/{client}", func(w http.ResponseWriter, r *http.Request) {
		if !s.mayRead(w, r.PathValue("client")) {
			return
		}
		rep, err := s.svc.OptimizeStats(r.Context(), r.PathValue("client"))
		s.clientReport(w, "optimize stats", rep, err)
	})
	mux.HandleFunc("GET /api/optimize/recommendations/{client}", func(w http.ResponseWriter, r *http.Request) {
		if !s.mayRead(w, r.PathValue("client")) {
			return
		}
		rep, err := s.svc.Recommendations(r.Context(), r.PathValue("client"))
		s.clientReport(w, "optimize recommendations", rep, err)
	})
}

// clientReport answers a per-client report as /api/usage does: 404 for a
// client the policy does not let in, 503 when the store failed.
func (s *Server) clientReport(w http.ResponseWriter, what string, rep any, err error) {
	switch {
	case errors.Is(err, admission.ErrUnknownClient):
		writeJSON(w, http.StatusNotFound, apiError{err.Error()})
	case err != nil:
		s.log.Error(what+" failed", slog.Any("error", err))
		writeJSON(w, http.StatusServiceUnavailable, apiError{err.Error()})
	default:
		writeJSON(w, http.StatusOK, rep)
	}
}

const analyzeUsage = `the body must be {"client": "acme", "url": "https://api.openai.com/v1/chat/completions", "class": "batch", "headers": {...}, "body": {...}}`

func (s *Server) analyze(w http.ResponseWriter, r *http.Request) {
	raw, err := io.ReadAll(io.LimitReader(r.Body, maxAnalyzeRequest+1))
	if err != nil {
		writeJSON(w, http.StatusBadRequest, apiError{"reading the body: " + err.Error()})
		return
	}
	if len(raw) > maxAnalyzeRequest {
		writeJSON(w, http.StatusRequestEntityTooLarge, apiError{fmt.Sprintf("the request is over %d bytes", maxAnalyzeRequest)})
		return
	}
	req, headers, body, msg := decodeAnalyze(raw, s.svc.Policy())
	if msg != "" {
		writeJSON(w, http.StatusBadRequest, apiError{msg})
		return
	}
	rep, err := s.svc.Analyze(r.Context(), req.Client, req.URL, headers, body)
	switch {
	case errors.Is(err, admission.ErrUnknownClient), errors.Is(err, admission.ErrNoRoute):
		writeJSON(w, http.StatusNotFound, apiError{err.Error()})
	case err != nil:
		writeJSON(w, http.StatusBadRequest, apiError{err.Error()})
	default:
		writeJSON(w, http.StatusOK, rep)
	}
}

// decodeAnalyze reads an AnalyzeRequest strictly, and returns the call's
// headers (lower-case names) and body; msg says what is wrong with it.
func decodeAnalyze(raw []byte, set *policy.Set) (req AnalyzeRequest, headers map[string]string, body []byte, msg string) {
	dec := json.NewDecoder(bytes.NewReader(raw))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&req); err != nil {
		return req, nil, nil, analyzeUsage + ": " + err.Error()
	}
	if dec.More() {
		return req, nil, nil, analyzeUsage + ": one JSON object, nothing after it"
	}
	switch {
	case req.Client == "":
		return req, nil, nil, "client is required: the id the call would carry in x-tollgate-client"
	case req.URL == "":
		return req, nil, nil, "url is required: the upstream URL, such as https://api.openai.com/v1/chat/completions"
	}
	if err := policy.ValidClientID(req.Client); err != nil {
		return req, nil, nil, "client: " + err.Error()
	}
	headers = make(map[string]string, len(req.Headers)+2)
	for k, v := range req.Headers {
		headers[strings.ToLower(k)] = v
	}
	if req.Class != "" {
		if _, ok := policy.ParseClass(req.Class); !ok {
			return req, nil, nil, fmt.Sprintf("class %q: want immediate, fast, normal, batch or deferred", req.Class)
		}
		headers[strings.ToLower(set.Queue.PriorityHeader)] = req.Class
	}
	trimmed := bytes.TrimSpace(req.Body)
	switch {
	case len(trimmed) == 0 || bytes.Equal(trimmed, []byte("null")):
	case trimmed[0] == '"': // a body that is not JSON, as a string
		var text string
		if err := json.Unmarshal(trimmed, &text); err != nil {
			return req, nil, nil, "body: " + err.Error()
		}
		body = []byte(text)
	default:
		body = trimmed
		if _, ok := headers["content-type"]; !ok {
			headers["content-type"] = "application/json"
		}
	}
	return req, headers, body, ""
}
