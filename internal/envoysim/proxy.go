package envoysim

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"strconv"
	"strings"

	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	authv3 "github.com/envoyproxy/go-control-plane/envoy/service/auth/v3"
	extprocv3 "github.com/envoyproxy/go-control-plane/envoy/service/ext_proc/v3"
	"google.golang.org/genproto/googleapis/rpc/code"
)

// Config wires one listener's proxy.
type Config struct {
	Listener *Listener
	// Authz and Proc are the gRPC clients of the listener's ext_authz and
	// ext_proc filters (the config's envoy_grpc cluster, dialled by the
	// caller).
	Authz authv3.AuthorizationClient
	Proc  extprocv3.ExternalProcessorClient
	// Upstream is the host:port reached over plain HTTP in place of the
	// route's cluster.
	Upstream string
	// Logger, nil for none.
	Logger *slog.Logger
}

// Validate reports a Config that cannot work.
func (c Config) Validate() error {
	var errs []error
	if c.Listener == nil {
		errs = append(errs, errors.New("envoysim: no listener"))
	} else {
		if c.Listener.Authz != nil && c.Authz == nil {
			errs = append(errs, fmt.Errorf("envoysim: listener %s has ext_authz but no client", c.Listener.Name))
		}
		if c.Listener.Proc != nil && c.Proc == nil {
			errs = append(errs, fmt.Errorf("envoysim: listener %s has ext_proc but no client", c.Listener.Name))
		}
	}
	if c.Upstream == "" {
		errs = append(errs, errors.New("envoysim: no upstream"))
	}
	return errors.Join(errs...)
}

// Proxy is one listener: an http.Handler safe for concurrent use.
type Proxy struct {
	cfg       Config
	log       *slog.Logger
	transport *http.Transport
}

// New builds a Proxy.
func New(cfg Config) (*Proxy, error) {
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	log := cfg.Logger
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	// Envoy passes accept-encoding through and never decodes: neither
	// does the stand-in.
	return &Proxy{cfg: cfg, log: log.With(slog.String("listener", cfg.Listener.Name)),
		transport: &http.Transport{DisableCompression: true, MaxIdleConnsPerHost: 16}}, nil
}

// Close drops idle upstream connections.
func (p *Proxy) Close() { p.transport.CloseIdleConnections() }

// hopByHop are the headers a proxy never forwards.
var hopByHop = map[string]bool{"connection": true, "keep-alive": true, "proxy-connection": true, "te": true,
	"trailer": true, "transfer-encoding": true, "upgrade": true}

// headers is a request's or response's header list, lower-case names,
// pseudo-headers included, in order.
type headers struct{ kv [][2]string }

func (h *headers) get(k string) string {
	for _, e := range h.kv {
		if e[0] == k {
			return e[1]
		}
	}
	return ""
}

func (h *headers) has(k string) bool {
	for _, e := range h.kv {
		if e[0] == k {
			return true
		}
	}
	return false
}

func (h *headers) del(k string) {
	k = strings.ToLower(k)
	out := h.kv[:0]
	for _, e := range h.kv {
		if e[0] != k {
			out = append(out, e)
		}
	}
	h.kv = out
}

func (h *headers) set(k, v string) { h.del(k); h.kv = append(h.kv, [2]string{strings.ToLower(k), v}) }
func (h *headers) add(k, v string) { h.kv = append(h.kv, [2]string{strings.ToLower(k), v}) }

// apply is one HeaderValueOption as Envoy applies it.
func (h *headers) apply(o *corev3.HeaderValueOption) {
	k, v := strings.ToLower(o.GetHeader().GetKey()), o.GetHeader().GetValue()
	if v == "" {
		v = string(o.GetHeader().GetRawValue())
	}
	action := o.GetAppendAction()
	if o.GetAppend() != nil { // the deprecated field wins when set
		action = corev3.HeaderValueOption_OVERWRITE_IF_EXISTS_OR_ADD
		if o.GetAppend().GetValue() {
			action = corev3.HeaderValueOption_APPEND_IF_EXISTS_OR_ADD
		}
	}
	found := h.has(k)
	switch {
	case action == corev3.HeaderValueOption_APPEND_IF_EXISTS_OR_ADD:
		h.add(k, v)
	case action == corev3.HeaderValueOption_ADD_IF_ABSENT && found,
		action == corev3.HeaderValueOption_OVERWRITE_IF_EXISTS && !found:
	default:
		h.set(k, v)
	}
}

