package main

// What `tollgate floor` sends, shaped as Envoy sends it with the shipped
// config: the CheckRequest of each client, and the ext_proc stream that
// follows an allowed call. Nothing here knows which server answers.

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"slices"
	"strings"

	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	ratelimitv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/common/ratelimit/v3"
	procfilterv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/http/ext_proc/v3"
	authv3 "github.com/envoyproxy/go-control-plane/envoy/service/auth/v3"
	extprocv3 "github.com/envoyproxy/go-control-plane/envoy/service/ext_proc/v3"
	rlsv3 "github.com/envoyproxy/go-control-plane/envoy/service/ratelimit/v3"
	"google.golang.org/genproto/googleapis/rpc/code"
	"google.golang.org/protobuf/encoding/protojson"
	"google.golang.org/protobuf/proto"
	"sigs.k8s.io/yaml"
)

// extProcFilter is the name of Envoy's ext_proc HTTP filter.
const extProcFilter = "envoy.filters.http.ext_proc"

// envoyProc is what of the ext_proc filter's config decides which
// messages Envoy sends: its processing mode and whether the server may
// override it per call.
type envoyProc struct {
	mode          *procfilterv3.ProcessingMode
	allowOverride bool
}

// loadEnvoyProc reads the first ext_proc filter of an Envoy bootstrap
// (every listener of the shipped config uses one filter chain) into
// go-control-plane's own type, so a field this code does not know fails
// loudly rather than being guessed at.
func loadEnvoyProc(path string) (envoyProc, error) {
	y, err := os.ReadFile(path)
	if err != nil {
		return envoyProc{}, fmt.Errorf("floor: envoy config: %w", err)
	}
	j, err := yaml.YAMLToJSON(y)
	if err != nil {
		return envoyProc{}, fmt.Errorf("floor: envoy config %s: %w", path, err)
	}
	var doc any
	if err := json.Unmarshal(j, &doc); err != nil {
		return envoyProc{}, fmt.Errorf("floor: envoy config %s: %w", path, err)
	}
	tc := findFilter(doc, extProcFilter)
	if tc == nil {
		return envoyProc{}, fmt.Errorf("floor: envoy config %s has no %s filter with a typed_config", path, extProcFilter)
	}
	cfg := &procfilterv3.ExternalProcessor{}
	if want := "type.googleapis.com/" + string(cfg.ProtoReflect().Descriptor().FullName()); tc["@type"] != want {
		return envoyProc{}, fmt.Errorf("floor: envoy config %s: %s is a %v, want %s", path, extProcFilter, tc["@type"], want)
	}
	delete(tc, "@type")
	raw, err := json.Marshal(tc)
	if err != nil {
		return envoyProc{}, fmt.Errorf("floor: envoy config %s: %w", path, err)
	}
	if err := protojson.Unmarshal(raw, cfg); err != nil {
		return envoyProc{}, fmt.Errorf("floor: envoy config %s: %s: %w", path, extProcFilter, err)
	}
	mode := cfg.GetProcessingMode()
	if mode == nil {
		mode = &procfilterv3.ProcessingMode{}
	}
	return envoyProc{mode: mode, allowOverride: cfg.GetAllowModeOverride() && !cfg.GetSendBodyWithoutWaitingForHeaderResponse()}, nil
}

// findFilter walks a decoded config for the HTTP filter called name and
// returns its typed_config.
func findFilter(v any, name string) map[string]any {
	switch v := v.(type) {
	case map[string]any:
		if v["name"] == name {
			if tc, ok := v["typed_config"].(map[string]any); ok {
				return tc
			}
		}
		for _, c := range v {
			if tc := findFilter(c, name); tc != nil {
				return tc
			}
		}
	case []any:
		for _, c := range v {
			if tc := findFilter(c, name); tc != nil {
				return tc
			}
		}
	}
	return nil
}

// Envoy's reading of a mode: a header mode of DEFAULT sends headers and
// skips trailers; every body mode but NONE sends the body.
func sendsHeaders(m procfilterv3.ProcessingMode_HeaderSendMode) bool {
	return m != procfilterv3.ProcessingMode_SKIP
}

func sendsBody(m procfilterv3.ProcessingMode_BodySendMode) bool {
	return m != procfilterv3.ProcessingMode_NONE
}

// floorWork is one run's calls: a CheckRequest per client, and the
// upstream's recorded answer that each ext_proc stream plays.
type floorWork struct {
	checks   []*authv3.CheckRequest
	hit      *authv3.CheckRequest // cachehit: one client's deterministic call
	rls      []*rlsv3.RateLimitRequest
	proc     envoyProc
	respHdrs *extprocv3.ProcessingRequest // shared: messages are only read once built
	respBody *extprocv3.ProcessingRequest
}

