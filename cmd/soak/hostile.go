package main

// Hostile traffic: what issue 11 and the authz tests hold Tollgate to one
// call at a time, sent for the whole soak: absurd max_tokens, bodies that
// are not what they claim, clients that are not in the policy, paths
// spelled to dodge a route, responses with impossible usage, ext_proc
// streams out of order, bytes that are not protobuf, oversize messages,
// huge headers, settles that make no sense, wrong API tokens, and
// connections that speak no protocol at all. None may crash Tollgate,
// leak what a call holds, or get a 5xx it should not.

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"strings"
	"time"

	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	procfilterv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/http/ext_proc/v3"
	authv3 "github.com/envoyproxy/go-control-plane/envoy/service/auth/v3"
	extprocv3 "github.com/envoyproxy/go-control-plane/envoy/service/ext_proc/v3"
	"google.golang.org/genproto/googleapis/rpc/code"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"

	"github.com/tollgate/tollgate/authz"
)

func hostileKinds() []kind {
	return []kind{
		{"hostile_huge_max_tokens", 1, 4, hugeMaxTokens},
		{"hostile_bad_body", 1, 4, badBody},
		{"hostile_unknown_client", 1, 4, unknownClient},
		{"hostile_odd_path", 1, 4, oddPath},
		{"hostile_bogus_usage", 1, 4, bogusUsage},
		{"hostile_ext_proc_disorder", 1, 4, procDisorder},
		{"hostile_malformed_grpc", 1, 4, malformedGRPC},
		{"hostile_oversize", 0.3, 2, oversize},
		{"hostile_huge_headers", 0.5, 2, hugeHeaders},
		{"hostile_bogus_settle", 1, 4, bogusSettle},
		{"hostile_wrong_token", 1, 4, wrongToken},
		{"hostile_junk_connection", 0.5, 4, junkConnection},
	}
}

// noServerError accepts any answer below 500.
func noServerError(resp *http.Response, err error) (string, error) {
	if err != nil {
		return "transport error", err
	}
	defer resp.Body.Close()
	body, _ := io.ReadAll(io.LimitReader(resp.Body, 8<<20))
	out := outcomeOf(resp)
	if resp.StatusCode >= 500 {
		return out, fmt.Errorf("%s: %.200s", out, body)
	}
	return out, nil
}

// refused expects Tollgate's refusal with one of want.
func refused(resp *http.Response, err error, want ...string) (string, error) {
	if err != nil {
		return "transport error", err
	}
	defer resp.Body.Close()
	_, _ = io.Copy(io.Discard, resp.Body)
	out := outcomeOf(resp)
	return out, expect(out, want...)
}

func hugeMaxTokens(ctx context.Context, r *rig, n int64) (string, error) {
	mt := []string{"99999999999999999999", "1e300", "9223372036854775807"}[n%3]
	body := []byte(`{"model":"gpt-4.1-nano","max_tokens":` + mt + `,"messages":[{"role":"user","content":"hi"}]}`)
	resp, err := r.call(ctx, n, "openai", "/v1/chat/completions", "application/json", body, map[string]string{clientHeader: client(n)})
	return refused(resp, err, "429 exceeds_capacity")
}

var badBodies = [][]byte{
	[]byte(`{"model":`),
	[]byte(`not json at all`),
	[]byte(`{"model":"gpt-4.1-nano","messages":"not a list"}`),
	[]byte(`[]`),
	{0xff, 0xfe, 0x00, '{', 0x80},
	[]byte(`{"model":"gpt-4.1-nano","messages":[{"role":"user","content":{"nested":[1,2,{"x":null}]}}],"max_tokens":-5}`),
	[]byte(`{"model":"gpt-4.1-nano","n":1000000,"max_tokens":100,"messages":[]}`),
}

// badBody: bodies that are not the JSON they claim to be. Tollgate may
// refuse them or let the provider do so; neither may be a 5xx.
func badBody(ctx context.Context, r *rig, n int64) (string, error) {
	resp, err := r.call(ctx, n, "openai", "/v1/chat/completions", "application/json", badBodies[n%int64(len(badBodies))],
		map[string]string{clientHeader: client(n)})
	return noServerError(resp, err)
}