// mutate applies an ext_proc HeaderMutation; pseudo-headers and host
// cannot be removed (Envoy ignores those).
func (h *headers) mutate(m *extprocv3.HeaderMutation) {
	for _, o := range m.GetSetHeaders() {
		h.apply(o)
	}
	for _, k := range m.GetRemoveHeaders() {
		if !strings.HasPrefix(k, ":") && !strings.EqualFold(k, "host") {
			h.del(k)
		}
	}
}

// protoMap is the map form ext_authz sends: repeated names joined by ",".
func (h *headers) protoMap(skip func(string) bool) map[string]string {
	m := make(map[string]string, len(h.kv))
	for _, e := range h.kv {
		if skip(e[0]) {
			continue
		}
		if prev, ok := m[e[0]]; ok {
			m[e[0]] = prev + "," + e[1]
		} else {
			m[e[0]] = e[1]
		}
	}
	return m
}

func (h *headers) headerMap(skip func(string) bool) *corev3.HeaderMap {
	hm := &corev3.HeaderMap{}
	for _, e := range h.kv {
		if !skip(e[0]) {
			hm.Headers = append(hm.Headers, &corev3.HeaderValue{Key: e[0], RawValue: []byte(e[1])})
		}
	}
	return hm
}

// fromHTTP lists an http.Header, hop-by-hop headers left out.
func fromHTTP(hd http.Header) *headers {
	h := &headers{}
	for k, vs := range hd {
		lk := strings.ToLower(k)
		if hopByHop[lk] {
			continue
		}
		for _, v := range vs {
			h.add(lk, v)
		}
	}
	return h
}

// toHTTP writes the regular headers into dst.
func (h *headers) toHTTP(dst http.Header) {
	for _, e := range h.kv {
		if !strings.HasPrefix(e[0], ":") && !hopByHop[e[0]] {
			dst.Add(e[0], e[1])
		}
	}
}

func requestID() string {
	var b [16]byte
	_, _ = rand.Read(b[:])
	return hex.EncodeToString(b[:])
}

// ServeHTTP runs the filter chain on one request.
func (p *Proxy) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	lis := p.cfg.Listener
	body, err := io.ReadAll(io.LimitReader(r.Body, 64<<20))
	if err != nil {
		http.Error(w, "envoysim: reading the request: "+err.Error(), http.StatusBadRequest)
		return
	}
	req := fromHTTP(r.Header)
	req.del("host")
	// The connection manager's pseudo-headers and request id.
	req.kv = append([][2]string{{":authority", r.Host}, {":path", r.URL.RequestURI()}, {":method", r.Method}, {":scheme", "http"}}, req.kv...)
	if req.get("x-request-id") == "" {
		req.set("x-request-id", requestID())
	}
	req.set("x-forwarded-proto", "http")

	var respAdd []*corev3.HeaderValueOption
	if lis.Authz != nil {
		var done bool
		respAdd, done = p.checkAuthz(r.Context(), w, req, body)
		if done {
			return
		}
	}
	pc := p.openProc(r.Context())
	defer pc.close()
	if done := pc.requestHeaders(w, req, len(body) == 0); done {
		return
	}
	if len(body) > 0 {
		var done bool
		if body, done = pc.requestBody(w, req, body); done {
			return
		}
	}
	p.forward(r.Context(), w, pc, req, body, respAdd)
}

// checkAuthz runs ext_authz; done says the reply was written.
func (p *Proxy) checkAuthz(ctx context.Context, w http.ResponseWriter, req *headers, body []byte) ([]*corev3.HeaderValueOption, bool) {
	lis := p.cfg.Listener
	cfg := lis.Authz
	withheldAuthz := func(k string) bool { return withheld(k, cfg.GetDisallowedHeaders().GetPatterns()) }
	hdrs := req.protoMap(withheldAuthz)
	hr := &authv3.AttributeContext_HttpRequest{
		Id: req.get("x-request-id"), Method: req.get(":method"), Path: req.get(":path"), Host: req.get(":authority"),
		Scheme: "http", Protocol: "HTTP/1.1", Headers: hdrs, Size: int64(len(body)),
	}
	if wb := cfg.GetWithRequestBody(); wb != nil {
		part := body
		if max := int(wb.GetMaxRequestBytes()); len(body) > max {
			if !wb.GetAllowPartialMessage() {
				writeLocal(w, http.StatusRequestEntityTooLarge, nil, []byte("Payload Too Large"))
				return nil, true
			}
			part = body[:max]
			hdrs["x-envoy-auth-partial-body"] = "true"
		} else {
			hdrs["x-envoy-auth-partial-body"] = "false"
		}
		if wb.GetPackAsBytes() {
			hr.RawBody = part
		} else {
			hr.Body = string(part)
		}
	}
	creq := &authv3.CheckRequest{Attributes: &authv3.AttributeContext{
		Request:           &authv3.AttributeContext_Request{Http: hr},
		ContextExtensions: lis.ContextExtensions,
	}}
	cctx, cancel := context.WithTimeout(ctx, lis.authzTimeout())
	defer cancel()
	resp, err := p.cfg.Authz.Check(cctx, creq)
	if err != nil {
		p.log.Warn("ext_authz failed", slog.Any("error", err))
		if cfg.GetFailureModeAllow() {
			return nil, false
		}
		status := http.StatusForbidden
		if c := cfg.GetStatusOnError().GetCode(); c != 0 {
			status = int(c)
		}
		writeLocal(w, status, nil, nil)
		return nil, true
	}
	if code.Code(resp.GetStatus().GetCode()) != code.Code_OK {
		d := resp.GetDeniedResponse()
		status := http.StatusForbidden
		if c := d.GetStatus().GetCode(); c != 0 {
			status = int(c)
		}
		h := &headers{}
		for _, o := range d.GetHeaders() {
			h.apply(o)
		}
		writeLocal(w, status, h, []byte(d.GetBody()))
		return nil, true
	}
	ok := resp.GetOkResponse()
	for _, o := range ok.GetHeaders() {
		req.apply(o)
	}
	for _, k := range ok.GetHeadersToRemove() {
		if !strings.HasPrefix(k, ":") && !strings.EqualFold(k, "host") {
			req.del(k)
		}
	}
	return ok.GetResponseHeadersToAdd(), false
}

