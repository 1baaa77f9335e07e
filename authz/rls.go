package authz

import (
	"context"
	"errors"
	"math"
	"strconv"
	"time"

	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	rlsv3 "github.com/envoyproxy/go-control-plane/envoy/service/ratelimit/v3"
	typev3 "github.com/envoyproxy/go-control-plane/envoy/type/v3"
	"go.opentelemetry.io/otel/trace"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/types/known/durationpb"

	"github.com/tollgate/tollgate/admission"
	"github.com/tollgate/tollgate/internal/tracing"
	"github.com/tollgate/tollgate/policy/rls"
)

// RateLimitHeaders are the response headers the RLS service adds, as
// envoyproxy/ratelimit adds them with LIMIT_RESPONSE_HEADERS_ENABLED: the
// limit, what remains and the seconds until it resets, of the descriptor
// closest to its limit (the last one over it, when one is).
type RateLimitHeaders struct {
	Enabled                 bool
	Limit, Remaining, Reset string
}

// DefaultRateLimitHeaders are that server's default names, off.
func DefaultRateLimitHeaders() RateLimitHeaders {
	return RateLimitHeaders{Limit: "RateLimit-Limit", Remaining: "RateLimit-Remaining", Reset: "RateLimit-Reset"}
}

// rlsServer serves envoy.service.ratelimit.v3.RateLimitService.
type rlsServer struct {
	rlsv3.UnimplementedRateLimitServiceServer
	rl      *admission.RateLimiter
	headers RateLimitHeaders
	tr      *tracing.Tracer // nil: off
}

// rlsServiceName is the service's name for gRPC health.
var rlsServiceName = rlsv3.RateLimitService_ServiceDesc.ServiceName

// registerRLS builds the RLS decision on the server's store and registers
// the service on its gRPC server.
func (s *Server) registerRLS() error {
	src := s.deps.RateLimits
	if src == nil {
		src = admission.StaticRateLimits{}
	}
	rl, err := admission.NewRateLimiter(admission.RateLimitDeps{Config: src, Store: s.deps.Store, Registerer: s.deps.Registry, Clock: s.deps.Clock,
		Tracer: s.deps.Tracer})
	if err != nil {
		return err
	}
	rlsv3.RegisterRateLimitServiceServer(s.grpc, &rlsServer{rl: rl, headers: s.cfg.RateLimitHeaders, tr: s.deps.Tracer})
	return nil
}

// ShouldRateLimit decides one request. An invalid request (no domain, no
// descriptor) is InvalidArgument and a store failure Unavailable: Envoy's
// filter then applies its failure_mode_deny (it lets the call through by
// default).
func (s *rlsServer) ShouldRateLimit(ctx context.Context, req *rlsv3.RateLimitRequest) (*rlsv3.RateLimitResponse, error) {
	ctx, span := s.tr.Start(s.tr.FromGRPC(ctx), spanRLS, trace.SpanKindServer)
	v, err := s.rl.Decide(ctx, rateLimitRequest(req))
	endRLS(span, req.GetDomain(), len(req.GetDescriptors()), &v, err)
	switch {
	case errors.Is(err, admission.ErrInvalidRateLimitRequest):
		return nil, status.Error(codes.InvalidArgument, err.Error())
	case err != nil:
		return nil, status.Error(codes.Unavailable, err.Error())
	}
	return s.render(v), nil
}

// rateLimitRequest translates Envoy's request.
func rateLimitRequest(req *rlsv3.RateLimitRequest) admission.RateLimitRequest {
	out := admission.RateLimitRequest{Domain: req.GetDomain(), HitsAddend: uint64(req.GetHitsAddend()),
		Descriptors: make([]admission.RateLimitDescriptor, len(req.GetDescriptors()))}
	for i, d := range req.GetDescriptors() {
		od := &out.Descriptors[i]
		od.Entries = make([]rls.Entry, len(d.GetEntries()))
		for j, e := range d.GetEntries() {
			od.Entries[j] = rls.Entry{Key: e.GetKey(), Value: e.GetValue()}
		}
		if h := d.GetHitsAddend(); h != nil {
			od.HitsAddend, od.HasHitsAddend = h.GetValue(), true
		}
		if l := d.GetLimit(); l != nil {
			od.Override = &admission.RateLimitOverride{RequestsPerUnit: l.GetRequestsPerUnit(), Unit: overrideUnit(l.GetUnit())}
		}
	}
	return out
}