// unknownClient: ids the policy does not know (each one new: nothing may
// be kept per unknown id) and ids no policy may know.
func unknownClient(ctx context.Context, r *rig, n int64) (string, error) {
	id, want := fmt.Sprintf("intruder-%d", n), "403 unknown_client"
	switch n % 4 {
	case 1:
		id, want = "has a space", "400 invalid_client"
	case 2:
		id, want = strings.Repeat("a", 200), "400 invalid_client"
	case 3:
		id, want = "caf\xc3\xa9-"+fmt.Sprint(n), "400 invalid_client"
	}
	resp, err := r.call(ctx, n, "openai", "/v1/chat/completions", "application/json", chatBody("gpt-4.1-nano", 10, false, false),
		map[string]string{clientHeader: id})
	return refused(resp, err, want)
}

// oddPaths are spellings of a route's path: those that can be made
// canonical are metered on it, the others refused.
var oddPaths = []struct{ path, want string }{
	{"//v1/chat/completions", "allowed"},
	{"/%76%31/chat/completions", "allowed"},
	{"/x/../v1/chat/completions", "allowed"},
	{"/v1//chat/completions?x=1", "allowed"},
	{"/V1/chat/completions", "400 invalid_request"},
	{"/v1%2Fchat/completions", "400 invalid_request"},
	{"/v1/chat%zz", "400 invalid_request"},
	{`/v1\chat/completions`, "400 invalid_request"},
}

// checkOutcome names a Check's answer: allowed, or its status and reason.
func checkOutcome(resp *authv3.CheckResponse) string {
	if code.Code(resp.GetStatus().GetCode()) == code.Code_OK {
		return "allowed"
	}
	d := resp.GetDeniedResponse()
	reason := ""
	for _, h := range d.GetHeaders() {
		if h.GetHeader().GetKey() == reasonHeader {
			reason = h.GetHeader().GetValue()
		}
	}
	return strings.TrimSpace(fmt.Sprintf("%d %s", d.GetStatus().GetCode(), reason))
}

// oddPath sends the check straight (the stand-in, like Envoy, would
// normalize some of these first) and finishes an allowed call through
// ext_proc, which settles it.
func oddPath(ctx context.Context, r *rig, n int64) (string, error) {
	p := oddPaths[n%int64(len(oddPaths))]
	cr := chatCheck(n, client(n), p.path, chatBody("gpt-4.1-nano", 10, false, false))
	resp, id, err := r.checkDirect(ctx, n, cr)
	if err != nil {
		return "check failed", err
	}
	out := checkOutcome(resp)
	if err := expect(out, p.want); err != nil {
		return out, fmt.Errorf("path %q: %w", p.path, err)
	}
	if out != "allowed" {
		return out, nil
	}
	if id == "" {
		return out, fmt.Errorf("path %q was let through unmetered", p.path)
	}
	chat := []byte(`{"id":"x","object":"chat.completion","model":"gpt-4.1-nano","choices":[],"usage":{"prompt_tokens":3,"completion_tokens":1,"total_tokens":4}}`)
	if err := r.extProc(ctx, n, cr, resp.GetOkResponse(), 200, "application/json", chat); err != nil {
		return "ext_proc failed", err
	}
	return "allowed, settled", nil
}

// bogusResponses are upstream answers whose usage no call can have, or
// that are not what their content type says.
var bogusResponses = []struct{ contentType, body string }{
	{"application/json", `{"id":"x","object":"chat.completion","choices":[],"usage":{"prompt_tokens":9223372036854775807,"completion_tokens":99999999999,"total_tokens":1,"prompt_tokens_details":{"cached_tokens":9223372036854775807}}}`},
	{"application/json", `{"usage":{"prompt_tokens":-5,"completion_tokens":-1}}`},
	{"application/json", `{"usage":{"prompt_tokens":"many","completion_tokens":null}}`},
	{"application/json", `{"usage":{"prompt_tokens":1e308,"completion_tokens":1.5}}`},
	{"application/json", `{"usage":`},
	{"text/event-stream", "data: {garbage\n\ndata: {\"choices\":[],\"usage\":{\"prompt_tokens\":1e308}}\n\nevent: x\ndata: [DONE]\n\n"},
	{"application/json", strings.Repeat("x", 2<<20)},
	{"text/event-stream", strings.Repeat("data: {\"choices\":[{\"delta\":{\"content\":\"a\"}}]}\n\n", 20000)},
}

