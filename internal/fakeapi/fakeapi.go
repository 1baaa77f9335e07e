// Package fakeapi is a look-alike of the paid APIs Tollgate meters (OpenAI,
// Anthropic, Twilio, SendGrid, Cloudflare D1 and KV), for tests and
// demos: the same paths, bodies, usage, server-sent events, rate-limit
// headers, 429s and compression as the providers, with usage derived from
// the request so a test knows the exact token counts in advance. It counts the calls that reach it
// (GET /fakeapi/calls).
//
// Behaviour is chosen per request by the ScenarioHeader (a comma-separated
// list of Scenario names), or for every request by Config.Scenarios.
package fakeapi

import (
	"compress/gzip"
	"compress/zlib"
	"encoding/json"
	"io"
	"net/http"
	"strings"
	"sync"
	"time"
)

// ScenarioHeader is the request header that picks a call's behaviour.
const ScenarioHeader = "x-fakeapi-scenario"

// Scenarios, comma-separated in ScenarioHeader.
const (
	// Scenario429 answers with the provider's own 429 and Retry-After.
	Scenario429 = "429"
	// ScenarioGzip and ScenarioDeflate compress the answer when the
	// request's accept-encoding allows it, as the providers do.
	ScenarioGzip    = "gzip"
	ScenarioDeflate = "deflate"
	// ScenarioSlow waits SlowDelay between streamed events.
	ScenarioSlow = "slow"
	// ScenarioCached reports half the prompt as cached input.
	ScenarioCached = "cached"
	// ScenarioSplit sends each streamed event in two writes, flushed
	// apart, as a network may cut it: a reader must join the halves.
	ScenarioSplit = "split"
)

// Reply is the completion text every model writes, one token per piece;
// a call gets its first min(max_tokens, len(Reply)) pieces.
var Reply = []string{"Hello", " from", " the", " fake", " upstream", "."}

// Config sets what every request gets.
type Config struct {
	// Scenarios apply to every request, before the request's own.
	Scenarios []string
	// RetryAfter is the Retry-After of a 429.
	RetryAfter time.Duration
	// SlowDelay is the pause between streamed events under ScenarioSlow.
	SlowDelay time.Duration
}

// DefaultConfig is what `fakeapi` starts with.
func DefaultConfig() Config {
	return Config{RetryAfter: time.Second, SlowDelay: 50 * time.Millisecond}
}

// Server is the fake provider; safe for concurrent use.
type Server struct {
	cfg Config
	mux *http.ServeMux

	mu     sync.Mutex
	calls  map[string]int
	total  int
	recent []Seen
}

// keepRecent is how many calls Calls.Recent lists.
const keepRecent = 64

// Seen is one call as it reached the fake: what a test asks of the proxy
// in front of it (the host it named, the headers it kept or dropped).
type Seen struct {
	Method  string            `json:"method"`
	Path    string            `json:"path"`
	Host    string            `json:"host"`
	Headers map[string]string `json:"headers"` // lower-case names, values joined by ", "
	At      time.Time         `json:"at"`      // when it arrived
}

// Calls is the answer of GET /fakeapi/calls: the provider calls received
// (429s included), in all and by "METHOD /path".
type Calls struct {
	Total  int            `json:"total"`
	ByPath map[string]int `json:"by_path"`
	// Recent are the last calls, oldest first.
	Recent []Seen `json:"recent"`
}

// New builds a Server.
func New(cfg Config) *Server {
	s := &Server{cfg: cfg, mux: http.NewServeMux(), calls: map[string]int{}}
	s.mux.HandleFunc("POST /v1/chat/completions", s.openAIChat)
	s.mux.HandleFunc("POST /v1/embeddings", s.openAIEmbeddings)
	s.mux.HandleFunc("POST /v1/messages", s.anthropicMessages)
	s.mux.HandleFunc("POST /2010-04-01/Accounts/{sid}/Messages.json", s.twilioMessage)
	s.mux.HandleFunc("POST /v3/mail/send", s.sendgridMail)
	s.mux.HandleFunc("POST /client/v4/accounts/{account}/d1/database/{db}/query", s.d1Query)
	s.mux.HandleFunc("POST /client/v4/accounts/{account}/d1/database/{db}/raw", s.d1Query)
	s.mux.HandleFunc("GET /client/v4/accounts/{account}/storage/kv/namespaces/{ns}/values/{key}", s.kvValue)
	s.mux.HandleFunc("GET /fakeapi/calls", func(w http.ResponseWriter, _ *http.Request) {
		writeJSON(w, http.StatusOK, s.Calls())
	})
	s.mux.HandleFunc("DELETE /fakeapi/calls", func(w http.ResponseWriter, _ *http.Request) {
		s.mu.Lock()
		s.calls, s.total, s.recent = map[string]int{}, 0, nil
		s.mu.Unlock()
		w.WriteHeader(http.StatusNoContent)
	})
	return s
}

