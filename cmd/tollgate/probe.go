package main

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"net/url"
	"os"
	"sort"
	"strconv"
	"strings"
	"time"

	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	procfilterv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/http/ext_proc/v3"
	authv3 "github.com/envoyproxy/go-control-plane/envoy/service/auth/v3"
	extprocv3 "github.com/envoyproxy/go-control-plane/envoy/service/ext_proc/v3"
	"github.com/spf13/cobra"
	"google.golang.org/genproto/googleapis/rpc/code"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
)

type probeFlags struct {
	addr, client, clientHeader, rawURL, bodyFile, method string
	headers                                              []string
	timeout                                              time.Duration
	// The upstream's answer, played through ext_proc after an allowed check.
	respond         bool
	responseFile    string
	responseStatus  int
	responseHeaders []string
}

// Exit status of probe when the call is denied, so scripts can tell a
// denial (3) from a failure to ask (1).
const exitDenied = 3

func probeCmd() *cobra.Command {
	f := probeFlags{}
	cmd := &cobra.Command{
		Use:   "probe --client ID --url URL [--body FILE]",
		Short: "Send one ext_authz CheckRequest to a running Tollgate and print the answer",
		Long: "probe builds the CheckRequest Envoy would send for a call to URL and prints Tollgate's decision\n" +
			"and headers. An allowed call is then finished as Envoy would finish it: the upstream's answer\n" +
			"(--response FILE, --status, --response-header; an empty 200 by default) goes through ext_proc,\n" +
			"which settles it; --respond=false leaves it in flight. Exit status: 0 allowed (or answered from the cache), 3 denied, 1 could not ask.",
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			return probe(cmd.Context(), f, cmd.OutOrStdout())
		},
	}
	fl := cmd.Flags()
	fl.StringVar(&f.addr, "addr", "127.0.0.1:8081", "Tollgate's gRPC address")
	fl.StringVar(&f.client, "client", "", "client id, sent in the client header")
	fl.StringVar(&f.clientHeader, "client-header", "x-tollgate-client", "header that carries the client id")
	fl.StringVar(&f.rawURL, "url", "", "the upstream URL the call goes to, e.g. https://api.openai.com/v1/chat/completions")
	fl.StringVar(&f.bodyFile, "body", "", "file holding the request body (- for stdin)")
	fl.StringVar(&f.method, "method", "", "HTTP method (default POST with a body, else GET)")
	fl.StringArrayVar(&f.headers, "header", nil, "extra request header NAME:VALUE (repeatable)")
	fl.DurationVar(&f.timeout, "timeout", 5*time.Second, "how long to wait for the answer")
	fl.BoolVar(&f.respond, "respond", true, "finish an allowed call through ext_proc with the upstream answer below")
	fl.StringVar(&f.responseFile, "response", "", "file holding the upstream's response body (JSON, or an event stream when it starts with data: or event:)")
	fl.IntVar(&f.responseStatus, "status", 200, "the upstream's HTTP status")
	fl.StringArrayVar(&f.responseHeaders, "response-header", nil, "upstream response header NAME:VALUE (repeatable), e.g. retry-after:20")
	_ = cmd.MarkFlagRequired("url")
	return cmd
}

func probe(ctx context.Context, f probeFlags, out io.Writer) error {
	cr, err := buildCheckRequest(f)
	if err != nil {
		return err
	}
	conn, err := grpc.NewClient(f.addr, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		return fmt.Errorf("probe: %w", err)
	}
	defer conn.Close()
	ctx, cancel := context.WithTimeout(ctx, f.timeout)
	defer cancel()
	resp, err := authv3.NewAuthorizationClient(conn).Check(ctx, cr)
	if err != nil {
		return wrongPort(ctx, "probe", f.addr, protoGRPC, "--grpc-addr", "127.0.0.1:8081", fmt.Errorf("probe: check %s: %w", f.addr, err))
	}
	if err := printCheckResponse(out, resp); err != nil || !f.respond {
		return err
	}
	return playResponse(ctx, extprocv3.NewExternalProcessorClient(conn), f, cr, resp.GetOkResponse(), out)
}

