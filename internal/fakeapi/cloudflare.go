package fakeapi

import (
	"encoding/json"
	"net/http"
)

// cloudflareError is Cloudflare's v4 envelope for a failed call. The codes
// the fake uses are its own; Tollgate shapes a Cloudflare denial as a
// generic provider and reads none of them.
func cloudflareError(w http.ResponseWriter, status, code int, msg string) {
	writeJSON(w, status, map[string]any{"success": false, "result": nil, "messages": []any{},
		"errors": []any{map[string]any{"code": code, "message": msg}}})
}

// cloudflare429 answers a call the scenario rate-limits, as the v4 API
// does: 429, Retry-After, the error envelope.
func (s *Server) cloudflare429(w http.ResponseWriter, r *http.Request) bool {
	if !s.scenario(r)[Scenario429] {
		return false
	}
	w.Header().Set("retry-after", s.retryAfter())
	cloudflareError(w, http.StatusTooManyRequests, 971, "Please wait and consider throttling your request speed")
	return true
}

// d1Query answers POST /client/v4/accounts/{account}/d1/database/{db}/query
// (and /raw): one statement, no rows, in the v4 envelope.
func (s *Server) d1Query(w http.ResponseWriter, r *http.Request) {
	if s.cloudflare429(w, r) {
		return
	}
	var req struct {
		SQL string `json:"sql"`
	}
	if err := json.NewDecoder(r.Body).Decode(&req); err != nil || req.SQL == "" {
		cloudflareError(w, http.StatusBadRequest, 7400, "a JSON body with sql is required")
		return
	}
	writeJSON(w, http.StatusOK, map[string]any{"success": true, "errors": []any{}, "messages": []any{},
		"result": []any{map[string]any{"success": true, "results": []any{},
			"meta": map[string]any{"changed_db": false, "changes": 0, "duration": 0, "last_row_id": 0, "rows_read": 0, "rows_written": 0}}}})
}

// kvValue answers GET /client/v4/accounts/{account}/storage/kv/namespaces/{ns}/values/{key}
// with the value itself (not the envelope), as the API does.
func (s *Server) kvValue(w http.ResponseWriter, r *http.Request) {
	if s.cloudflare429(w, r) {
		return
	}
	w.Header().Set("content-type", "application/octet-stream")
	w.WriteHeader(http.StatusOK)
	_, _ = w.Write([]byte("fake-value:" + r.PathValue("key")))
}
