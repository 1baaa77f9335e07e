package envoy_test

import (
	"strings"
	"testing"

	bootstrapv3 "github.com/envoyproxy/go-control-plane/envoy/config/bootstrap/v3"
	clusterv3 "github.com/envoyproxy/go-control-plane/envoy/config/cluster/v3"
	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	upstreamhttpv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/upstreams/http/v3"
	matcherv3 "github.com/envoyproxy/go-control-plane/envoy/type/matcher/v3"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"google.golang.org/protobuf/proto"

	"github.com/tollgate/tollgate/authz"
	"github.com/tollgate/tollgate/policy"
)

const (
	sidecarHTTPPath = "sidecar-http.yaml"
	tollgateHTTP    = "tollgate_http"
)

// sidecarHTTP decodes the shipped sidecar-http.yaml after checking it is
// valid, as sidecar does sidecar.yaml.
func sidecarHTTP(t *testing.T) *bootstrapv3.Bootstrap {
	t.Helper()
	data := readFile(t, sidecarHTTPPath)
	require.NoError(t, checkConfig(data))
	b, err := loadBootstrap(data)
	require.NoError(t, err)
	return b
}

func exactNames(t *testing.T, l *matcherv3.ListStringMatcher) []string {
	t.Helper()
	var out []string
	for _, p := range l.GetPatterns() {
		require.NotEmpty(t, p.GetExact(), "only exact names: %v", p)
		out = append(out, p.GetExact())
	}
	return out
}

// TestSidecarHTTPExtAuthz: every listener checks its calls over ext_authz's
// HTTP form, with what authz's HTTP listener expects: the path prefix, the
// upstream host and content-length headers, the headers it decides on, the
// three response lists it renders for, and sidecar.yaml's timeouts, fail
// closed and credentials kept away.
func TestSidecarHTTPExtAuthz(t *testing.T) {
	b := sidecarHTTP(t)
	clusters := clustersByName(t, b)
	listeners := b.GetStaticResources().GetListeners()
	require.Len(t, listeners, len(sidecar(t).GetStaticResources().GetListeners()), "one listener per provider, as sidecar.yaml")

	for _, l := range listeners {
		t.Run(l.GetName(), func(t *testing.T) {
			hcm := connectionManager(t, l)
			assert.True(t, hcm.GetNormalizePath().GetValue())
			assert.True(t, hcm.GetMergeSlashes())
			var names []string
			for _, f := range hcm.GetHttpFilters() {
				names = append(names, f.GetName())
			}
			require.Equal(t, []string{extAuthzFilter, extProcFilter, routerFilter}, names)

			cfg := extAuthz(t, hcm)
			assert.Nil(t, cfg.GetGrpcService())
			hs := cfg.GetHttpService()
			require.NotNil(t, hs, "ext_authz must call Tollgate over HTTP")
			assert.Equal(t, authz.HTTPCheckPathPrefix, hs.GetPathPrefix())
			uri := hs.GetServerUri()
			assert.Equal(t, tollgateHTTP, uri.GetCluster())
			assert.True(t, strings.HasPrefix(uri.GetUri(), "http://127.0.0.1:"))
			timeout := uri.GetTimeout().AsDuration()
			assert.Greater(t, timeout, envoyDefaultExtAuthzTimeout)
			assert.Greater(t, timeout, policy.Default().Queue.LongestWait(), "Envoy must wait longer than the bundled policy may hold a call")
			assert.Greater(t, hcm.GetStreamIdleTimeout().AsDuration(), timeout)
			assert.Less(t, clusters[tollgateHTTP].GetConnectTimeout().AsDuration(), timeout)

			// The upstream host: the route's, in the header Tollgate reads.
			routes := hcm.GetRouteConfig().GetVirtualHosts()
			require.Len(t, routes, 1)
			require.Len(t, routes[0].GetRoutes(), 1)
			route := routes[0].GetRoutes()[0]
			host := route.GetRoute().GetHostRewriteLiteral()
			added := map[string]string{}
			for _, h := range hs.GetAuthorizationRequest().GetHeadersToAdd() {
				added[h.GetKey()] = h.GetValue()
			}
			assert.Equal(t, map[string]string{authz.HeaderUpstreamHost: host, authz.HeaderContentLength: "%REQ(content-length)%"}, added)
			assert.Equal(t, host, socketAddress(t, clusters[route.GetRoute().GetCluster()]).GetAddress())
			assert.Subset(t, route.GetRequestHeadersToRemove(), []string{"x-tollgate-client", "x-tollgate-priority", "x-tollgate-reservation",
				"x-tollgate-route", authz.HeaderUpstreamHost, authz.HeaderContentLength}, "Tollgate's headers never reach the provider")

			allowed := map[string]bool{}
			for _, p := range cfg.GetAllowedHeaders().GetPatterns() {
				allowed[strings.ToLower(p.GetExact())] = true
			}
			for _, h := range []string{"content-type", "x-request-id", "x-tollgate-client", policy.Default().Queue.PriorityHeader, "x-tollgate-optimize"} {
				assert.True(t, allowed[h], "Tollgate decides on %s", h)
			}
			var dropped []string
			for _, p := range cfg.GetDisallowedHeaders().GetPatterns() {
				assert.True(t, p.GetIgnoreCase())
				dropped = append(dropped, p.GetExact())
			}
			assert.Subset(t, dropped, []string{"authorization", "x-api-key"}, "credentials never go to Tollgate")
			for _, c := range dropped {
				assert.False(t, allowed[c], "%s both allowed and disallowed", c)
			}

			resp := hs.GetAuthorizationResponse()
			assert.ElementsMatch(t, authz.HTTPUpstreamHeaders(), exactNames(t, resp.GetAllowedUpstreamHeaders()))
			assert.ElementsMatch(t, authz.HTTPClientHeadersOnSuccess(), exactNames(t, resp.GetAllowedClientHeadersOnSuccess()))
			assert.ElementsMatch(t, authz.HTTPClientHeaders(), exactNames(t, resp.GetAllowedClientHeaders()))

			assert.False(t, cfg.GetFailureModeAllow(), "fail closed")
			assert.Equal(t, 503, int(cfg.GetStatusOnError().GetCode()))
			body := cfg.GetWithRequestBody()
			require.NotNil(t, body, "Tollgate needs the request body")
			assert.Positive(t, body.GetMaxRequestBytes())
			assert.True(t, body.GetAllowPartialMessage())
			assert.False(t, cfg.GetClearRouteCache())
		})
	}
}

