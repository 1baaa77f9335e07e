package authz

import (
	"errors"
	"log/slog"
	"net/http"
)

// Secret is a credential held in memory: it prints and logs as
// "[redacted]", so a Config dumped by mistake never shows it.
type Secret string

func (Secret) String() string               { return "[redacted]" }
func (Secret) GoString() string             { return "[redacted]" }
func (Secret) LogValue() slog.Value         { return slog.StringValue("[redacted]") }
func (Secret) MarshalText() ([]byte, error) { return []byte("[redacted]"), nil }

func (t Secret) empty() bool { return t == "" }

// validate refuses a token too short to resist guessing, or one that cannot
// travel in an Authorization header.
func (t Secret) validate() error {
	if t == "" {
		return nil
	}
	if len(t) < 16 {
		return errors.New("authz: the API token must be at least 16 characters (e.g. openssl rand -hex 32)")
	}
	for _, c := range []byte(t) {
		if c <= ' ' || c >= 0x7f {
			return errors.New("authz: the API token may hold only printable ASCII without spaces")
		}
	}
	return nil
}

// Why the API refused: the body's error, for people and scripts.
const (
	msgNoTokenConfigured = "the API is disabled: no API token is configured; start serve with --api-token-file FILE or TOLLGATE_API_TOKEN, then send Authorization: Bearer <token>"
	msgBadToken          = "missing or wrong API token: send Authorization: Bearer <token>"
)

// requireToken lets a request through only with Authorization: Bearer
// <APIToken>. It compares digests in constant time (the length of the token
// leaks nothing either), and never logs what was sent.
func (s *Server) requireToken(next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if s.cfg.APIToken.empty() {
			writeJSON(w, http.StatusForbidden, apiError{msgNoTokenConfigured})
			return
		}
		if !s.bearerOK(r) {
			s.m.apiUnauthorized.Inc()
			w.Header().Set("WWW-Authenticate", `Bearer realm="tollgate"`)
			writeJSON(w, http.StatusUnauthorized, apiError{msgBadToken})
			return
		}
		next.ServeHTTP(w, r)
	})
}
