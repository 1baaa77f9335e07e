package authz

import (
	"bytes"
	"context"
	"crypto/hmac"
	"crypto/sha256"
	"crypto/subtle"
	_ "embed"
	"encoding/hex"
	"html/template"
	"log/slog"
	"net/http"
	"net/url"
	"strconv"
	"strings"
	"time"

	"github.com/tollgate/tollgate/policy"
)

// The status page: GET / on the API listener, plain server-rendered HTML
// (no script), behind the API token like the rest of that listener. A
// script sends Authorization: Bearer <token>; a person logs in once with
// the token in a form (POST /login), and the page then keeps a session
// cookie. The cookie holds no token: its value is an HMAC of a fixed label
// under the token, so it cannot be turned back into the token, it dies
// when the token changes, and it opens this page only: the JSON API, which
// changes state, never takes a cookie (no cross-site request can ride on
// it). It is HttpOnly and SameSite=Strict, and Secure when the request
// came over TLS.

//go:embed status.html
var statusHTML string

var statusTmpl = template.Must(template.New("status").Funcs(template.FuncMap{
	"money": func(m policy.Money) string { return "$" + m.String() },
	"stamp": func(t time.Time) string {
		if t.IsZero() {
			return "—"
		}
		return t.UTC().Format("2006-01-02 15:04:05Z")
	},
	"dur": func(d time.Duration) string { return d.Round(time.Second / 10).String() },
}).Parse(statusHTML))

const (
	// statusCookie names the page's session cookie.
	statusCookie = "tollgate_status"
	// statusCookieLabel is what the cookie's HMAC signs; a new label
	// would void every cookie issued.
	statusCookieLabel = "tollgate status page session v1"
	// statusSession is how long a login lasts.
	statusSession = 12 * time.Hour
	// statusReadTimeout bounds the reads of one page view (one store
	// round trip per pool batch and per client).
	statusReadTimeout = 5 * time.Second
	// statusRefresh is the page's meta refresh, in seconds.
	statusRefresh = 10
	// msgBadTokenPage is msgBadToken for a person at a browser.
	msgBadTokenPage = "missing or wrong API token: log in with it below, or send Authorization: Bearer <token>"
)

// statusRoutes serves GET / and the login and logout that set and clear
// its cookie. They check the token themselves (header or cookie); every
// other path of the API listener goes through requireToken.
func (s *Server) statusRoutes(mux *http.ServeMux) {
	mux.HandleFunc("GET /{$}", func(w http.ResponseWriter, r *http.Request) {
		if s.cfg.APIToken.empty() {
			s.renderLogin(w, http.StatusForbidden, msgNoTokenConfigured)
			return
		}
		viaHeader := s.bearerOK(r)
		viaCookie := !viaHeader && s.cookieOK(r, time.Now())
		if !viaHeader && !viaCookie {
			// A browser's first visit sends nothing: count only a
			// token that was sent and is wrong.
			if r.Header.Get("Authorization") != "" {
				s.m.apiUnauthorized.Inc()
			}
			w.Header().Set("WWW-Authenticate", `Bearer realm="tollgate"`)
			s.renderLogin(w, http.StatusUnauthorized, msgBadTokenPage)
			return
		}
		// A store that hangs leaves a page saying so, not a hung page.
		ctx, cancel := context.WithTimeout(r.Context(), statusReadTimeout)
		defer cancel()
		// The alerts and forecasts as of now: a store that fails leaves
		// those of the refresh before (the sections below say why).
		_ = s.svc.Refresh(ctx)
		snap := s.svc.Status(ctx)
		s.renderPage(w, "status", http.StatusOK, map[string]any{"Snap": snap, "Refresh": statusRefresh, "Cookie": viaCookie})
	})
	mux.HandleFunc("POST /login", func(w http.ResponseWriter, r *http.Request) {
		if s.cfg.APIToken.empty() {
			s.renderLogin(w, http.StatusForbidden, msgNoTokenConfigured)
			return
		}
		// The token is read from the body only (PostForm): one put in
		// the URL's query, where logs would keep it, is not taken.
		if !sameOrigin(r) {
			http.Error(w, "a login from another site is refused", http.StatusForbidden)
			return
		}
		r.Body = http.MaxBytesReader(w, r.Body, 4096)
		if err := r.ParseForm(); err != nil || !s.tokenOK(r.PostForm.Get("token")) {
			s.m.apiUnauthorized.Inc()
			s.renderLogin(w, http.StatusUnauthorized, msgBadTokenPage)
			return
		}
		http.SetCookie(w, &http.Cookie{Name: statusCookie, Value: s.cookieValue(time.Now()), Path: "/", MaxAge: int(statusSession / time.Second),
			HttpOnly: true, SameSite: http.SameSiteStrictMode, Secure: r.TLS != nil})
		http.Redirect(w, r, "/", http.StatusSeeOther)
	})
	mux.HandleFunc("POST /logout", func(w http.ResponseWriter, r *http.Request) {
		if !sameOrigin(r) { // another site may not log the operator out
			http.Error(w, "a logout from another site is refused", http.StatusForbidden)
			return
		}
		http.SetCookie(w, &http.Cookie{Name: statusCookie, Value: "", Path: "/", MaxAge: -1,
			HttpOnly: true, SameSite: http.SameSiteStrictMode, Secure: r.TLS != nil})
		http.Redirect(w, r, "/", http.StatusSeeOther)
	})
}