func bogusUsage(ctx context.Context, r *rig, n int64) (string, error) {
	b := bogusResponses[n%int64(len(bogusResponses))]
	cr := chatCheck(n, client(n), "/v1/chat/completions", chatBody("gpt-4.1-hostile", 10, b.contentType == "text/event-stream", false))
	resp, id, err := r.checkDirect(ctx, n, cr)
	if err != nil {
		return "check failed", err
	}
	if id == "" {
		return checkOutcome(resp), expect(checkOutcome(resp), busy...)
	}
	if err := r.extProc(ctx, n, cr, resp.GetOkResponse(), 200, b.contentType, []byte(b.body)); err != nil {
		return "ext_proc failed", err
	}
	return "settled", nil
}

// extProc plays the ext_proc stream Envoy runs with the shipped
// processing mode for an allowed call: the request headers (with those
// the Check set), the body unless Tollgate's mode override skips it, the
// response headers, then the response body in 64 KiB chunks, each
// answered before the next, and the end of the stream.
func (r *rig) extProc(ctx context.Context, n int64, cr *authv3.CheckRequest, ok *authv3.OkHttpResponse, status int, contentType string, body []byte) error {
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	st, err := r.proc[r.memberOf(n)].Process(ctx)
	if err != nil {
		return err
	}
	h := cr.GetAttributes().GetRequest().GetHttp()
	hs := &corev3.HeaderMap{}
	for k, v := range h.GetHeaders() {
		hs.Headers = append(hs.Headers, &corev3.HeaderValue{Key: k, RawValue: []byte(v)})
	}
	for _, o := range ok.GetHeaders() {
		hs.Headers = append(hs.Headers, &corev3.HeaderValue{Key: o.GetHeader().GetKey(), RawValue: []byte(o.GetHeader().GetValue())})
	}
	exchange := func(req *extprocv3.ProcessingRequest) (*extprocv3.ProcessingResponse, error) {
		if err := st.Send(req); err != nil {
			return nil, err
		}
		return st.Recv()
	}
	first, err := exchange(&extprocv3.ProcessingRequest{Request: &extprocv3.ProcessingRequest_RequestHeaders{
		RequestHeaders: &extprocv3.HttpHeaders{Headers: hs}}})
	if err != nil {
		return fmt.Errorf("request headers: %w", err)
	}
	mode := first.GetModeOverride()
	if mode == nil || mode.GetRequestBodyMode() != procfilterv3.ProcessingMode_NONE {
		if _, err := exchange(&extprocv3.ProcessingRequest{Request: &extprocv3.ProcessingRequest_RequestBody{
			RequestBody: &extprocv3.HttpBody{Body: h.GetRawBody(), EndOfStream: true}}}); err != nil {
			return fmt.Errorf("request body: %w", err)
		}
	}
	if _, err := exchange(&extprocv3.ProcessingRequest{Request: &extprocv3.ProcessingRequest_ResponseHeaders{
		ResponseHeaders: &extprocv3.HttpHeaders{Headers: &corev3.HeaderMap{Headers: []*corev3.HeaderValue{
			{Key: ":status", RawValue: []byte(fmt.Sprint(status))}, {Key: "content-type", RawValue: []byte(contentType)}}}}}}); err != nil {
		return fmt.Errorf("response headers: %w", err)
	}
	if mode == nil || mode.GetResponseBodyMode() != procfilterv3.ProcessingMode_NONE {
		for len(body) > 0 {
			chunk := body[:min(len(body), 64<<10)]
			body = body[len(chunk):]
			if _, err := exchange(&extprocv3.ProcessingRequest{Request: &extprocv3.ProcessingRequest_ResponseBody{
				ResponseBody: &extprocv3.HttpBody{Body: chunk, EndOfStream: len(body) == 0}}}); err != nil {
				return fmt.Errorf("response body: %w", err)
			}
		}
	}
	if err := st.CloseSend(); err != nil {
		return err
	}
	if _, err := st.Recv(); !errors.Is(err, io.EOF) {
		return fmt.Errorf("the stream did not end after the last answer: %v", err)
	}
	return nil
}

