package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"

	authv3 "github.com/envoyproxy/go-control-plane/envoy/service/auth/v3"
	extprocv3 "github.com/envoyproxy/go-control-plane/envoy/service/ext_proc/v3"
	rlsv3 "github.com/envoyproxy/go-control-plane/envoy/service/ratelimit/v3"
	"github.com/spf13/cobra"
	"google.golang.org/genproto/googleapis/rpc/code"
	rpcstatus "google.golang.org/genproto/googleapis/rpc/status"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/health"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
	"google.golang.org/grpc/status"
)

// bareFloorCmd is the yardstick `tollgate floor` measures Tollgate against:
// an ext_authz, ext_proc and rate limit (RLS) gRPC server that decodes each message, answers
// OK (or the empty answer of its kind) and encodes that, and does nothing
// else. Hidden: it is a measuring instrument, started by floor as a process
// of its own, not a way to run Tollgate. It imports nothing of Tollgate.
func bareFloorCmd() *cobra.Command {
	var addr string
	cmd := &cobra.Command{
		Use:    "bare-floor --grpc-addr HOST:PORT",
		Short:  "Serve a bare ext_authz + ext_proc + RLS gRPC server that allows everything (the floor's yardstick)",
		Hidden: true,
		Args:   cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			return bareFloor(cmd.Context(), addr, cmd.ErrOrStderr())
		},
	}
	cmd.Flags().StringVar(&addr, "grpc-addr", "127.0.0.1:0", "gRPC listen address")
	return cmd
}

// bareFloor serves until ctx ends. Like Tollgate it is a default
// grpc.NewServer with the standard health service, so the two differ only
// in what their handlers do.
func bareFloor(ctx context.Context, addr string, stderr io.Writer) error {
	lis, err := net.Listen("tcp", addr)
	if err != nil {
		return fmt.Errorf("bare-floor: %w", err)
	}
	srv := grpc.NewServer()
	authv3.RegisterAuthorizationServer(srv, bareAuth{})
	extprocv3.RegisterExternalProcessorServer(srv, bareProc{})
	rlsv3.RegisterRateLimitServiceServer(srv, bareRLS{})
	hs := health.NewServer()
	healthpb.RegisterHealthServer(srv, hs)
	hs.SetServingStatus("", healthpb.HealthCheckResponse_SERVING)
	fmt.Fprintf(stderr, "bare-floor: serving ext_authz, ext_proc and rls on %s\n", lis.Addr())

	served := make(chan error, 1)
	go func() { served <- srv.Serve(lis) }()
	select {
	case err := <-served:
		return fmt.Errorf("bare-floor: %w", err)
	case <-ctx.Done():
	}
	srv.Stop() // a measuring instrument has nothing to drain
	if err := <-served; err != nil && !errors.Is(err, grpc.ErrServerStopped) {
		return fmt.Errorf("bare-floor: %w", err)
	}
	return nil
}

// bareAuth allows every check and sets no header.
type bareAuth struct {
	authv3.UnimplementedAuthorizationServer
}

var _ authv3.AuthorizationServer = bareAuth{}

func (bareAuth) Check(context.Context, *authv3.CheckRequest) (*authv3.CheckResponse, error) {
	return &authv3.CheckResponse{Status: &rpcstatus.Status{Code: int32(code.Code_OK)}}, nil
}

// bareRLS answers every ShouldRateLimit OK, without a status per
// descriptor.
type bareRLS struct {
	rlsv3.UnimplementedRateLimitServiceServer
}

var _ rlsv3.RateLimitServiceServer = bareRLS{}

func (bareRLS) ShouldRateLimit(context.Context, *rlsv3.RateLimitRequest) (*rlsv3.RateLimitResponse, error) {
	return &rlsv3.RateLimitResponse{OverallCode: rlsv3.RateLimitResponse_OK}, nil
}

// bareProc answers each ext_proc message with the empty response of its
// kind and no mode override, so Envoy sends whatever its config asks for.
type bareProc struct {
	extprocv3.UnimplementedExternalProcessorServer
}

var _ extprocv3.ExternalProcessorServer = bareProc{}

func (bareProc) Process(stream extprocv3.ExternalProcessor_ProcessServer) error {
	for {
		req, err := stream.Recv()
		if errors.Is(err, io.EOF) {
			return nil
		}
		if err != nil {
			if status.Code(err) == codes.Canceled || stream.Context().Err() != nil {
				return nil
			}
			return err
		}
		resp := &extprocv3.ProcessingResponse{}
		switch req.GetRequest().(type) {
		case *extprocv3.ProcessingRequest_RequestHeaders:
			resp.Response = &extprocv3.ProcessingResponse_RequestHeaders{RequestHeaders: &extprocv3.HeadersResponse{}}
		case *extprocv3.ProcessingRequest_RequestBody:
			resp.Response = &extprocv3.ProcessingResponse_RequestBody{RequestBody: &extprocv3.BodyResponse{}}
		case *extprocv3.ProcessingRequest_RequestTrailers:
			resp.Response = &extprocv3.ProcessingResponse_RequestTrailers{RequestTrailers: &extprocv3.TrailersResponse{}}
		case *extprocv3.ProcessingRequest_ResponseHeaders:
			resp.Response = &extprocv3.ProcessingResponse_ResponseHeaders{ResponseHeaders: &extprocv3.HeadersResponse{}}
		case *extprocv3.ProcessingRequest_ResponseBody:
			resp.Response = &extprocv3.ProcessingResponse_ResponseBody{ResponseBody: &extprocv3.BodyResponse{}}
		case *extprocv3.ProcessingRequest_ResponseTrailers:
			resp.Response = &extprocv3.ProcessingResponse_ResponseTrailers{ResponseTrailers: &extprocv3.TrailersResponse{}}
		default:
			return status.Errorf(codes.InvalidArgument, "bare-floor: unexpected message %T", req.GetRequest())
		}
		if err := stream.Send(resp); err != nil {
			return nil // the caller went away
		}
	}
}
