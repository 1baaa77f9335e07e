package envoysim

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"strconv"
	"time"

	procfilterv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/http/ext_proc/v3"
	extprocv3 "github.com/envoyproxy/go-control-plane/envoy/service/ext_proc/v3"
	"google.golang.org/protobuf/proto"
)

// procCall is one request's ext_proc stream, as Envoy's ext_proc filter
// drives it: opened at the first message, one answer awaited per message
// within the message timeout, the processing mode replaced by a mode
// override in a headers answer when allow_mode_override is set. When the
// stream fails and failure_mode_allow is set, the call goes on as if the
// filter were not there, as Envoy does.
type procCall struct {
	p      *Proxy
	cfg    *procfilterv3.ExternalProcessor
	mode   *procfilterv3.ProcessingMode
	ctx    context.Context
	cancel context.CancelFunc
	stream extprocv3.ExternalProcessor_ProcessClient
	dead   bool // failed or absent: nothing more is sent
	failed error
}

func (p *Proxy) openProc(ctx context.Context) *procCall {
	cfg := p.cfg.Listener.Proc
	if cfg == nil {
		return &procCall{p: p, dead: true}
	}
	mode := &procfilterv3.ProcessingMode{}
	if m := cfg.GetProcessingMode(); m != nil {
		mode = proto.Clone(m).(*procfilterv3.ProcessingMode)
	}
	pctx, cancel := context.WithCancel(ctx)
	return &procCall{p: p, cfg: cfg, mode: mode, ctx: pctx, cancel: cancel}
}

// close half-closes the stream and lets it go, as Envoy does when the
// request ends.
func (pc *procCall) close() {
	if pc.stream != nil && !pc.dead {
		_ = pc.stream.CloseSend()
	}
	if pc.cancel != nil {
		pc.cancel()
	}
}

// fail gives the stream up.
func (pc *procCall) fail(err error) error {
	pc.p.log.Warn("ext_proc failed", slog.Any("error", err))
	pc.dead, pc.failed = true, err
	pc.cancel()
	return err
}

// exchange sends one message and waits for its answer within the message
// timeout.
func (pc *procCall) exchange(req *extprocv3.ProcessingRequest) (*extprocv3.ProcessingResponse, error) {
	if pc.dead {
		return nil, errors.New("ext_proc: stream gone")
	}
	if pc.stream == nil {
		st, err := pc.p.cfg.Proc.Process(pc.ctx)
		if err != nil {
			return nil, pc.fail(err)
		}
		pc.stream = st
		req.ProtocolConfig = &extprocv3.ProtocolConfiguration{
			RequestBodyMode: pc.mode.GetRequestBodyMode(), ResponseBodyMode: pc.mode.GetResponseBodyMode()}
	}
	if err := pc.stream.Send(req); err != nil {
		if errors.Is(err, io.EOF) {
			// The stream has ended (the server returned, or the call was
			// cancelled under it); gRPC gives its status to Recv only.
			if _, rerr := pc.stream.Recv(); rerr != nil && !errors.Is(rerr, io.EOF) {
				err = rerr
			} else {
				err = errors.New("ext_proc: the server ended the stream before this message")
			}
		}
		return nil, pc.fail(err)
	}
	type answer struct {
		r   *extprocv3.ProcessingResponse
		err error
	}
	got := make(chan answer, 1)
	go func() {
		r, err := pc.stream.Recv()
		got <- answer{r, err}
	}()
	timer := time.NewTimer(pc.p.cfg.Listener.messageTimeout())
	defer timer.Stop()
	select {
	case a := <-got:
		if a.err != nil {
			return nil, pc.fail(a.err)
		}
		return a.r, nil
	case <-timer.C:
		err := pc.fail(fmt.Errorf("%w (%v)", errTimeout, pc.p.cfg.Listener.messageTimeout()))
		<-got // the cancel ends Recv: the goroutine never outlives the call
		return nil, err
	}
}

// failReply is what Envoy does when the stream fails: with
// failure_mode_allow nothing (the call goes on), else a 500.
func (pc *procCall) failReply(w http.ResponseWriter) bool {
	if pc.cfg.GetFailureModeAllow() {
		return false
	}
	writeLocal(w, http.StatusInternalServerError, nil, nil)
	return true
}