// procDisorder opens ext_proc streams Envoy would never send: messages
// out of order, an unknown or absent reservation, a stream dropped
// halfway, a message of no kind.
func procDisorder(ctx context.Context, r *rig, n int64) (string, error) {
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	st, err := r.proc[r.memberOf(n)].Process(ctx)
	if err != nil {
		return "open failed", err
	}
	hdrs := func(kv ...string) *corev3.HeaderMap {
		hm := &corev3.HeaderMap{}
		for i := 0; i+1 < len(kv); i += 2 {
			hm.Headers = append(hm.Headers, &corev3.HeaderValue{Key: kv[i], RawValue: []byte(kv[i+1])})
		}
		return hm
	}
	reqHeaders := func(hm *corev3.HeaderMap) *extprocv3.ProcessingRequest {
		return &extprocv3.ProcessingRequest{Request: &extprocv3.ProcessingRequest_RequestHeaders{RequestHeaders: &extprocv3.HttpHeaders{Headers: hm}}}
	}
	respBody := &extprocv3.ProcessingRequest{Request: &extprocv3.ProcessingRequest_ResponseBody{ResponseBody: &extprocv3.HttpBody{Body: []byte(`{"usage":{"prompt_tokens":5}}`), EndOfStream: true}}}
	var msgs []*extprocv3.ProcessingRequest
	name := ""
	wantCode := codes.OK
	switch n % 6 {
	case 0:
		name, msgs = "response body first", []*extprocv3.ProcessingRequest{respBody, respBody}
	case 1:
		name, msgs = "unknown reservation", []*extprocv3.ProcessingRequest{
			reqHeaders(hdrs(":method", "POST", ":path", "/v1/chat/completions", authz.HeaderReservation, fmt.Sprintf("%032x", n), authz.HeaderRoute, "openai")),
			{Request: &extprocv3.ProcessingRequest_ResponseHeaders{ResponseHeaders: &extprocv3.HttpHeaders{Headers: hdrs(":status", "200")}}},
			respBody}
	case 2:
		name = "a thousand headers, twice"
		var kv []string
		for i := range 1000 {
			kv = append(kv, fmt.Sprintf("x-pad-%d", i), strings.Repeat("p", 64))
		}
		msgs = []*extprocv3.ProcessingRequest{reqHeaders(hdrs(kv...)), reqHeaders(hdrs(kv...))}
	case 3:
		name, msgs, wantCode = "a message of no kind", []*extprocv3.ProcessingRequest{{}}, codes.InvalidArgument
	case 4:
		name, msgs = "dropped after the headers", []*extprocv3.ProcessingRequest{
			reqHeaders(hdrs(":method", "POST", authz.HeaderReservation, "not-a-reservation", authz.HeaderRoute, "no-such-route"))}
	case 5:
		name, msgs = "trailers only", []*extprocv3.ProcessingRequest{
			{Request: &extprocv3.ProcessingRequest_ResponseTrailers{ResponseTrailers: &extprocv3.HttpTrailers{}}},
			{Request: &extprocv3.ProcessingRequest_RequestTrailers{RequestTrailers: &extprocv3.HttpTrailers{}}}}
	}
	for _, m := range msgs {
		if err := st.Send(m); err != nil {
			break // the server ended the stream: its status comes from Recv
		}
		if _, err := st.Recv(); err != nil {
			if c := status.Code(err); c != wantCode {
				return name + ": " + c.String(), fmt.Errorf("%s: %v, want %v", name, err, wantCode)
			}
			return name + ": " + status.Code(err).String(), nil
		}
	}
	if n%6 == 4 {
		cancel() // hang up with the call open, as a worker's reset would
		return name, nil
	}
	if err := st.CloseSend(); err != nil {
		return name + ": close failed", err
	}
	if _, err := st.Recv(); !errors.Is(err, io.EOF) {
		if c := status.Code(err); c != wantCode {
			return name + ": " + c.String(), fmt.Errorf("%s: %v, want %v", name, err, wantCode)
		}
	}
	return name + ": answered", nil
}