// playResponse finishes an allowed call the way Envoy's ext_proc filter
// does: the request headers (with what Check added), the request body when
// Tollgate asks for it, then the upstream's answer. Tollgate settles the
// call when the answer ends.
func playResponse(ctx context.Context, proc extprocv3.ExternalProcessorClient, f probeFlags, cr *authv3.CheckRequest, ok *authv3.OkHttpResponse, out io.Writer) error {
	var body []byte
	if f.responseFile != "" {
		var err error
		if body, err = os.ReadFile(f.responseFile); err != nil {
			return fmt.Errorf("probe: response: %w", err)
		}
	}
	req := cr.GetAttributes().GetRequest().GetHttp()
	hm := &corev3.HeaderMap{}
	for k, v := range req.GetHeaders() {
		hm.Headers = append(hm.Headers, &corev3.HeaderValue{Key: k, RawValue: []byte(v)})
	}
	for _, h := range ok.GetHeaders() {
		hm.Headers = append(hm.Headers, &corev3.HeaderValue{Key: h.GetHeader().GetKey(), RawValue: []byte(h.GetHeader().GetValue())})
	}
	ct := "application/json"
	if t := bytes.TrimSpace(body); bytes.HasPrefix(t, []byte("data:")) || bytes.HasPrefix(t, []byte("event:")) {
		ct = "text/event-stream"
	}
	rh := &corev3.HeaderMap{Headers: []*corev3.HeaderValue{
		{Key: ":status", RawValue: []byte(strconv.Itoa(f.responseStatus))}, {Key: "content-type", RawValue: []byte(ct)}}}
	for _, kv := range f.responseHeaders {
		k, v, found := strings.Cut(kv, ":")
		if !found {
			return fmt.Errorf("probe: --response-header %q: want NAME:VALUE", kv)
		}
		rh.Headers = append(rh.Headers, &corev3.HeaderValue{Key: strings.ToLower(strings.TrimSpace(k)), RawValue: []byte(strings.TrimSpace(v))})
	}
	st, err := proc.Process(ctx)
	if err != nil {
		return fmt.Errorf("probe: ext_proc: %w", err)
	}
	exchange := func(r *extprocv3.ProcessingRequest) (*extprocv3.ProcessingResponse, error) {
		if err := st.Send(r); err != nil {
			return nil, err
		}
		return st.Recv()
	}
	resp, err := exchange(&extprocv3.ProcessingRequest{Request: &extprocv3.ProcessingRequest_RequestHeaders{RequestHeaders: &extprocv3.HttpHeaders{Headers: hm}}})
	if err != nil {
		return fmt.Errorf("probe: ext_proc: %w", err)
	}
	mode := resp.GetModeOverride()
	if mode.GetResponseHeaderMode() == procfilterv3.ProcessingMode_SKIP {
		fmt.Fprintln(out, "ext_proc: nothing to settle for this call")
		return st.CloseSend()
	}
	if mode == nil && len(req.GetRawBody()) > 0 {
		resp, err = exchange(&extprocv3.ProcessingRequest{Request: &extprocv3.ProcessingRequest_RequestBody{RequestBody: &extprocv3.HttpBody{Body: req.GetRawBody(), EndOfStream: true}}})
		if err != nil {
			return fmt.Errorf("probe: ext_proc: %w", err)
		}
		if b := resp.GetRequestBody().GetResponse().GetBodyMutation().GetBody(); b != nil {
			fmt.Fprintf(out, "ext_proc: request body rewritten upstream: %s\n", bytes.TrimRight(b, "\r\n"))
		}
	}
	resp, err = exchange(&extprocv3.ProcessingRequest{Request: &extprocv3.ProcessingRequest_ResponseHeaders{ResponseHeaders: &extprocv3.HttpHeaders{
		Headers: rh, EndOfStream: len(body) == 0}}})
	if err != nil {
		return fmt.Errorf("probe: ext_proc: %w", err)
	}
	// What the worker's response gains: what the optimizer did
	// (x-tollgate-optimized, x-tollgate-downgraded-from), a retry hint.
	printHeaders(out, "ext_proc: response headers for the worker", resp.GetResponseHeaders().GetResponse().GetHeaderMutation().GetSetHeaders())
	if len(body) > 0 {
		if _, err = exchange(&extprocv3.ProcessingRequest{Request: &extprocv3.ProcessingRequest_ResponseBody{ResponseBody: &extprocv3.HttpBody{Body: body, EndOfStream: true}}}); err != nil {
			return fmt.Errorf("probe: ext_proc: %w", err)
		}
	}
	if err := st.CloseSend(); err != nil {
		return fmt.Errorf("probe: ext_proc: %w", err)
	}
	if _, err := st.Recv(); err != nil && !errors.Is(err, io.EOF) {
		return fmt.Errorf("probe: ext_proc: %w", err)
	}
	fmt.Fprintf(out, "ext_proc: upstream answered %d with %d bytes; the call is settled\n", f.responseStatus, len(body))
	return nil
}