// override takes a mode override from a headers answer.
func (pc *procCall) override(r *extprocv3.ProcessingResponse) {
	if o := r.GetModeOverride(); o != nil && pc.cfg.GetAllowModeOverride() && !pc.cfg.GetSendBodyWithoutWaitingForHeaderResponse() {
		pc.mode = o
	}
}

func (pc *procCall) forwarded(k string) bool {
	return withheld(k, pc.cfg.GetForwardRules().GetDisallowedHeaders().GetPatterns())
}

// requestHeaders sends the request headers; done says a reply was written.
func (pc *procCall) requestHeaders(w http.ResponseWriter, req *headers, eos bool) bool {
	if pc.dead || pc.mode.GetRequestHeaderMode() == procfilterv3.ProcessingMode_SKIP {
		return false
	}
	r, err := pc.exchange(&extprocv3.ProcessingRequest{Request: &extprocv3.ProcessingRequest_RequestHeaders{
		RequestHeaders: &extprocv3.HttpHeaders{Headers: req.headerMap(pc.forwarded), EndOfStream: eos}}})
	if err != nil {
		return pc.failReply(w)
	}
	switch a := r.GetResponse().(type) {
	case *extprocv3.ProcessingResponse_ImmediateResponse:
		writeImmediate(w, a.ImmediateResponse)
		return true
	case *extprocv3.ProcessingResponse_RequestHeaders:
		req.mutate(a.RequestHeaders.GetResponse().GetHeaderMutation())
		pc.override(r)
		return false
	default:
		_ = pc.fail(fmt.Errorf("request headers answered with %T", a))
		return pc.failReply(w)
	}
}

// requestBody sends the request body as the body mode says and returns
// the body to forward; done says a reply was written.
func (pc *procCall) requestBody(w http.ResponseWriter, req *headers, body []byte) ([]byte, bool) {
	if pc.dead || pc.mode.GetRequestBodyMode() == procfilterv3.ProcessingMode_NONE {
		return body, false
	}
	part, rest := body, []byte(nil)
	switch pc.mode.GetRequestBodyMode() {
	case procfilterv3.ProcessingMode_BUFFERED:
		if len(body) > defaultBufferLimit {
			writeLocal(w, http.StatusRequestEntityTooLarge, nil, []byte("Payload Too Large"))
			return nil, true
		}
	case procfilterv3.ProcessingMode_BUFFERED_PARTIAL:
		if len(body) > defaultBufferLimit {
			part, rest = body[:defaultBufferLimit], body[defaultBufferLimit:]
		}
	}
	r, err := pc.exchange(&extprocv3.ProcessingRequest{Request: &extprocv3.ProcessingRequest_RequestBody{
		RequestBody: &extprocv3.HttpBody{Body: part, EndOfStream: rest == nil}}})
	if err != nil {
		return body, pc.failReply(w)
	}
	switch a := r.GetResponse().(type) {
	case *extprocv3.ProcessingResponse_ImmediateResponse:
		writeImmediate(w, a.ImmediateResponse)
		return nil, true
	case *extprocv3.ProcessingResponse_RequestBody:
		cr := a.RequestBody.GetResponse()
		req.del("content-length") // Envoy drops it when the body may change
		req.mutate(cr.GetHeaderMutation())
		out := mutateBody(part, cr.GetBodyMutation())
		out = append(out, rest...)
		// Envoy forwards the content-length the server set; one that does
		// not match the body is a broken request upstream: refuse it here.
		if cl := req.get("content-length"); cl != "" && cl != strconv.Itoa(len(out)) {
			writeLocal(w, http.StatusInternalServerError, nil, []byte(fmt.Sprintf("envoysim: ext_proc set content-length %s for a body of %d bytes", cl, len(out))))
			return nil, true
		}
		return out, false
	default:
		_ = pc.fail(fmt.Errorf("request body answered with %T", a))
		return body, pc.failReply(w)
	}
}

func mutateBody(b []byte, m *extprocv3.BodyMutation) []byte {
	switch m := m.GetMutation().(type) {
	case *extprocv3.BodyMutation_Body:
		return append([]byte(nil), m.Body...)
	case *extprocv3.BodyMutation_ClearBody:
		if m.ClearBody {
			return nil
		}
	}
	return b
}