// rawCodec sends and receives bytes as they are, under the proto codec's
// name: the server decodes them as protobuf.
type rawCodec struct{}

func (rawCodec) Marshal(v any) ([]byte, error) { return *v.(*[]byte), nil }
func (rawCodec) Unmarshal(b []byte, v any) error {
	*v.(*[]byte) = append([]byte(nil), b...)
	return nil
}
func (rawCodec) Name() string { return "proto" }

// malformedGRPC sends Check bytes that are not (or not quite) a
// CheckRequest, and ext_proc a stream of the same: decoding fails with
// Internal, or the bytes happen to be a message and get an answer.
func malformedGRPC(ctx context.Context, r *rig, n int64) (string, error) {
	valid, _ := proto.Marshal(chatCheck(n, client(n), "/v1/chat/completions", chatBody("gpt-4.1-nano", 10, false, false)))
	var in []byte
	switch n % 4 {
	case 0: // noise
		in = make([]byte, 1+n%512)
		for i := range in {
			in[i] = byte((n*7919 + int64(i)*104729) % 251)
		}
	case 1: // cut short
		in = valid[:len(valid)/2]
	case 2: // field 1 (attributes) with the wire type of a number
		in = append([]byte{0x08, 0x96, 0x01}, valid...)
	case 3: // a length beyond the message
		in = []byte{0x0a, 0xff, 0xff, 0xff, 0x7f, 0x00}
	}
	conn := r.conns[r.memberOf(n)]
	var out []byte
	if n%8 < 4 {
		err := conn.Invoke(ctx, "/envoy.service.auth.v3.Authorization/Check", &in, &out, grpc.ForceCodec(rawCodec{}))
		return grpcOutcome("check", err, out)
	}
	st, err := conn.NewStream(ctx, &grpc.StreamDesc{ServerStreams: true, ClientStreams: true},
		"/envoy.service.ext_proc.v3.ExternalProcessor/Process", grpc.ForceCodec(rawCodec{}))
	if err != nil {
		return "open failed", err
	}
	if err := st.SendMsg(&in); err == nil {
		_ = st.CloseSend()
	}
	for {
		if err := st.RecvMsg(&out); err != nil {
			if errors.Is(err, io.EOF) {
				return "ext_proc: ended", nil
			}
			if status.Code(err) == codes.InvalidArgument { // bytes that decode to a message of no kind
				return "ext_proc: InvalidArgument", nil
			}
			return grpcOutcome("ext_proc", err, nil)
		}
	}
}

// grpcOutcome accepts a decoding failure (Internal) or an answer.
func grpcOutcome(what string, err error, out []byte) (string, error) {
	switch c := status.Code(err); c {
	case codes.OK:
		var resp authv3.CheckResponse
		if uerr := proto.Unmarshal(out, &resp); uerr != nil {
			return what + ": undecodable answer", uerr
		}
		return what + ": answered " + checkOutcome(&resp), nil
	case codes.Internal:
		return what + ": Internal", nil
	default:
		return what + ": " + c.String(), err
	}
}

