package envoy_test

import (
	"strings"
	"testing"

	bootstrapv3 "github.com/envoyproxy/go-control-plane/envoy/config/bootstrap/v3"
	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	routev3 "github.com/envoyproxy/go-control-plane/envoy/config/route/v3"
	ratelimitv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/http/ratelimit/v3"
	upstreamhttpv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/upstreams/http/v3"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/tollgate/tollgate/policy/rls"
)

const rateLimitFilter = "envoy.filters.http.ratelimit"

// rateLimitConfig decodes the shipped ratelimit.yaml after checking it is
// valid, deeply.
func rateLimitConfig(t *testing.T) *bootstrapv3.Bootstrap {
	t.Helper()
	data := readFile(t, rateLimitPath)
	require.NoError(t, checkConfig(data))
	b, err := loadBootstrap(data)
	require.NoError(t, err)
	return b
}

func TestRateLimitFilter(t *testing.T) {
	b := rateLimitConfig(t)
	require.Len(t, b.GetStaticResources().GetListeners(), 1)
	hcm := connectionManager(t, b.GetStaticResources().GetListeners()[0])

	var names []string
	var rl *ratelimitv3.RateLimit
	for _, f := range hcm.GetHttpFilters() {
		names = append(names, f.GetName())
		if f.GetName() == rateLimitFilter {
			rl = unpack(t, f.GetTypedConfig(), &ratelimitv3.RateLimit{})
		}
	}
	assert.Equal(t, []string{rateLimitFilter, routerFilter}, names, "the rate limit filter runs before the router")
	require.NotNil(t, rl)
	assert.Equal(t, "messaging", rl.GetDomain(), "example 2's domain")
	assert.Equal(t, corev3.ApiVersion_V3, rl.GetRateLimitService().GetTransportApiVersion(), "Tollgate serves RLS v3 only")
	assert.Equal(t, tollgateName, rl.GetRateLimitService().GetGrpcService().GetEnvoyGrpc().GetClusterName())
	assert.False(t, rl.GetFailureModeDeny())
	assert.Equal(t, ratelimitv3.RateLimit_DRAFT_VERSION_03, rl.GetEnableXRatelimitHeaders())

	c, ok := clustersByName(t, b)[tollgateName]
	require.True(t, ok, "no %q cluster", tollgateName)
	assert.EqualValues(t, 8081, socketAddress(t, c).GetPortValue(), "Tollgate's gRPC port, as in sidecar.yaml")
	opts := unpack(t, c.GetTypedExtensionProtocolOptions()[httpProtoOpts], &upstreamhttpv3.HttpProtocolOptions{})
	assert.NotNil(t, opts.GetExplicitHttpConfig().GetHttp2ProtocolOptions(), "gRPC needs HTTP/2 to Tollgate")
}

// descriptors is what Envoy sends for a route's rate_limits, for the
// actions this config uses (generic_key, request_headers), given the
// request's headers. A rate limit whose header is missing sends no
// descriptor, as Envoy does without skip_if_absent.
func descriptors(t *testing.T, r *routev3.Route, headers map[string]string) [][]rls.Entry {
	t.Helper()
	var out [][]rls.Entry
limits:
	for _, l := range r.GetRoute().GetRateLimits() {
		var d []rls.Entry
		for _, a := range l.GetActions() {
			switch {
			case a.GetGenericKey() != nil:
				k := a.GetGenericKey().GetDescriptorKey()
				if k == "" {
					k = "generic_key"
				}
				d = append(d, rls.Entry{Key: k, Value: a.GetGenericKey().GetDescriptorValue()})
			case a.GetRequestHeaders() != nil:
				v, ok := headers[a.GetRequestHeaders().GetHeaderName()]
				if !ok {
					continue limits
				}
				d = append(d, rls.Entry{Key: a.GetRequestHeaders().GetDescriptorKey(), Value: v})
			default:
				require.FailNow(t, "an action this test does not read", "%v", a)
			}
		}
		out = append(out, d)
	}
	return out
}