// responseHeaders sends the response headers (":status" included) and
// applies the answer; a non-nil result is the reply to send instead.
func (pc *procCall) responseHeaders(rh *headers, eos bool) *extprocv3.ImmediateResponse {
	if pc.dead || pc.mode.GetResponseHeaderMode() == procfilterv3.ProcessingMode_SKIP {
		return nil
	}
	r, err := pc.exchange(&extprocv3.ProcessingRequest{Request: &extprocv3.ProcessingRequest_ResponseHeaders{
		ResponseHeaders: &extprocv3.HttpHeaders{Headers: rh.headerMap(pc.forwarded), EndOfStream: eos}}})
	if err != nil {
		return nil // the response is under way: failing closed would reset it; Envoy goes on
	}
	switch a := r.GetResponse().(type) {
	case *extprocv3.ProcessingResponse_ImmediateResponse:
		return a.ImmediateResponse
	case *extprocv3.ProcessingResponse_ResponseHeaders:
		rh.mutate(a.ResponseHeaders.GetResponse().GetHeaderMutation())
		pc.override(r)
	default:
		_ = pc.fail(fmt.Errorf("response headers answered with %T", a))
	}
	if eos {
		pc.mode.ResponseBodyMode = procfilterv3.ProcessingMode_NONE
	}
	return nil
}

func (pc *procCall) seesResponseBody() bool {
	return !pc.dead && pc.mode.GetResponseBodyMode() != procfilterv3.ProcessingMode_NONE
}

// bodyChunk sends one response body chunk and returns what to forward.
func (pc *procCall) bodyChunk(chunk []byte, eos bool) []byte {
	if pc.dead {
		return chunk
	}
	r, err := pc.exchange(&extprocv3.ProcessingRequest{Request: &extprocv3.ProcessingRequest_ResponseBody{
		ResponseBody: &extprocv3.HttpBody{Body: chunk, EndOfStream: eos}}})
	if err != nil {
		return chunk // failure_mode_allow: the chunk goes on as it came
	}
	a, ok := r.GetResponse().(*extprocv3.ProcessingResponse_ResponseBody)
	if !ok {
		_ = pc.fail(fmt.Errorf("response body answered with %T", r.GetResponse()))
		return chunk
	}
	return mutateBody(chunk, a.ResponseBody.GetResponse().GetBodyMutation())
}

// responseBody streams the upstream body to the worker through ext_proc:
// STREAMED sends each chunk as it arrives and forwards the answer at once
// (flushed); BUFFERED modes send the body whole.
func (pc *procCall) responseBody(w http.ResponseWriter, body io.Reader) {
	if !pc.seesResponseBody() {
		pc.copy(w, body)
		return
	}
	switch pc.mode.GetResponseBodyMode() {
	case procfilterv3.ProcessingMode_BUFFERED, procfilterv3.ProcessingMode_BUFFERED_PARTIAL:
		b, err := io.ReadAll(io.LimitReader(body, defaultBufferLimit))
		if err != nil {
			panic(http.ErrAbortHandler)
		}
		_ = flushWrite(w, pc.bodyChunk(b, true))
		pc.copy(w, body)
		return
	}
	buf := make([]byte, 32<<10)
	for {
		n, err := body.Read(buf)
		if n > 0 {
			chunk := append([]byte(nil), buf[:n]...)
			if pc.dead && !pc.cfg.GetFailureModeAllow() {
				panic(http.ErrAbortHandler) // Envoy resets the stream
			}
			if werr := flushWrite(w, pc.bodyChunk(chunk, false)); werr != nil {
				return
			}
		}
		if errors.Is(err, io.EOF) {
			_ = flushWrite(w, pc.bodyChunk(nil, true))
			return
		}
		if err != nil {
			panic(http.ErrAbortHandler)
		}
	}
}

// copy forwards the rest of a body as it arrives.
func (pc *procCall) copy(w http.ResponseWriter, body io.Reader) {
	buf := make([]byte, 32<<10)
	for {
		n, err := body.Read(buf)
		if n > 0 {
			if flushWrite(w, buf[:n]) != nil {
				return
			}
		}
		if err != nil {
			if !errors.Is(err, io.EOF) {
				panic(http.ErrAbortHandler)
			}
			return
		}
	}
}
