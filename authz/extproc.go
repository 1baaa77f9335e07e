package authz

import (
	"errors"
	"io"
	"time"

	extprocv3 "github.com/envoyproxy/go-control-plane/envoy/service/ext_proc/v3"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/tollgate/tollgate/admission"
	"github.com/tollgate/tollgate/internal/tracing"
)

// procServer is envoy.service.ext_proc.v3.ExternalProcessor: one stream per
// HTTP request, which it follows with a Call and settles once, when the
// response ends or, failing that, when the stream does.
type procServer struct {
	extprocv3.UnimplementedExternalProcessorServer
	svc *admission.Service
	m   *metrics
	tr  *tracing.Tracer // nil: off
}

var _ extprocv3.ExternalProcessorServer = (*procServer)(nil)

// Process answers Envoy's messages for one request, in order. A message of
// a kind it does not expect gets the empty answer of its kind, so the call
// always proceeds; only a broken stream ends it early, and then the call is
// still settled (at its estimate if the response never came).
func (s *procServer) Process(stream extprocv3.ExternalProcessor_ProcessServer) error {
	ctx := stream.Context()
	// sctx carries the parent of the settle span: Envoy's span for this
	// stream, else the request's traceparent (tracing on only).
	sctx := ctx
	var c *admission.Call
	defer func() {
		if c != nil {
			c.End(sctx)
		}
	}()
	for {
		req, err := stream.Recv()
		if errors.Is(err, io.EOF) {
			return nil
		}
		if err != nil {
			if status.Code(err) == codes.Canceled || ctx.Err() != nil {
				return nil // Envoy or the worker went away; the deferred End settles
			}
			return err
		}
		start := time.Now()
		var (
			resp  *extprocv3.ProcessingResponse
			phase string
			end   bool
		)
		switch r := req.GetRequest().(type) {
		case *extprocv3.ProcessingRequest_RequestHeaders:
			phase = "request_headers"
			hs := procHeaders(r.RequestHeaders.GetHeaders())
			c = s.svc.Follow(hs[HeaderReservation], hs[HeaderRoute], hs[":method"])
			sctx = s.tr.FromHeaders(s.tr.FromGRPC(ctx), hs)
			switch {
			case !c.Tracked():
				resp = requestHeadersResponse(untrackedMode, false)
			case !c.WantsRequestBody():
				resp = requestHeadersResponse(responseOnlyMode, c.ReadsResponse())
			default:
				resp = requestHeadersResponse(nil, c.ReadsResponse())
			}
		case *extprocv3.ProcessingRequest_RequestBody:
			phase = "request_body"
			body, changed := r.RequestBody.GetBody(), false
			// Only a whole body is rewritten: BUFFERED_PARTIAL sends the
			// first part of one too large to buffer, and that part goes out
			// as it is.
			if c != nil && r.RequestBody.GetEndOfStream() {
				body, changed = c.RequestBody(body)
			}
			resp = requestBodyResponse(body, changed)
		case *extprocv3.ProcessingRequest_ResponseHeaders:
			phase = "response_headers"
			var set map[string]string
			if c != nil {
				hs := procHeaders(r.ResponseHeaders.GetHeaders())
				c.ResponseHeaders(ctx, procStatus(hs), hs)
				end = r.ResponseHeaders.GetEndOfStream()
				set = c.WorkerHeaders()
			}
			resp = responseHeadersResponse(set)
		case *extprocv3.ProcessingRequest_ResponseBody:
			phase = "response_body"
			chunk, rewrite := r.ResponseBody.GetBody(), false
			if c != nil {
				end = r.ResponseBody.GetEndOfStream()
				out := c.ResponseBody(chunk, end)
				chunk, rewrite = out, c.Stripping()
			}
			resp = responseBodyResponse(chunk, rewrite)
		case *extprocv3.ProcessingRequest_RequestTrailers:
			phase, resp = "request_trailers", trailersResponse(true)
		case *extprocv3.ProcessingRequest_ResponseTrailers:
			phase, resp, end = "response_trailers", trailersResponse(false), c != nil
		default:
			return status.Errorf(codes.InvalidArgument, "ext_proc: unexpected message %T", r)
		}
		if err := stream.Send(resp); err != nil {
			return nil // the deferred End settles
		}
		s.m.processLatency.WithLabelValues(phase).Observe(time.Since(start).Seconds())
		if end {
			c.ResponseEnded()
			c.End(sctx) // after the answer: settling never delays the response
		}
	}
}
