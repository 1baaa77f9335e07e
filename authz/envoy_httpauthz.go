package authz

// Translation between Envoy's ext_authz over HTTP (the filter's
// http_service form) and Tollgate's plain types. No server code lives here:
// httpauthz.go serves it.
//
// Envoy's HTTP form has no CheckRequest: the check is a copy of the
// worker's request. Its method; its path, behind the http_service's
// path_prefix; the headers allowed_headers lets through, plus those
// authorization_request.headers_to_add sets (they replace a worker's
// header of the same name); and, with with_request_body, the body (marked
// by x-envoy-auth-partial-body when it was cut). Envoy sets the check's
// own content-length, so the original length travels in a header the
// config adds. The answer is a plain HTTP response: 200 lets the call go
// (the headers named by allowed_upstream_headers go upstream, those named
// by allowed_client_headers_on_success to the worker), any other status
// refuses it with that status, the body, and the headers named by
// allowed_client_headers.

import (
	"net/http"
	"strconv"
	"strings"

	"github.com/tollgate/tollgate/admission"
)

// HTTPCheckPathPrefix is the http_service path_prefix Tollgate expects: the
// worker's path follows it. A check without it is not from a configured
// Envoy, and reads as an invalid request.
const HTTPCheckPathPrefix = "/ext_authz"

// Headers Envoy's authorization_request.headers_to_add sets on every check
// (envoy/sidecar-http.yaml). They replace any the worker sends.
const (
	// HeaderUpstreamHost names the provider the listener forwards to: the
	// :authority of the check is the sidecar's own (127.0.0.1:10001), and
	// the HTTP form has no context extensions. Set to the route's
	// host_rewrite_literal.
	HeaderUpstreamHost = "x-tollgate-upstream-host"
	// HeaderContentLength carries the worker's content-length
	// ("%REQ(content-length)%"), which Envoy replaces on the check with the
	// length of the body it forwards.
	HeaderContentLength = "x-tollgate-content-length"
)

// Envoy's own headers on the HTTP form.
const (
	// headerPartialBody is "true" on a check whose body Envoy cut at
	// max_request_bytes (allow_partial_message).
	headerPartialBody = "x-envoy-auth-partial-body"
	// headerAuthHeadersToRemove, on a 200, lists (comma-separated) request
	// headers Envoy removes before the call goes upstream.
	headerAuthHeadersToRemove = "x-envoy-auth-headers-to-remove"
)

// HTTPUpstreamHeaders are the headers of an allowed check that go upstream,
// to ext_proc: the Envoy config's allowed_upstream_headers.
func HTTPUpstreamHeaders() []string {
	return []string{HeaderReservation, HeaderRoute, "x-tollgate-shadow-decision"}
}

// HTTPClientHeadersOnSuccess are the headers of an allowed check that go
// back to the worker: the Envoy config's allowed_client_headers_on_success.
func HTTPClientHeadersOnSuccess() []string {
	return []string{"x-ratelimit-limit", "x-ratelimit-remaining", "x-ratelimit-reset",
		HeaderEstimatedCost, HeaderBudgetRemaining, HeaderQueueWait, HeaderQueueID, "x-tollgate-shadow-decision"}
}

// HTTPClientHeaders are the headers of a refusal that go back to the
// worker: the Envoy config's allowed_client_headers.
func HTTPClientHeaders() []string {
	return []string{"content-type", "x-ratelimit-limit", "x-ratelimit-remaining", "x-ratelimit-reset",
		"retry-after", "retry-after-ms", "x-should-retry", "x-tollgate-reason", "x-request-id", "request-id",
		HeaderQueueID, "x-tollgate-shadow-decision"}
}

// credentialHeaders are never kept from a check: Envoy's HTTP form always
// forwards authorization (the sidecar config disallows it; this holds if an
// operator's config does not), and Tollgate never needs them.
var credentialHeaders = []string{"authorization", "x-api-key", "proxy-authorization", "cookie"}

