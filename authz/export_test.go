package authz

import (
	"context"

	authv3 "github.com/envoyproxy/go-control-plane/envoy/service/auth/v3"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/tollgate/tollgate/admission"
	"github.com/tollgate/tollgate/internal/tracing"
)

// CheckHandler is the ext_authz handler without its gRPC transport, so a
// benchmark measures Tollgate's own work (and what tracing adds to it)
// apart from HTTP/2's.
func CheckHandler(svc *admission.Service, tr *tracing.Tracer) (func(context.Context, *authv3.CheckRequest) (*authv3.CheckResponse, error), error) {
	m, err := newMetrics(prometheus.NewRegistry())
	if err != nil {
		return nil, err
	}
	s := &authServer{svc: svc, clients: clientSource{header: DefaultConfig().ClientHeader}, m: m, tr: tr}
	return s.Check, nil
}
