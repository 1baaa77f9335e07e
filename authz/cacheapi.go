package authz

import (
	"errors"
	"log/slog"
	"net/http"

	"github.com/tollgate/tollgate/admission"
	"github.com/tollgate/tollgate/policy"
)

// The response cache's API: forget what a client (or the parent whose
// scope its clients share) has kept, for a route or all of them, or one
// entry by the hash its answers carry in x-tollgate-cache-key.

// CacheReply reports what DELETE /api/cache/... dropped.
type CacheReply struct {
	Scope   string `json:"scope"`
	Route   string `json:"route,omitempty"`
	Hash    string `json:"hash,omitempty"`
	Dropped int    `json:"dropped"`
}

func (s *Server) cacheRoutes(mux *http.ServeMux) {
	mux.HandleFunc("DELETE /api/cache/{scope}", func(w http.ResponseWriter, r *http.Request) {
		scope, route := r.PathValue("scope"), r.URL.Query().Get("route")
		if !s.validCacheScope(w, scope) {
			return
		}
		n, err := s.svc.InvalidateCache(r.Context(), scope, route)
		if s.cacheError(w, r, err) {
			return
		}
		s.log.LogAttrs(r.Context(), slog.LevelInfo, "cache entries dropped", slog.String("scope", scope), slog.String("route", route), slog.Int("dropped", n))
		writeJSON(w, http.StatusOK, CacheReply{Scope: scope, Route: route, Dropped: n})
	})
	mux.HandleFunc("DELETE /api/cache/{scope}/{route}/{hash}", func(w http.ResponseWriter, r *http.Request) {
		scope, route, hash := r.PathValue("scope"), r.PathValue("route"), r.PathValue("hash")
		if !s.validCacheScope(w, scope) {
			return
		}
		if !isHexHash(hash) {
			writeJSON(w, http.StatusBadRequest, apiError{"the hash is the 64 hex digits of an answer's x-tollgate-cache-key"})
			return
		}
		ok, err := s.svc.DeleteCacheEntry(r.Context(), scope, route, hash)
		if s.cacheError(w, r, err) {
			return
		}
		if !ok {
			writeJSON(w, http.StatusNotFound, apiError{"no such entry in the response cache"})
			return
		}
		writeJSON(w, http.StatusOK, CacheReply{Scope: scope, Route: route, Hash: hash, Dropped: 1})
	})
}

func (s *Server) validCacheScope(w http.ResponseWriter, scope string) bool {
	if err := policy.ValidClientID(scope); err != nil || scope == "" {
		writeJSON(w, http.StatusBadRequest, apiError{"the scope is a client id (or the parent whose scope its clients share)"})
		return false
	}
	return true
}

// cacheError answers a failed cache call; it reports whether it did.
func (s *Server) cacheError(w http.ResponseWriter, r *http.Request, err error) bool {
	switch {
	case err == nil:
		return false
	case errors.Is(err, admission.ErrNoCache):
		writeJSON(w, http.StatusNotFound, apiError{err.Error() + " (serve --cache-bytes 0)"})
	default:
		s.log.LogAttrs(r.Context(), slog.LevelError, "cache invalidation failed", slog.Any("error", err))
		writeJSON(w, http.StatusServiceUnavailable, apiError{err.Error()})
	}
	return true
}

func isHexHash(h string) bool {
	if len(h) != 64 {
		return false
	}
	for i := 0; i < len(h); i++ {
		if c := h[i]; (c < '0' || c > '9') && (c < 'a' || c > 'f') {
			return false
		}
	}
	return true
}