// Calls returns the calls counted so far.
func (s *Server) Calls() Calls {
	s.mu.Lock()
	defer s.mu.Unlock()
	c := Calls{Total: s.total, ByPath: make(map[string]int, len(s.calls)), Recent: append([]Seen(nil), s.recent...)}
	for k, v := range s.calls {
		c.ByPath[k] = v
	}
	return c
}

// ServeHTTP counts provider calls and serves them.
func (s *Server) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	if !strings.HasPrefix(r.URL.Path, "/fakeapi/") {
		seen := Seen{Method: r.Method, Path: r.URL.Path, Host: r.Host, Headers: make(map[string]string, len(r.Header)), At: time.Now()}
		for k, vs := range r.Header {
			seen.Headers[strings.ToLower(k)] = strings.Join(vs, ", ")
		}
		s.mu.Lock()
		s.calls[r.Method+" "+r.URL.Path]++
		s.total++
		if s.recent = append(s.recent, seen); len(s.recent) > keepRecent {
			s.recent = s.recent[1:]
		}
		s.mu.Unlock()
	}
	s.mux.ServeHTTP(w, r)
}

// scenario is one request's behaviour.
type scenario map[string]bool

func (s *Server) scenario(r *http.Request) scenario {
	sc := scenario{}
	for _, n := range s.cfg.Scenarios {
		sc[strings.TrimSpace(n)] = true
	}
	for _, v := range r.Header.Values(ScenarioHeader) {
		for _, n := range strings.Split(v, ",") {
			sc[strings.TrimSpace(n)] = true
		}
	}
	return sc
}

// encoder returns the writer of the answer's body, compressed as the
// scenario and the request's accept-encoding allow, with its flush and
// close; it sets content-encoding.
func encoder(w http.ResponseWriter, r *http.Request, sc scenario) (io.Writer, func(), func()) {
	fl, _ := w.(http.Flusher)
	flush := func() {
		if fl != nil {
			fl.Flush()
		}
	}
	accept := strings.ToLower(r.Header.Get("accept-encoding"))
	switch {
	case sc[ScenarioGzip] && strings.Contains(accept, "gzip"):
		w.Header().Set("content-encoding", "gzip")
		w.Header().Del("content-length")
		zw := gzip.NewWriter(w)
		return zw, func() { _ = zw.Flush(); flush() }, func() { _ = zw.Close(); flush() }
	case sc[ScenarioDeflate] && strings.Contains(accept, "deflate"):
		w.Header().Set("content-encoding", "deflate")
		w.Header().Del("content-length")
		zw := zlib.NewWriter(w)
		return zw, func() { _ = zw.Flush(); flush() }, func() { _ = zw.Close(); flush() }
	}
	return w, flush, flush
}

// writeBody writes a whole answer, compressed if the scenario says so.
func writeBody(w http.ResponseWriter, r *http.Request, sc scenario, status int, contentType string, body []byte) {
	w.Header().Set("content-type", contentType)
	out, _, done := encoder(w, r, sc)
	w.WriteHeader(status)
	_, _ = out.Write(body)
	done()
}

func writeJSON(w http.ResponseWriter, status int, v any) {
	b, _ := json.Marshal(v)
	w.Header().Set("content-type", "application/json")
	w.WriteHeader(status)
	_, _ = w.Write(b)
}

// replyTokens is the number of completion tokens of a call with this
// max_tokens (0: unset).
func replyTokens(maxTokens int64) int {
	if maxTokens > 0 && maxTokens < int64(len(Reply)) {
		return int(maxTokens)
	}
	return len(Reply)
}

// retryAfter is the 429's Retry-After in whole seconds (at least 1).
func (s *Server) retryAfter() string {
	secs := int(s.cfg.RetryAfter / time.Second)
	if secs < 1 {
		secs = 1
	}
	return itoa(secs)
}