// newFloorWork builds the calls: probe's CheckRequest for the body, once
// per client id, with the context extension the shipped config sets on
// its routes.
func newFloorWork(f floorFlags, proc envoyProc) (*floorWork, error) {
	base, err := buildCheckRequest(probeFlags{rawURL: f.url, bodyFile: f.body, method: "POST", clientHeader: f.clientHeader})
	if err != nil {
		return nil, err
	}
	if len(base.GetAttributes().GetRequest().GetHttp().GetRawBody()) == 0 {
		return nil, fmt.Errorf("floor: body %s is empty", f.body)
	}
	base.Attributes.ContextExtensions = map[string]string{"upstream_host": base.GetAttributes().GetRequest().GetHttp().GetHost()}
	resp, err := os.ReadFile(f.response)
	if err != nil {
		return nil, fmt.Errorf("floor: response: %w", err)
	}
	w := &floorWork{proc: proc, checks: make([]*authv3.CheckRequest, f.clients)}
	header := strings.ToLower(f.clientHeader)
	for i := range w.checks {
		cr := proto.Clone(base).(*authv3.CheckRequest)
		h := cr.GetAttributes().GetRequest().GetHttp()
		h.Headers[header] = fmt.Sprintf("floor-client-%d", i)
		h.Id = fmt.Sprintf("floor-%d", i)
		h.Headers["x-request-id"] = h.Id
		w.checks[i] = cr
	}
	if slices.Contains(f.modes, modeCacheHit) {
		hit, err := buildCheckRequest(probeFlags{rawURL: f.url, bodyFile: f.cacheBody, method: "POST", clientHeader: f.clientHeader})
		if err != nil {
			return nil, err
		}
		hit.Attributes.ContextExtensions = map[string]string{"upstream_host": hit.GetAttributes().GetRequest().GetHttp().GetHost()}
		h := hit.GetAttributes().GetRequest().GetHttp()
		h.Headers[header] = "floor-cache-client"
		h.Id = "floor-cache"
		h.Headers["x-request-id"] = h.Id
		w.hit = hit
	}
	w.rls = rlsRequests(f.clients)
	w.respHdrs = &extprocv3.ProcessingRequest{Request: &extprocv3.ProcessingRequest_ResponseHeaders{ResponseHeaders: &extprocv3.HttpHeaders{
		Headers: &corev3.HeaderMap{Headers: []*corev3.HeaderValue{
			{Key: ":status", RawValue: []byte("200")},
			{Key: "content-type", RawValue: []byte("application/json")},
		}},
	}}}
	w.respBody = &extprocv3.ProcessingRequest{Request: &extprocv3.ProcessingRequest_ResponseBody{ResponseBody: &extprocv3.HttpBody{
		Body: resp, EndOfStream: true,
	}}}
	return w, nil
}

// rlsRequests are what Envoy's ratelimit filter sends for README example
// 2 (testdata/rls/examples/config/example2.yaml) with two rate_limits on
// the route: a marketing message to a number, and any message to it. Each
// client is a number of its own; testdata/rls/bench is the config whose
// limits they stay under.
func rlsRequests(clients int) []*rlsv3.RateLimitRequest {
	out := make([]*rlsv3.RateLimitRequest, clients)
	entry := func(k, v string) *ratelimitv3.RateLimitDescriptor_Entry {
		return &ratelimitv3.RateLimitDescriptor_Entry{Key: k, Value: v}
	}
	for i := range out {
		to := fmt.Sprintf("+1555%07d", i)
		out[i] = &rlsv3.RateLimitRequest{Domain: "messaging", Descriptors: []*ratelimitv3.RateLimitDescriptor{
			{Entries: []*ratelimitv3.RateLimitDescriptor_Entry{entry("message_type", "marketing"), entry("to_number", to)}},
			{Entries: []*ratelimitv3.RateLimitDescriptor_Entry{entry("to_number", to)}},
		}}
	}
	return out
}

// errDenied marks a call the server refused: counted, not an error.
var errDenied = errors.New("denied")

// check sends one client's CheckRequest.
func (w *floorWork) check(ctx context.Context, auth authv3.AuthorizationClient, client int) (*authv3.CheckResponse, error) {
	return w.checkRequest(ctx, auth, w.checks[client])
}