// writeLocal is an Envoy local reply.
func writeLocal(w http.ResponseWriter, status int, h *headers, body []byte) {
	if h != nil {
		h.toHTTP(w.Header())
	}
	w.Header().Set("content-length", strconv.Itoa(len(body)))
	if len(body) > 0 && w.Header().Get("content-type") == "" {
		w.Header().Set("content-type", "text/plain")
	}
	w.Header().Set("server", "envoy")
	w.WriteHeader(status)
	_, _ = w.Write(body)
}

// forward sends the call upstream and streams the answer back through
// ext_proc.
func (p *Proxy) forward(ctx context.Context, w http.ResponseWriter, pc *procCall, req *headers, body []byte, respAdd []*corev3.HeaderValueOption) {
	lis := p.cfg.Listener
	for _, k := range lis.RequestHeadersToRemove {
		req.del(k)
	}
	up, err := http.NewRequestWithContext(ctx, req.get(":method"), "http://"+p.cfg.Upstream+req.get(":path"), bytes.NewReader(body))
	if err != nil {
		writeLocal(w, http.StatusInternalServerError, nil, []byte(err.Error()))
		return
	}
	req.del("content-length")
	req.toHTTP(up.Header)
	up.Host = lis.HostRewrite
	if up.Host == "" {
		up.Host = req.get(":authority")
	}
	up.ContentLength = int64(len(body))
	resp, err := p.transport.RoundTrip(up)
	if err != nil {
		p.log.Warn("upstream failed", slog.Any("error", err))
		writeLocal(w, http.StatusServiceUnavailable, nil, []byte("upstream connect error or disconnect/reset before headers"))
		return
	}
	defer resp.Body.Close()
	rh := fromHTTP(resp.Header)
	rh.kv = append([][2]string{{":status", strconv.Itoa(resp.StatusCode)}}, rh.kv...)
	if ir := pc.responseHeaders(rh, resp.ContentLength == 0); ir != nil {
		writeImmediate(w, ir)
		return
	}
	for _, o := range respAdd {
		rh.apply(o)
	}
	if pc.seesResponseBody() {
		// The body may change size on its way through ext_proc.
		rh.del("content-length")
	}
	status := resp.StatusCode
	if s, err := strconv.Atoi(rh.get(":status")); err == nil {
		status = s
	}
	rh.set("server", "envoy")
	rh.toHTTP(w.Header())
	w.WriteHeader(status)
	pc.responseBody(w, resp.Body)
}

// writeImmediate is an ext_proc ImmediateResponse as the local reply.
func writeImmediate(w http.ResponseWriter, ir *extprocv3.ImmediateResponse) {
	h := &headers{}
	h.mutate(ir.GetHeaders())
	status := int(ir.GetStatus().GetCode())
	if status == 0 {
		status = http.StatusOK
	}
	writeLocal(w, status, h, ir.GetBody())
}

// flushWrite flushes after each write, so a stream stays a stream.
func flushWrite(w http.ResponseWriter, b []byte) error {
	if len(b) == 0 {
		return nil
	}
	if _, err := w.Write(b); err != nil {
		return err
	}
	if f, ok := w.(http.Flusher); ok {
		f.Flush()
	}
	return nil
}

var errTimeout = errors.New("ext_proc message timeout")