// oversize: a check over gRPC's 4 MiB message limit is refused by gRPC
// itself; a 600 KB body through the stand-in reaches Tollgate cut to the
// config's 256 KiB and is estimated from what arrived.
func oversize(ctx context.Context, r *rig, n int64) (string, error) {
	text := strings.Repeat("lorem ipsum ", 50000)
	body, _ := json.Marshal(map[string]any{"model": "gpt-4.1-nano", "max_tokens": 10,
		"messages": []map[string]string{{"role": "user", "content": text}}})
	if n%2 == 0 {
		resp, err := r.call(ctx, n, "openai", "/v1/chat/completions", "application/json", body, map[string]string{clientHeader: client(n)})
		return noServerError(resp, err)
	}
	big := make([]byte, 5<<20)
	copy(big, body)
	_, _, err := r.checkDirect(ctx, n, chatCheck(n, client(n), "/v1/chat/completions", big))
	if c := status.Code(err); c != codes.ResourceExhausted {
		return "check: " + c.String(), fmt.Errorf("a 5 MiB check: %v, want ResourceExhausted", err)
	}
	return "check: ResourceExhausted", nil
}

// hugeHeaders: two thousand headers and one of 64 KiB in a check, then a
// 32 KiB header through the stand-in.
func hugeHeaders(ctx context.Context, r *rig, n int64) (string, error) {
	if n%2 == 0 {
		resp, err := r.call(ctx, n, "openai", "/v1/chat/completions", "application/json", chatBody("gpt-4.1-nano", 10, false, false),
			map[string]string{clientHeader: client(n), "x-soak-big": strings.Repeat("h", 32<<10)})
		return finish(resp, err, http.StatusOK, nil)
	}
	cr := chatCheck(n, client(n), "/v1/chat/completions", chatBody("gpt-4.1-nano", 10, false, false))
	hs := cr.GetAttributes().GetRequest().GetHttp().GetHeaders()
	for i := range 2000 {
		hs[fmt.Sprintf("x-soak-pad-%d", i)] = strings.Repeat("p", 100)
	}
	hs["x-soak-big"] = strings.Repeat("h", 64<<10)
	resp, id, err := r.checkDirect(ctx, n, cr)
	if err != nil {
		return "check failed", err
	}
	out := checkOutcome(resp)
	if id != "" {
		code, err := r.members[r.memberOf(n)].apiDo(ctx, http.MethodPost, "/api/reservations/"+id+"/release", nil, nil)
		if err != nil || code != http.StatusOK {
			return out, fmt.Errorf("release: %d %v", code, err)
		}
		out += ", released"
	}
	return out, expect(strings.TrimSuffix(out, ", released"), append([]string{"allowed"}, busy...)...)
}

// bogusSettle: settles and other API calls that make no sense, each with
// the answer it must get.
func bogusSettle(ctx context.Context, r *rig, n int64) (string, error) {
	m := r.members[r.memberOf(n)]
	unknown := fmt.Sprintf("%032x", n)
	settle := "/api/reservations/" + unknown + "/settle"
	cases := []struct {
		name, method, path, body string
		want                     int
	}{
		{"not json", http.MethodPost, settle, "not json", http.StatusBadRequest},
		{"a number", http.MethodPost, settle, `{"actual_cost_usd": -1}`, http.StatusBadRequest},
		{"negative", http.MethodPost, settle, `{"actual_cost_usd":"-0.5"}`, http.StatusBadRequest},
		{"exponent", http.MethodPost, settle, `{"actual_cost_usd":"1e999"}`, http.StatusBadRequest},
		{"10 KB", http.MethodPost, settle, `{"actual_cost_usd":"` + strings.Repeat("9", 10<<10) + `"}`, http.StatusBadRequest},
		{"unknown reservation", http.MethodPost, settle, `{"actual_cost_usd":"0.01"}`, http.StatusNotFound},
		{"release unknown", http.MethodPost, "/api/reservations/" + unknown + "/release", "", http.StatusNotFound},
		{"usage of an intruder", http.MethodGet, "/api/usage/intruder-" + unknown, "", http.StatusNotFound},
		{"unqueue nothing", http.MethodDelete, "/api/queue/" + unknown, "", http.StatusNotFound},
		{"position of nothing", http.MethodGet, "/api/queue/position/" + unknown, "", http.StatusNotFound},
		{"above the bound", "", "", "", http.StatusUnprocessableEntity},
	}
	c := cases[n%int64(len(cases))]
	if c.method == "" { // a real reservation settled at more than it could cost, then released
		resp, id, err := r.checkDirect(ctx, n, chatCheck(n, client(n), "/v1/chat/completions", chatBody("gpt-4.1-nano", 10, false, false)))
		if err != nil {
			return "check failed", err
		}
		if id == "" {
			out := c.name + ": not admitted, " + checkOutcome(resp)
			return out, expect(checkOutcome(resp), busy...)
		}
		c.method, c.path, c.body = http.MethodPost, "/api/reservations/"+id+"/settle", `{"actual_cost_usd":"5000"}`
		defer func() {
			_, _ = m.apiDo(context.WithoutCancel(ctx), http.MethodPost, "/api/reservations/"+id+"/release", nil, nil)
		}()
	}
	var body []byte
	if c.body != "" {
		body = []byte(c.body)
	}
	got, err := m.apiDo(ctx, c.method, c.path, body, nil)
	out := fmt.Sprintf("%s: %d", c.name, got)
	if err != nil {
		return out, err
	}
	if got != c.want {
		return out, fmt.Errorf("%s: %d, want %d", c.name, got, c.want)
	}
	return out, nil
}

