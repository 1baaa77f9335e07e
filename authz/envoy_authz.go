package authz

// Translation between Envoy's ext_authz messages and Tollgate's plain types.
// No server code lives here.

import (
	"strconv"
	"strings"

	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	authv3 "github.com/envoyproxy/go-control-plane/envoy/service/auth/v3"
	typev3 "github.com/envoyproxy/go-control-plane/envoy/type/v3"
	"google.golang.org/genproto/googleapis/rpc/code"
	rpcstatus "google.golang.org/genproto/googleapis/rpc/status"

	"github.com/tollgate/tollgate/admission"
)

// ContextUpstreamHost is the ext_authz context extension that names the
// upstream host when the :authority the worker sent is the sidecar's own
// (the shipped Envoy config sets it per route).
const ContextUpstreamHost = "upstream_host"

// ContextClient is the ext_authz context extension that pins the client id
// for a listener or route: the operator's word, set in Envoy's config, so
// it wins over the header the worker writes.
const ContextClient = "client"

// clientSource says where a check's client id comes from: pinned (serve
// --client) beats the context extension, which beats header.
type clientSource struct {
	header string // request header the worker writes
	pinned string // the operator's id for every call, or ""
}

// fromCheckRequest reads a CheckRequest into a Request. It never fails: a
// request it cannot read comes back with Invalid set, for the policy to
// judge.
func fromCheckRequest(cr *authv3.CheckRequest, ids clientSource) *admission.Request {
	r := &admission.Request{}
	h := cr.GetAttributes().GetRequest().GetHttp()
	if h == nil {
		r.Invalid = "the check carries no HTTP request attributes"
		return r
	}
	r.ID, r.Method = h.GetId(), h.GetMethod()
	r.Headers = make(map[string]string, len(h.GetHeaders())+len(h.GetHeaderMap().GetHeaders()))
	for k, v := range h.GetHeaders() {
		r.Headers[strings.ToLower(k)] = v
	}
	for _, hv := range h.GetHeaderMap().GetHeaders() { // encode_raw_headers
		v := hv.GetValue()
		if v == "" {
			v = string(hv.GetRawValue())
		}
		r.Headers[strings.ToLower(hv.GetKey())] = v
	}
	if id := r.Headers["x-request-id"]; id != "" {
		r.ID = id
	}
	r.Host = h.GetHost()
	if r.Host == "" {
		r.Host = r.Headers[":authority"]
	}
	if up := cr.GetAttributes().GetContextExtensions()[ContextUpstreamHost]; up != "" {
		r.Host = up
	}
	r.Path = h.GetPath()
	if i := strings.IndexAny(r.Path, "?#"); i >= 0 {
		r.Path = r.Path[:i]
	}
	switch {
	case ids.pinned != "":
		r.Client = ids.pinned
	case cr.GetAttributes().GetContextExtensions()[ContextClient] != "":
		r.Client = cr.GetAttributes().GetContextExtensions()[ContextClient]
	default:
		r.Client = r.Headers[ids.header]
	}
	r.Body = h.GetRawBody()
	if len(r.Body) == 0 && h.GetBody() != "" {
		r.Body = []byte(h.GetBody())
	}
	r.BodySize = int64(len(r.Body))
	if n, err := strconv.ParseInt(r.Headers["content-length"], 10, 64); err == nil && n > r.BodySize {
		r.BodySize = n // Envoy sent a partial body
	}
	switch {
	case r.Host == "":
		r.Invalid = "the check names no host"
	case r.Path == "" || r.Path[0] != '/':
		r.Invalid = "the check names no path"
	}
	return r
}

func headerOptions(hs []Header) []*corev3.HeaderValueOption {
	// Three allocations for any number of headers, not two per header.
	out := make([]*corev3.HeaderValueOption, len(hs))
	opts := make([]corev3.HeaderValueOption, len(hs))
	vals := make([]corev3.HeaderValue, len(hs))
	for i, h := range hs {
		vals[i].Key, vals[i].Value = h.Name, h.Value
		opts[i].Header, opts[i].AppendAction = &vals[i], corev3.HeaderValueOption_OVERWRITE_IF_EXISTS_OR_ADD
		out[i] = &opts[i]
	}
	return out
}

var grpcCodeOf = map[int]code.Code{
	400: code.Code_INVALID_ARGUMENT,
	403: code.Code_PERMISSION_DENIED,
	409: code.Code_ABORTED,
	429: code.Code_RESOURCE_EXHAUSTED,
	503: code.Code_UNAVAILABLE,
}

// toCheckResponse renders a Verdict for Envoy: OK with the rate-limit
// headers on the response (and the shadow decision on the request), or a
// denial carrying the provider-shaped body.
func toCheckResponse(v *Answer) *authv3.CheckResponse {
	hs := ResponseHeaders(v)
	if v.Allowed {
		ok := &authv3.OkHttpResponse{ResponseHeadersToAdd: headerOptions(hs)}
		var up []Header
		if v.ShadowDecision != "" {
			up = append(up, Header{"x-tollgate-shadow-decision", v.ShadowDecision})
		}
		// Only Tollgate names reservations and routes: a worker's own
		// headers must not reach the settler, where they could end someone
		// else's reservation or feed the wrong pools.
		if v.Reservation != "" {
			up = append(up, Header{HeaderReservation, v.Reservation})
		} else {
			ok.HeadersToRemove = append(ok.HeadersToRemove, HeaderReservation)
		}
		if v.Route != "" {
			up = append(up, Header{HeaderRoute, v.Route})
		} else {
			ok.HeadersToRemove = append(ok.HeadersToRemove, HeaderRoute)
		}
		if len(up) > 0 {
			ok.Headers = headerOptions(up)
		}
		return &authv3.CheckResponse{
			Status:       &rpcstatus.Status{Code: int32(code.Code_OK)},
			HttpResponse: &authv3.CheckResponse_OkResponse{OkResponse: ok},
		}
	}
	if v.Cached != nil {
		return cachedCheckResponse(v)
	}
	ct, body := DenialBody(v)
	hs = append(hs, Header{"content-type", ct})
	c, ok := grpcCodeOf[v.Status]
	if !ok {
		c = code.Code_PERMISSION_DENIED
	}
	return &authv3.CheckResponse{
		Status: &rpcstatus.Status{Code: int32(c), Message: v.Reason},
		HttpResponse: &authv3.CheckResponse_DeniedResponse{DeniedResponse: &authv3.DeniedHttpResponse{
			Status:  &typev3.HttpStatus{Code: typev3.StatusCode(v.Status)},
			Headers: headerOptions(hs),
			Body:    string(body),
		}},
	}
}

// cachedCheckResponse replays a recorded answer: ext_authz's denied
// response is the only way Check can answer the worker itself, so the call
// is "denied" (a non-OK gRPC status) with the answer's own status (200),
// headers and body, and Envoy sends them as its local reply without ever
// connecting upstream.
func cachedCheckResponse(v *Answer) *authv3.CheckResponse {
	return &authv3.CheckResponse{
		Status: &rpcstatus.Status{Code: int32(code.Code_PERMISSION_DENIED), Message: v.Reason},
		HttpResponse: &authv3.CheckResponse_DeniedResponse{DeniedResponse: &authv3.DeniedHttpResponse{
			Status:  &typev3.HttpStatus{Code: typev3.StatusCode(v.Status)},
			Headers: headerOptions(CachedHeaders(v)),
			Body:    string(v.Cached.Entry.Body),
		}},
	}
}
