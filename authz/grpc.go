package authz

import (
	"context"
	"time"

	authv3 "github.com/envoyproxy/go-control-plane/envoy/service/auth/v3"
	"go.opentelemetry.io/otel/trace"

	"github.com/tollgate/tollgate/admission"
	"github.com/tollgate/tollgate/internal/tracing"
)

// authServer is envoy.service.auth.v3.Authorization.
type authServer struct {
	authv3.UnimplementedAuthorizationServer
	svc     *admission.Service
	clients clientSource
	m       *metrics
	tr      *tracing.Tracer // nil: off
}

var _ authv3.AuthorizationServer = (*authServer)(nil)

// Check answers Envoy's ext_authz call. Every outcome, including a
// malformed request, is an HTTP answer for Envoy; the gRPC call itself only
// fails when the caller has gone away.
func (s *authServer) Check(ctx context.Context, cr *authv3.CheckRequest) (*authv3.CheckResponse, error) {
	start := time.Now()
	r := fromCheckRequest(cr, s.clients)
	// The parent: Envoy's span for this gRPC call, else the checked
	// request's own traceparent (both only with tracing on).
	ctx = s.tr.FromHeaders(s.tr.FromGRPC(ctx), r.Headers)
	ctx, span := s.tr.Start(ctx, spanCheck, trace.SpanKindServer)
	v := s.svc.Decide(ctx, r)
	endCheck(span, "ext_authz", &v)
	a := Render(v)
	resp := toCheckResponse(&a)
	s.m.checkLatency.WithLabelValues("ext_authz").Observe(time.Since(start).Seconds())
	return resp, nil
}