// checkRequest sends cr; a call not admitted is errDenied.
func (w *floorWork) checkRequest(ctx context.Context, auth authv3.AuthorizationClient, cr *authv3.CheckRequest) (*authv3.CheckResponse, error) {
	resp, err := auth.Check(ctx, cr)
	if err != nil {
		return nil, err
	}
	if code.Code(resp.GetStatus().GetCode()) != code.Code_OK {
		return nil, errDenied
	}
	return resp, nil
}

// rateLimit sends one client's RateLimitRequest. A descriptor that
// matched no rule is an error: the run would measure less than it claims
// (the bare server answers without statuses).
func (w *floorWork) rateLimit(ctx context.Context, rl rlsv3.RateLimitServiceClient, client int) error {
	resp, err := rl.ShouldRateLimit(ctx, w.rls[client])
	if err != nil {
		return err
	}
	if resp.GetOverallCode() != rlsv3.RateLimitResponse_OK {
		return errDenied
	}
	for i, st := range resp.GetStatuses() {
		if st.GetCurrentLimit() == nil {
			return fmt.Errorf("rls: descriptor %d matched no rule of the server's --rls-config", i)
		}
	}
	return nil
}

// wholeCall is the Check, then, for an allowed call, the ext_proc stream
// as Envoy drives it: request headers (with the headers the Check set),
// the request body if the mode asks for it, the response headers and the
// recorded response body, each only if the mode in force asks for it; a
// mode override in a headers answer replaces the mode for the rest of the
// call, as Envoy does with allow_mode_override. It returns once the last
// answer is in (what the HTTP call waits for), with the number of
// ext_proc messages exchanged; ending the stream afterwards, as Envoy
// does, is left to the returned func.
func (w *floorWork) wholeCall(ctx context.Context, auth authv3.AuthorizationClient, proc extprocv3.ExternalProcessorClient, client int) (func() error, int, error) {
	resp, err := w.check(ctx, auth, client)
	if err != nil {
		return nil, 0, err
	}
	return w.process(ctx, proc, w.checks[client], resp)
}

// errCacheMiss is a cachehit call the cache did not answer: admitted,
// and played through ext_proc so that its answer is recorded.
var errCacheMiss = errors.New("not answered from the cache")

// cacheHit sends the cachehit mode's Check. An answer from the response
// cache (a denied response carrying x-tollgate-cache: hit or coalesced,
// status 200) is the hit measured; an admitted call is a miss, played
// through ext_proc with the recorded response (so that the cache keeps
// it) and reported as errCacheMiss; anything else is an error.
func (w *floorWork) cacheHit(ctx context.Context, auth authv3.AuthorizationClient, proc extprocv3.ExternalProcessorClient) error {
	resp, err := auth.Check(ctx, w.hit)
	if err != nil {
		return err
	}
	if code.Code(resp.GetStatus().GetCode()) == code.Code_OK {
		finish, _, err := w.process(ctx, proc, w.hit, resp)
		if err == nil {
			err = finish()
		}
		return errors.Join(errCacheMiss, err)
	}
	d := resp.GetDeniedResponse()
	for _, h := range d.GetHeaders() {
		if strings.EqualFold(h.GetHeader().GetKey(), "x-tollgate-cache") {
			if v := h.GetHeader().GetValue(); (v == "hit" || v == "coalesced") && d.GetStatus().GetCode() == 200 {
				return nil
			}
		}
	}
	return fmt.Errorf("cachehit: neither admitted nor answered from the cache: %v %d", resp.GetStatus(), d.GetStatus().GetCode())
}

