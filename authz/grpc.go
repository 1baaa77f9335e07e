package authz

import (
	"context"
	"time"

	authv3 "github.com/envoyproxy/go-control-plane/envoy/service/auth/v3"

	"github.com/tollgate/tollgate/admission"
)

// authServer is envoy.service.auth.v3.Authorization.
type authServer struct {
	authv3.UnimplementedAuthorizationServer
	svc     *admission.Service
	clients clientSource
	m       *metrics
}

var _ authv3.AuthorizationServer = (*authServer)(nil)

// Check answers Envoy's ext_authz call. Every outcome, including a
// malformed request, is an HTTP answer for Envoy; the gRPC call itself only
// fails when the caller has gone away.
func (s *authServer) Check(ctx context.Context, cr *authv3.CheckRequest) (*authv3.CheckResponse, error) {
	start := time.Now()
	r := fromCheckRequest(cr, s.clients)
	a := Render(s.svc.Decide(ctx, r))
	resp := toCheckResponse(&a)
	s.m.checkLatency.WithLabelValues("ext_authz").Observe(time.Since(start).Seconds())
	return resp, nil
}