// TestRateLimitDescriptorsMatchExample2 plays requests through the
// routes' actions and matches the descriptors against
// testdata/rls/examples as Tollgate does.
func TestRateLimitDescriptorsMatchExample2(t *testing.T) {
	b := rateLimitConfig(t)
	hcm := connectionManager(t, b.GetStaticResources().GetListeners()[0])
	var rl *ratelimitv3.RateLimit
	for _, f := range hcm.GetHttpFilters() {
		if f.GetName() == rateLimitFilter {
			rl = unpack(t, f.GetTypedConfig(), &ratelimitv3.RateLimit{})
		}
	}
	require.NotNil(t, rl)
	conf, err := rls.Load("../testdata/rls/examples")
	require.NoError(t, err)
	routes := hcm.GetRouteConfig().GetVirtualHosts()[0].GetRoutes()
	route := func(path string) *routev3.Route { // first prefix match, as Envoy picks
		for _, r := range routes {
			if strings.HasPrefix(path, r.GetMatch().GetPrefix()) {
				return r
			}
		}
		require.FailNow(t, "no route", path)
		return nil
	}

	const to = "+15550001234"
	tests := map[string]struct {
		path    string
		headers map[string]string
		want    []uint32 // the requests_per_unit (a day) of each descriptor's rule
	}{
		"a marketing message: example 2's two rules": {path: "/v1/messages/marketing", headers: map[string]string{"x-to-number": to}, want: []uint32{5, 100}},
		"another message: the per-number rule":       {path: "/v1/messages/transactional", headers: map[string]string{"x-to-number": to}, want: []uint32{100}},
		"no number: no descriptor":                   {path: "/v1/messages/marketing", headers: map[string]string{}},
		"elsewhere: no rate limit":                   {path: "/healthz", headers: map[string]string{"x-to-number": to}},
	}
	for name, tc := range tests {
		t.Run(name, func(t *testing.T) {
			ds := descriptors(t, route(tc.path), tc.headers)
			require.Len(t, ds, len(tc.want), "%v", ds)
			for i, d := range ds {
				rule, key := conf.Match(rl.GetDomain(), d)
				require.NotNil(t, rule, "descriptor %v matches no rule", d)
				assert.Equal(t, tc.want[i], rule.RequestsPerUnit, "descriptor %v", d)
				assert.Equal(t, rls.Day, rule.Unit)
				assert.Contains(t, key, to, "a counter per number")
			}
		})
	}
}

// TestRateLimitCheckerCatchesBrokenConfigs breaks ratelimit.yaml inside
// the filter's typed_config, where only the deep walk looks.
func TestRateLimitCheckerCatchesBrokenConfigs(t *testing.T) {
	cfg := string(readFile(t, rateLimitPath))
	tests := map[string]struct {
		old, new, wantErr string
		shallowMisses     bool
	}{
		"empty domain":           {old: "domain: messaging", new: `domain: ""`, wantErr: "Domain", shallowMisses: true},
		"empty RLS cluster":      {old: "envoy_grpc: { cluster_name: tollgate }", new: `envoy_grpc: { cluster_name: "" }`, wantErr: "ClusterName", shallowMisses: true},
		"no rate limit service":  {old: "rate_limit_service:", new: "rate_limit_servic:", wantErr: "rate_limit_servic"},
		"deprecated API version": {old: "transport_api_version: V3", new: "transport_api_version: V2", wantErr: "enum value V2 is deprecated", shallowMisses: true},
		"unknown header mode":    {old: "DRAFT_VERSION_03", new: "DRAFT_VERSION_04", wantErr: "DRAFT_VERSION_04"},
	}
	for name, tc := range tests {
		t.Run(name, func(t *testing.T) {
			require.Contains(t, cfg, tc.old, "mutation does not apply: the config changed, update the test")
			broken := []byte(strings.ReplaceAll(cfg, tc.old, tc.new))
			err := checkConfig(broken)
			require.Error(t, err)
			assert.Contains(t, err.Error(), tc.wantErr)
			if tc.shallowMisses {
				b, err := loadBootstrap(broken)
				require.NoError(t, err, "this fault should survive decoding")
				assert.NoError(t, b.ValidateAll(), "top-level ValidateAll now catches this")
			}
		})
	}
}