// process is the ext_proc stream of an admitted call (see wholeCall).
func (w *floorWork) process(ctx context.Context, proc extprocv3.ExternalProcessorClient, cr *authv3.CheckRequest, resp *authv3.CheckResponse) (func() error, int, error) {
	sent := 0
	sctx, cancel := context.WithCancel(ctx)
	var st extprocv3.ExternalProcessor_ProcessClient
	finish := func() error {
		defer cancel()
		if st == nil {
			return nil
		}
		if err := st.CloseSend(); err != nil {
			return err
		}
		if _, err := st.Recv(); !errors.Is(err, io.EOF) {
			return fmt.Errorf("ext_proc: the stream did not end after the last answer: %v", err)
		}
		return nil
	}
	mode := w.proc.mode
	exchange := func(req *extprocv3.ProcessingRequest, kind string) error {
		if st == nil {
			var err error
			if st, err = proc.Process(sctx); err != nil {
				return err
			}
			if req == w.respHdrs || req == w.respBody { // shared: the first message gets a copy of its own
				req = proto.Clone(req).(*extprocv3.ProcessingRequest)
			}
			req.ProtocolConfig = &extprocv3.ProtocolConfiguration{RequestBodyMode: mode.GetRequestBodyMode(), ResponseBodyMode: mode.GetResponseBodyMode()}
		}
		if err := st.Send(req); err != nil {
			return err
		}
		sent++
		r, err := st.Recv()
		if err != nil {
			return err
		}
		if got := answerKind(r); got != kind {
			return fmt.Errorf("answered %s with %s", kind, got)
		}
		if o := r.GetModeOverride(); o != nil && w.proc.allowOverride && strings.HasSuffix(kind, "_headers") {
			mode = o
		}
		return nil
	}
	fail := func(err error) (func() error, int, error) {
		cancel()
		return nil, sent, fmt.Errorf("ext_proc: %w", err)
	}
	h := cr.GetAttributes().GetRequest().GetHttp()
	body := h.GetRawBody()
	if sendsHeaders(mode.GetRequestHeaderMode()) {
		req := &extprocv3.ProcessingRequest{Request: &extprocv3.ProcessingRequest_RequestHeaders{RequestHeaders: &extprocv3.HttpHeaders{
			Headers: forwardedHeaders(h.GetHeaders(), resp.GetOkResponse()), EndOfStream: len(body) == 0,
		}}}
		if err := exchange(req, "request_headers"); err != nil {
			return fail(err)
		}
	}
	if len(body) > 0 && sendsBody(mode.GetRequestBodyMode()) {
		req := &extprocv3.ProcessingRequest{Request: &extprocv3.ProcessingRequest_RequestBody{RequestBody: &extprocv3.HttpBody{Body: body, EndOfStream: true}}}
		if err := exchange(req, "request_body"); err != nil {
			return fail(err)
		}
	}
	if sendsHeaders(mode.GetResponseHeaderMode()) {
		if err := exchange(w.respHdrs, "response_headers"); err != nil {
			return fail(err)
		}
	}
	if sendsBody(mode.GetResponseBodyMode()) {
		if err := exchange(w.respBody, "response_body"); err != nil {
			return fail(err)
		}
	}
	return finish, sent, nil
}

// answerKind names the kind of an ext_proc answer as the request oneof
// names the message it answers.
func answerKind(r *extprocv3.ProcessingResponse) string {
	switch r.GetResponse().(type) {
	case *extprocv3.ProcessingResponse_RequestHeaders:
		return "request_headers"
	case *extprocv3.ProcessingResponse_RequestBody:
		return "request_body"
	case *extprocv3.ProcessingResponse_ResponseHeaders:
		return "response_headers"
	case *extprocv3.ProcessingResponse_ResponseBody:
		return "response_body"
	case *extprocv3.ProcessingResponse_ImmediateResponse:
		return "an immediate response"
	default:
		return fmt.Sprintf("%T", r.GetResponse())
	}
}

// forwardedHeaders is the request as Envoy's ext_proc filter sees it
// after ext_authz: the worker's headers, with those the Check set
// overwritten or added and those it removed gone.
func forwardedHeaders(in map[string]string, ok *authv3.OkHttpResponse) *corev3.HeaderMap {
	hs := make(map[string]string, len(in)+len(ok.GetHeaders()))
	for k, v := range in {
		hs[k] = v
	}
	for _, o := range ok.GetHeaders() {
		k, v := strings.ToLower(o.GetHeader().GetKey()), o.GetHeader().GetValue()
		if v == "" {
			v = string(o.GetHeader().GetRawValue())
		}
		prev, found := hs[k]
		action := o.GetAppendAction()
		if o.GetAppend() != nil { // the deprecated field wins when set
			action = corev3.HeaderValueOption_OVERWRITE_IF_EXISTS_OR_ADD
			if o.GetAppend().GetValue() {
				action = corev3.HeaderValueOption_APPEND_IF_EXISTS_OR_ADD
			}
		}
		switch {
		case action == corev3.HeaderValueOption_APPEND_IF_EXISTS_OR_ADD && found:
			hs[k] = prev + "," + v
		case action == corev3.HeaderValueOption_ADD_IF_ABSENT && found,
			action == corev3.HeaderValueOption_OVERWRITE_IF_EXISTS && !found:
		default:
			hs[k] = v
		}
	}
	for _, k := range ok.GetHeadersToRemove() {
		delete(hs, strings.ToLower(k))
	}
	hm := &corev3.HeaderMap{Headers: make([]*corev3.HeaderValue, 0, len(hs))}
	for k, v := range hs {
		hm.Headers = append(hm.Headers, &corev3.HeaderValue{Key: k, RawValue: []byte(v)})
	}
	return hm
}