// fromHTTPCheck reads Envoy's HTTP check into a Request, as fromCheckRequest
// reads a CheckRequest: host from HeaderUpstreamHost (else the check's
// Host), path without the prefix and the query, client pinned or from the
// header, body and its full length. requestURI is the check's raw request
// target (r.RequestURI), so that the path is canonicalized once, by
// admission, exactly as on the gRPC path. It never fails: a check it
// cannot read comes back with Invalid set, for the policy to judge.
func fromHTTPCheck(method, requestURI, host string, h http.Header, body []byte, ids clientSource) *admission.Request {
	r := &admission.Request{Method: method}
	r.Headers = make(map[string]string, len(h))
	for k, vs := range h {
		// Envoy joins repeated headers with "," in a CheckRequest; the same
		// here, so that both forms read alike.
		r.Headers[strings.ToLower(k)] = strings.Join(vs, ",")
	}
	for _, k := range credentialHeaders {
		delete(r.Headers, k)
	}
	// The check's content-length is the forwarded body's; the worker's is
	// in HeaderContentLength (absent: the body is all there is).
	delete(r.Headers, "content-length")
	if cl := r.Headers[HeaderContentLength]; cl != "" {
		r.Headers["content-length"] = cl
	}
	r.ID = r.Headers["x-request-id"]
	r.Host = host
	if up := r.Headers[HeaderUpstreamHost]; up != "" {
		r.Host = up
	}
	if host != "" {
		r.Headers[":authority"] = host
	}
	path := requestURI
	if i := strings.IndexAny(path, "?#"); i >= 0 {
		path = path[:i]
	}
	rest, ok := strings.CutPrefix(path, HTTPCheckPathPrefix)
	if ok && (rest == "" || rest[0] == '/') {
		r.Path = rest
	}
	switch {
	case ids.pinned != "":
		r.Client = ids.pinned
	default:
		r.Client = r.Headers[ids.header]
	}
	r.Body = body
	r.BodySize = int64(len(body))
	if n, err := strconv.ParseInt(r.Headers["content-length"], 10, 64); err == nil && n > r.BodySize {
		r.BodySize = n // Envoy sent a partial body
	}
	if r.BodySize == int64(len(body)) && r.Headers[headerPartialBody] == "true" {
		// Cut, of unknown length: at least one byte more than was sent,
		// so that nothing rewrites a body it has not seen whole.
		r.BodySize++
	}
	switch {
	case r.Host == "":
		r.Invalid = "the check names no host"
	case !ok:
		r.Invalid = "the check's path lacks the " + HTTPCheckPathPrefix + " prefix Envoy's http_service path_prefix adds"
	case r.Path == "" || r.Path[0] != '/':
		r.Invalid = "the check names no path"
	}
	return r
}

// httpCheckResponse is an Answer as Envoy's HTTP form reads it.
type httpCheckResponse struct {
	Status  int
	Headers []Header
	Body    []byte
}

// toHTTPCheckResponse renders an Answer for Envoy's HTTP form, with the
// same headers and body as toCheckResponse: 200 with the rate-limit headers
// (for the worker) and the reservation, route and shadow decision (for
// upstream), asking Envoy to remove a worker's own reservation and route
// headers when Tollgate sets none; or the refusal's status, headers and
// provider-shaped body.
func toHTTPCheckResponse(v *Answer) httpCheckResponse {
	hs := ResponseHeaders(v)
	if v.Allowed {
		// The shadow decision is already among hs: Envoy sends it both ways
		// (it is in both lists).
		var remove []string
		if v.Reservation != "" {
			hs = append(hs, Header{HeaderReservation, v.Reservation})
		} else {
			remove = append(remove, HeaderReservation)
		}
		if v.Route != "" {
			hs = append(hs, Header{HeaderRoute, v.Route})
		} else {
			remove = append(remove, HeaderRoute)
		}
		if len(remove) > 0 {
			hs = append(hs, Header{headerAuthHeadersToRemove, strings.Join(remove, ",")})
		}
		return httpCheckResponse{Status: http.StatusOK, Headers: hs}
	}
	ct, body := DenialBody(v)
	hs = append(hs, Header{"content-type", ct})
	status := v.Status
	if status < 400 || status > 599 || status == http.StatusOK {
		status = http.StatusForbidden // never read as an allow
	}
	return httpCheckResponse{Status: status, Headers: hs, Body: body}
}
