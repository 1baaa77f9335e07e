package main

import (
	"context"
	"net"
	"os"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	"sigs.k8s.io/yaml"
)

// TestK8sArgsAreServeFlags: the Kubernetes base runs Tollgate with flags
// serve accepts, its probes point at serve's listeners (the HTTP port for
// /readyz, the gRPC port for the gRPC health service), those listeners
// accept the kubelet (which probes the pod IP) while the API stays on
// loopback, and each probe's path really answers on a running serve
// (deploy/k8s_test.go checks the rest of the manifests).
func TestK8sArgsAreServeFlags(t *testing.T) {
	raw, err := os.ReadFile("../../deploy/k8s/base/worker.yaml")
	require.NoError(t, err)
	var dep appsv1.Deployment
	require.NoError(t, yaml.UnmarshalStrict(raw, &dep))
	cs := dep.Spec.Template.Spec.InitContainers
	i := slices.IndexFunc(cs, func(c corev1.Container) bool { return c.Name == "tollgate" })
	require.NotEqual(t, -1, i)
	c := cs[i]

	cmd := serveCmd(noEnv)
	require.NoError(t, cmd.ParseFlags(c.Args))
	assert.Empty(t, cmd.Flags().Args(), "stray arguments")
	addr := func(name string) (string, int32) {
		v, err := cmd.Flags().GetString(name)
		require.NoError(t, err)
		host, port, err := net.SplitHostPort(v)
		require.NoError(t, err, "--%s=%s", name, v)
		p, err := strconv.ParseInt(port, 10, 32)
		require.NoError(t, err)
		return host, int32(p)
	}
	httpHost, httpPort := addr("http-addr")
	grpcHost, grpcPort := addr("grpc-addr")
	apiHost, _ := addr("api-addr")
	assert.True(t, net.ParseIP(httpHost).IsUnspecified(), "the kubelet probes the pod IP: --http-addr")
	assert.True(t, net.ParseIP(grpcHost).IsUnspecified(), "the kubelet probes the pod IP: --grpc-addr")
	assert.Equal(t, "127.0.0.1", apiHost, "the API stays inside the pod")

	named := map[string]int32{}
	for _, p := range c.Ports {
		named[p.Name] = p.ContainerPort
	}
	var httpPaths []string
	for name, p := range map[string]*corev1.Probe{"startup": c.StartupProbe, "readiness": c.ReadinessProbe, "liveness": c.LivenessProbe} {
		require.NotNil(t, p, "%s probe", name)
		switch {
		case p.HTTPGet != nil:
			port := p.HTTPGet.Port.IntVal
			if p.HTTPGet.Port.StrVal != "" {
				port = named[p.HTTPGet.Port.StrVal]
			}
			assert.Equal(t, httpPort, port, "%s probe: serve's --http-addr port", name)
			httpPaths = append(httpPaths, p.HTTPGet.Path)
		case p.GRPC != nil:
			assert.Equal(t, grpcPort, p.GRPC.Port, "%s probe: serve's --grpc-addr port", name)
			assert.Empty(t, p.GRPC.Service, "%s probe: the server's overall health", name)
		default:
			assert.Fail(t, "probe kind", "%s probe is neither httpGet nor grpc", name)
		}
	}
	assert.Equal(t, httpPort, named["http"])
	assert.Equal(t, grpcPort, named["grpc"])
	require.NotNil(t, c.LivenessProbe.GRPC, "liveness by the gRPC health service")

	// The paths and the health service answer on a running serve.
	grpcA, httpA := freePort(t), freePort(t)
	startRun(t, noEnv, httpA, serveArgs(grpcA, httpA)...)
	for _, path := range httpPaths {
		assert.Equal(t, 200, httpStatus("http://"+httpA+path), "GET %s", path)
	}
	conn, err := grpc.NewClient(grpcA, grpc.WithTransportCredentials(insecure.NewCredentials()))
	require.NoError(t, err)
	defer conn.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	resp, err := healthpb.NewHealthClient(conn).Check(ctx, &healthpb.HealthCheckRequest{})
	require.NoError(t, err)
	assert.Equal(t, healthpb.HealthCheckResponse_SERVING, resp.GetStatus())
	assert.True(t, strings.HasPrefix(c.Image, "ghcr.io/tollgate/tollgate:"), c.Image)
}