// TestSidecarHTTPKeepsExtProcAndProviders: settling and the providers are
// sidecar.yaml's, unchanged: the same ext_proc filter, the same provider
// and tollgate clusters.
func TestSidecarHTTPKeepsExtProcAndProviders(t *testing.T) {
	grpcB, httpB := sidecar(t), sidecarHTTP(t)
	want := extProc(t, connectionManager(t, grpcB.GetStaticResources().GetListeners()[0]))
	for _, l := range httpB.GetStaticResources().GetListeners() {
		assert.True(t, proto.Equal(want, extProc(t, connectionManager(t, l))), "listener %s: ext_proc as in sidecar.yaml", l.GetName())
	}
	grpcClusters, httpClusters := clustersByName(t, grpcB), clustersByName(t, httpB)
	for name, c := range grpcClusters {
		assert.True(t, proto.Equal(c, httpClusters[name]), "cluster %s as in sidecar.yaml", name)
	}

	c, ok := httpClusters[tollgateHTTP]
	require.True(t, ok)
	assert.Equal(t, clusterv3.Cluster_STATIC, c.GetType())
	sa := socketAddress(t, c)
	assert.Equal(t, "127.0.0.1", sa.GetAddress())
	assert.EqualValues(t, 8083, sa.GetPortValue())
	opts := unpack(t, c.GetTypedExtensionProtocolOptions()[httpProtoOpts], &upstreamhttpv3.HttpProtocolOptions{})
	assert.NotNil(t, opts.GetExplicitHttpConfig().GetHttp2ProtocolOptions(), "h2c: held checks share connections")
	var th *clusterv3.CircuitBreakers_Thresholds
	for _, x := range c.GetCircuitBreakers().GetThresholds() {
		if x.GetPriority() == corev3.RoutingPriority_DEFAULT {
			th = x
		}
	}
	require.NotNil(t, th)
	assert.True(t, proto.Equal(th, grpcClusters[tollgateName].GetCircuitBreakers().GetThresholds()[0]),
		"each held call is an open check, as over gRPC")
	assert.Equal(t, "127.0.0.1", httpB.GetAdmin().GetAddress().GetSocketAddress().GetAddress())
	for _, l := range httpB.GetStaticResources().GetListeners() {
		assert.Equal(t, "127.0.0.1", l.GetAddress().GetSocketAddress().GetAddress(), "listener %s", l.GetName())
	}
}

// TestCheckerCatchesBrokenHTTPConfigs: the faults peculiar to the HTTP
// form are caught inside its typed_config.
func TestCheckerCatchesBrokenHTTPConfigs(t *testing.T) {
	src := string(readFile(t, sidecarHTTPPath))
	tests := map[string]struct{ old, new, wantErr string }{
		"no server_uri timeout":                   {old: "timeout: 310s\n", new: "\n", wantErr: "Timeout"},
		"empty server_uri cluster":                {old: "cluster: tollgate_http\n", new: "cluster: \"\"\n", wantErr: "Cluster"},
		"unknown field in authorization_response": {old: "allowed_client_headers_on_success:", new: "allowed_client_headers_on_succes:", wantErr: "allowed_client_headers_on_succes"},
		"deprecated allowed_headers on authorization_request": {
			old:     "authorization_request:\n                  headers_to_add:",
			new:     "authorization_request:\n                  allowed_headers: { patterns: [{ exact: x-request-id }] }\n                  headers_to_add:",
			wantErr: "field is deprecated",
		},
	}
	for name, tc := range tests {
		t.Run(name, func(t *testing.T) {
			require.Contains(t, src, tc.old, "mutation does not apply: the config changed, update the test")
			err := checkConfig([]byte(strings.Replace(src, tc.old, tc.new, 1)))
			require.Error(t, err)
			assert.Contains(t, err.Error(), tc.wantErr)
		})
	}
}