// overrideUnit maps envoy.type.v3.RateLimitUnit to a unit.
func overrideUnit(u typev3.RateLimitUnit) rls.Unit {
	switch u {
	case typev3.RateLimitUnit_SECOND:
		return rls.Second
	case typev3.RateLimitUnit_MINUTE:
		return rls.Minute
	case typev3.RateLimitUnit_HOUR:
		return rls.Hour
	case typev3.RateLimitUnit_DAY:
		return rls.Day
	case typev3.RateLimitUnit_MONTH:
		return rls.Month
	case typev3.RateLimitUnit_YEAR:
		return rls.Year
	}
	return rls.UnitUnknown
}

// responseUnit maps a unit to the response's.
func responseUnit(u rls.Unit) rlsv3.RateLimitResponse_RateLimit_Unit {
	switch u {
	case rls.Second:
		return rlsv3.RateLimitResponse_RateLimit_SECOND
	case rls.Minute:
		return rlsv3.RateLimitResponse_RateLimit_MINUTE
	case rls.Hour:
		return rlsv3.RateLimitResponse_RateLimit_HOUR
	case rls.Day:
		return rlsv3.RateLimitResponse_RateLimit_DAY
	case rls.Week:
		return rlsv3.RateLimitResponse_RateLimit_WEEK
	case rls.Month:
		return rlsv3.RateLimitResponse_RateLimit_MONTH
	case rls.Year:
		return rlsv3.RateLimitResponse_RateLimit_YEAR
	}
	return rlsv3.RateLimitResponse_RateLimit_UNKNOWN
}

// resetSeconds rounds a reset up to whole seconds, as durations until a
// reset are given.
func resetSeconds(d time.Duration) int64 { return int64((d + time.Second - 1) / time.Second) }

func (s *rlsServer) render(v admission.RateLimitVerdict) *rlsv3.RateLimitResponse {
	resp := &rlsv3.RateLimitResponse{OverallCode: rlsv3.RateLimitResponse_OK,
		Statuses: make([]*rlsv3.RateLimitResponse_DescriptorStatus, len(v.Statuses))}
	if v.Over {
		resp.OverallCode = rlsv3.RateLimitResponse_OVER_LIMIT
	}
	minRemaining, pick := uint32(math.MaxUint32), -1
	for i, st := range v.Statuses {
		ds := &rlsv3.RateLimitResponse_DescriptorStatus{Code: rlsv3.RateLimitResponse_OK, LimitRemaining: st.Remaining}
		if st.Over {
			ds.Code = rlsv3.RateLimitResponse_OVER_LIMIT
		}
		if st.Limit != nil {
			ds.CurrentLimit = &rlsv3.RateLimitResponse_RateLimit{RequestsPerUnit: st.Limit.RequestsPerUnit, Unit: responseUnit(st.Limit.Unit)}
			ds.DurationUntilReset = &durationpb.Duration{Seconds: resetSeconds(st.ResetAfter)}
			if st.Remaining < minRemaining {
				minRemaining, pick = st.Remaining, i
			}
			if st.Over {
				minRemaining, pick = 0, i
			}
		}
		resp.Statuses[i] = ds
	}
	if s.headers.Enabled && pick >= 0 {
		ds := resp.Statuses[pick]
		resp.ResponseHeadersToAdd = []*corev3.HeaderValue{
			{Key: s.headers.Limit, Value: strconv.FormatUint(uint64(ds.CurrentLimit.RequestsPerUnit), 10)},
			{Key: s.headers.Remaining, Value: strconv.FormatUint(uint64(ds.LimitRemaining), 10)},
			{Key: s.headers.Reset, Value: strconv.FormatInt(ds.DurationUntilReset.GetSeconds(), 10)},
		}
	}
	return resp
}