// cookieValue is the session cookie's value for a login at issued: the
// issue time (Unix seconds) and HMAC-SHA256 of it and a fixed label under
// the API token, in hex ("" with no token: nothing matches it). A cookie
// is good for statusSession from its issue, whatever the browser keeps,
// and never after the token changes.
func (s *Server) cookieValue(issued time.Time) string {
	if s.cfg.APIToken.empty() {
		return ""
	}
	at := strconv.FormatInt(issued.Unix(), 10)
	return at + "." + s.cookieMAC(at)
}

func (s *Server) cookieMAC(at string) string {
	mac := hmac.New(sha256.New, []byte(s.cfg.APIToken))
	mac.Write([]byte(statusCookieLabel + "|" + at))
	return hex.EncodeToString(mac.Sum(nil))
}

// cookieOK reports whether r carries a session cookie issued under the
// token less than statusSession before now (its MAC compared in constant
// time).
func (s *Server) cookieOK(r *http.Request, now time.Time) bool {
	c, err := r.Cookie(statusCookie)
	if err != nil || s.cfg.APIToken.empty() {
		return false
	}
	at, mac, ok := strings.Cut(c.Value, ".")
	issued, perr := strconv.ParseInt(at, 10, 64)
	if !ok || perr != nil || !hmac.Equal([]byte(mac), []byte(s.cookieMAC(at))) {
		return false
	}
	age := now.Sub(time.Unix(issued, 0))
	return age >= -time.Minute && age < statusSession
}

// sameOrigin reports whether a form post comes from this page: a browser
// says so in Sec-Fetch-Site, else in Origin (a client that sends neither,
// curl, is no cross-site form).
func sameOrigin(r *http.Request) bool {
	if site := r.Header.Get("Sec-Fetch-Site"); site != "" {
		return site == "same-origin" || site == "none"
	}
	if o := r.Header.Get("Origin"); o != "" {
		u, err := url.Parse(o)
		return err == nil && u.Host == r.Host
	}
	return true
}

// bearerOK reports whether r carries Authorization: Bearer <APIToken>.
func (s *Server) bearerOK(r *http.Request) bool {
	scheme, got, ok := strings.Cut(r.Header.Get("Authorization"), " ")
	return ok && strings.EqualFold(scheme, "Bearer") && s.tokenOK(strings.TrimSpace(got))
}

// tokenOK compares got with the API token by their digests, in constant
// time (the token's length leaks nothing either). False with no token.
func (s *Server) tokenOK(got string) bool {
	if s.cfg.APIToken.empty() {
		return false
	}
	want := sha256.Sum256([]byte(s.cfg.APIToken))
	sum := sha256.Sum256([]byte(got))
	return subtle.ConstantTimeCompare(sum[:], want[:]) == 1
}

func (s *Server) renderLogin(w http.ResponseWriter, status int, msg string) {
	s.renderPage(w, "login", status, map[string]any{"Message": msg})
}

// renderPage renders into a buffer first, so a template error is a clean
// 500 and never half a page.
func (s *Server) renderPage(w http.ResponseWriter, name string, status int, data any) {
	var buf bytes.Buffer
	if err := statusTmpl.ExecuteTemplate(&buf, name, data); err != nil {
		s.log.Error("rendering the status page failed", slog.String("page", name), slog.Any("error", err))
		http.Error(w, "rendering the status page failed", http.StatusInternalServerError)
		return
	}
	h := w.Header()
	h.Set("Content-Type", "text/html; charset=utf-8")
	h.Set("Cache-Control", "no-store")
	h.Set("X-Content-Type-Options", "nosniff")
	h.Set("X-Frame-Options", "DENY")
	h.Set("Referrer-Policy", "no-referrer")
	// No script at all; styles are inline; forms post only here.
	h.Set("Content-Security-Policy", "default-src 'none'; style-src 'unsafe-inline'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'")
	w.WriteHeader(status)
	_, _ = w.Write(buf.Bytes())
}
