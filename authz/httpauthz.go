package authz

import (
	"errors"
	"io"
	"net/http"
	"strconv"
	"time"

	"go.opentelemetry.io/otel/trace"

	"github.com/tollgate/tollgate/admission"
	"github.com/tollgate/tollgate/internal/tracing"
)

// maxHTTPCheckBody bounds the body read from one HTTP check. Envoy sends at
// most with_request_body.max_request_bytes (256 KiB in the shipped
// config); a larger body is read this far and judged as a partial one.
const maxHTTPCheckBody = 4 << 20

// httpAuthz answers Envoy's ext_authz over HTTP (the http_service form):
// the same decisions as authServer, in Envoy's HTTP conventions
// (envoy_httpauthz.go).
type httpAuthz struct {
	svc     *admission.Service
	clients clientSource
	m       *metrics
	tr      *tracing.Tracer // nil: off
}

var _ http.Handler = (*httpAuthz)(nil)

// ServeHTTP decides one check. Every outcome, a malformed check included,
// is an answer for Envoy; a check whose caller has gone is answered into
// the void (the decision released what it held).
func (s *httpAuthz) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	start := time.Now()
	body, err := io.ReadAll(io.LimitReader(r.Body, maxHTTPCheckBody))
	req := fromHTTPCheck(r.Method, r.RequestURI, r.Host, r.Header, body, s.clients)
	if err != nil && req.Invalid == "" && !errors.Is(err, r.Context().Err()) {
		req.Invalid = "Envoy's check body could not be read: " + err.Error()
	}
	// The parent: the trace context Envoy's HTTP client sends with the
	// check (or the worker's own, among the headers it forwards).
	ctx, span := s.tr.Start(s.tr.FromHTTP(r.Context(), r.Header), spanCheck, trace.SpanKindServer)
	v := s.svc.Decide(ctx, req)
	endCheck(span, "ext_authz_http", &v)
	a := Render(v)
	resp := toHTTPCheckResponse(&a)
	h := w.Header()
	for _, hd := range resp.Headers {
		h[http.CanonicalHeaderKey(hd.Name)] = []string{hd.Value}
	}
	if len(resp.Body) > 0 {
		h.Set("Content-Length", strconv.Itoa(len(resp.Body)))
	}
	w.WriteHeader(resp.Status)
	_, _ = w.Write(resp.Body) // a write error means Envoy has gone
	s.m.checkLatency.WithLabelValues("ext_authz_http").Observe(time.Since(start).Seconds())
}

// newHTTPAuthzServer serves h on HTTP/1.1 and cleartext HTTP/2 (prior
// knowledge, as Envoy speaks it with http2_protocol_options): one
// connection carries many checks, a held one among them.
func newHTTPAuthzServer(h http.Handler) *http.Server {
	var p http.Protocols
	p.SetHTTP1(true)
	p.SetUnencryptedHTTP2(true)
	return &http.Server{Handler: h, ReadHeaderTimeout: 5 * time.Second, Protocols: &p,
		HTTP2: &http.HTTP2Config{MaxConcurrentStreams: 1000}}
}