func buildCheckRequest(f probeFlags) (*authv3.CheckRequest, error) {
	u, err := url.Parse(f.rawURL)
	if err != nil || u.Host == "" {
		return nil, fmt.Errorf("probe: --url %q is not an absolute URL", f.rawURL)
	}
	var body []byte
	switch f.bodyFile {
	case "":
	case "-":
		body, err = io.ReadAll(os.Stdin)
	default:
		body, err = os.ReadFile(f.bodyFile)
	}
	if err != nil {
		return nil, fmt.Errorf("probe: body: %w", err)
	}
	method := f.method
	if method == "" {
		method = "GET"
		if len(body) > 0 {
			method = "POST"
		}
	}
	path := u.EscapedPath()
	if path == "" {
		path = "/"
	}
	if u.RawQuery != "" {
		path += "?" + u.RawQuery
	}
	h := map[string]string{":authority": u.Host, ":method": method, ":path": path, ":scheme": u.Scheme}
	if f.client != "" {
		h[strings.ToLower(f.clientHeader)] = f.client
	}
	if len(body) > 0 {
		h["content-type"] = "application/json"
		h["content-length"] = strconv.Itoa(len(body))
	}
	for _, kv := range f.headers {
		k, v, ok := strings.Cut(kv, ":")
		if !ok {
			return nil, fmt.Errorf("probe: --header %q: want NAME:VALUE", kv)
		}
		h[strings.ToLower(strings.TrimSpace(k))] = strings.TrimSpace(v)
	}
	return &authv3.CheckRequest{Attributes: &authv3.AttributeContext{Request: &authv3.AttributeContext_Request{
		Time: nil,
		Http: &authv3.AttributeContext_HttpRequest{
			Id: fmt.Sprintf("probe-%d", time.Now().UnixNano()), Method: method, Host: u.Host, Path: path,
			Scheme: u.Scheme, Headers: h, RawBody: body, Size: int64(len(body)), Protocol: "HTTP/1.1",
		},
	}}}, nil
}

func printCheckResponse(out io.Writer, resp *authv3.CheckResponse) error {
	grpcCode := code.Code(resp.GetStatus().GetCode())
	switch r := resp.GetHttpResponse().(type) {
	case *authv3.CheckResponse_OkResponse:
		fmt.Fprintf(out, "decision: ALLOWED (gRPC %s)\n", grpcCode)
		printHeaders(out, "response headers added", r.OkResponse.GetResponseHeadersToAdd())
		printHeaders(out, "request headers set", r.OkResponse.GetHeaders())
		return nil
	case *authv3.CheckResponse_DeniedResponse:
		d := r.DeniedResponse
		if how := cacheAnswer(d.GetHeaders()); how != "" {
			// Denied only in ext_authz's terms: the worker gets the
			// recorded answer, from the cache (docs/cache.md).
			fmt.Fprintf(out, "decision: ANSWERED FROM THE CACHE (%s; HTTP %d, gRPC %s)\n", how, int(d.GetStatus().GetCode()), grpcCode)
			printHeaders(out, "response headers", d.GetHeaders())
			fmt.Fprintf(out, "body: %s\n", d.GetBody())
			return nil
		}
		fmt.Fprintf(out, "decision: DENIED (HTTP %d, gRPC %s)\n", int(d.GetStatus().GetCode()), grpcCode)
		printHeaders(out, "response headers", d.GetHeaders())
		fmt.Fprintf(out, "body: %s\n", d.GetBody())
		return &exitError{code: exitDenied}
	default:
		if grpcCode == code.Code_OK {
			fmt.Fprintln(out, "decision: ALLOWED (no HTTP response attached)")
			return nil
		}
		fmt.Fprintf(out, "decision: DENIED (gRPC %s, no HTTP response attached)\n", grpcCode)
		return &exitError{code: exitDenied}
	}
}

// cacheAnswer is how the cache answered a denied check (hit, coalesced,
// replayed), or "" for a refusal.
func cacheAnswer(hs []*corev3.HeaderValueOption) string {
	for _, h := range hs {
		if h.GetHeader().GetKey() == "x-tollgate-cache" {
			return h.GetHeader().GetValue()
		}
	}
	return ""
}

func printHeaders(out io.Writer, title string, hs []*corev3.HeaderValueOption) {
	if len(hs) == 0 {
		return
	}
	fmt.Fprintf(out, "%s:\n", title)
	lines := make([]string, 0, len(hs))
	for _, h := range hs {
		v := h.GetHeader().GetValue()
		if v == "" {
			v = string(h.GetHeader().GetRawValue()) // ext_proc sets raw values
		}
		lines = append(lines, fmt.Sprintf("  %s: %s", h.GetHeader().GetKey(), v))
	}
	sort.Strings(lines)
	fmt.Fprintln(out, strings.Join(lines, "\n"))
}