// wrongToken: the API without its token, or with a wrong one, is 401.
func wrongToken(ctx context.Context, r *rig, n int64) (string, error) {
	m := r.members[r.memberOf(n)]
	auths := []string{"", "Bearer wrong", "Basic dXNlcjpwYXNz", "Bearer " + m.token + "x", "Bearer", m.token}
	a := auths[n%int64(len(auths))]
	method, path := http.MethodGet, "/api/queue/status"
	if n%2 == 1 {
		method, path = http.MethodPost, "/api/reservations/"+fmt.Sprintf("%032x", n)+"/release"
	}
	req, err := http.NewRequestWithContext(ctx, method, m.apiURL+path, nil)
	if err != nil {
		return "request", err
	}
	if a != "" {
		req.Header.Set("Authorization", a)
	}
	resp, err := m.api.Do(req)
	if err != nil {
		return "transport error", err
	}
	defer resp.Body.Close()
	_, _ = io.Copy(io.Discard, resp.Body)
	out := fmt.Sprint(resp.StatusCode)
	return out, expect(out, "401")
}

// junkConnection opens a connection to one of a member's listeners and
// speaks no protocol, or half of one: the server must close it, or hold
// it until the soak gives up, and go on serving everyone else.
func junkConnection(ctx context.Context, r *rig, n int64) (string, error) {
	m := r.members[r.memberOf(n)]
	var addr, name string
	var junk []byte
	switch n % 4 {
	case 0:
		addr, name, junk = m.grpcAddr, "grpc: noise", []byte("\x16\x03\x01\x00\xa5\x01\x00\x00\xa1\x03\x03 not TLS either")
	case 1:
		addr, name, junk = m.grpcAddr, "grpc: preface then a broken frame", []byte("PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n\x00\x00\x04\x09\xff\x00\x00\x00\x07junk")
	case 2:
		addr, name = m.httpAddr, "http: 100 KB header"
		junk = []byte("GET /metrics HTTP/1.1\r\nHost: x\r\nX-Big: " + strings.Repeat("b", 100<<10) + "\r\n\r\n")
	case 3:
		addr, name, junk = strings.TrimPrefix(m.apiURL, "http://"), "api: half a request line", []byte("POST /api/reservat")
	}
	var d net.Dialer
	conn, err := d.DialContext(ctx, "tcp", addr)
	if err != nil {
		return name + ": dial failed", err
	}
	defer conn.Close()
	_ = conn.SetDeadline(time.Now().Add(2 * time.Second))
	if _, err := conn.Write(junk); err != nil {
		return name + ": closed while written", nil
	}
	buf := make([]byte, 512)
	k, err := io.ReadFull(conn, buf)
	var ne net.Error
	switch {
	case errors.As(err, &ne) && ne.Timeout():
		return name + ": held open", nil
	case k > 0 && strings.HasPrefix(string(buf[:k]), "HTTP/1.1 "):
		if f := strings.Fields(string(buf[:k])); len(f) > 1 {
			return name + ": " + f[1], nil
		}
	}
	return name + ": closed", nil
}
