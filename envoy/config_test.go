package envoy_test

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	bootstrapv3 "github.com/envoyproxy/go-control-plane/envoy/config/bootstrap/v3"
	clusterv3 "github.com/envoyproxy/go-control-plane/envoy/config/cluster/v3"
	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	listenerv3 "github.com/envoyproxy/go-control-plane/envoy/config/listener/v3"
	routev3 "github.com/envoyproxy/go-control-plane/envoy/config/route/v3"
	extauthzv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/http/ext_authz/v3"
	extprocv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/http/ext_proc/v3"
	hcmv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/network/http_connection_manager/v3"
	tlsv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/transport_sockets/tls/v3"
	upstreamhttpv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/upstreams/http/v3"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"google.golang.org/protobuf/encoding/protojson"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/reflect/protoreflect"
	"google.golang.org/protobuf/types/descriptorpb"
	"google.golang.org/protobuf/types/known/anypb"
	"sigs.k8s.io/yaml"

	"github.com/tollgate/tollgate/policy"

	// Every typed_config type used in the configs must be linked in, or
	// protojson cannot resolve its "@type" (nothing registers them for us).
	// The ones above are imported by name; these only need registering.
	_ "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/http/ratelimit/v3"
	_ "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/http/router/v3"
	_ "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/listener/original_dst/v3"
	_ "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/listener/tls_inspector/v3"
	_ "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/network/rbac/v3"
	_ "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/network/tcp_proxy/v3"
)

const (
	sidecarPath   = "sidecar.yaml"
	rateLimitPath = "ratelimit.yaml"

	extAuthzFilter = "envoy.filters.http.ext_authz"
	extProcFilter  = "envoy.filters.http.ext_proc"
	routerFilter   = "envoy.filters.http.router"
	hcmFilter      = "envoy.filters.network.http_connection_manager"
	tlsSocket      = "envoy.transport_sockets.tls"
	httpProtoOpts  = "envoy.extensions.upstreams.http.v3.HttpProtocolOptions"
	tollgateName   = "tollgate"

	// Envoy's own default for the ext_authz gRPC call.
	envoyDefaultExtAuthzTimeout = 200 * time.Millisecond
	// Envoy's default route timeout.
	envoyDefaultRouteTimeout = 15 * time.Second
)

// loadBootstrap decodes an Envoy YAML bootstrap the way Envoy reads it:
// YAML to JSON, then proto3 JSON into the v3 Bootstrap. Unknown fields and
// unknown enum names are errors, including inside typed_config (protojson
// resolves each "@type" and decodes the payload strictly).
func loadBootstrap(data []byte) (*bootstrapv3.Bootstrap, error) {
	js, err := yaml.YAMLToJSON(data)
	if err != nil {
		return nil, fmt.Errorf("yaml: %w", err)
	}
	var b bootstrapv3.Bootstrap
	if err := (protojson.UnmarshalOptions{DiscardUnknown: false}).Unmarshal(js, &b); err != nil {
		return nil, fmt.Errorf("protojson: %w", err)
	}
	return &b, nil
}

// checkConfig is the whole checker: decode, then validate deeply.
func checkConfig(data []byte) error {
	b, err := loadBootstrap(data)
	if err != nil {
		return err
	}
	return validateDeep(b, "bootstrap")
}

type allValidator interface{ ValidateAll() error }

// validateDeep runs msg's protoc-gen-validate rules (ValidateAll), then
// walks msg and, for every google.protobuf.Any found at any depth, decodes
// the payload and validates it the same way, recursively. The generated
// ValidateAll stops at Any fields, so without this walk nothing inside a
// typed_config (filters, transport sockets, protocol options, per-route
// configs) would be checked. The walk also rejects deprecated fields and
// enum values: Envoy only warns about most of them, then drops them in a
// later release. All errors are returned, each prefixed with the path of
// the offending message or field.
func validateDeep(msg proto.Message, path string) error {
	var errs []error
	if v, ok := msg.(allValidator); ok {
		if err := v.ValidateAll(); err != nil {
			errs = append(errs, fmt.Errorf("%s: %w", path, err))
		}
	}
	errs = append(errs, walkFields(msg.ProtoReflect(), path)...)
	return errors.Join(errs...)
}

// walkFields descends into every set message-typed field of m: singular
// fields, list elements and map values.
func walkFields(m protoreflect.Message, path string) []error {
	var errs []error
	m.Range(func(fd protoreflect.FieldDescriptor, v protoreflect.Value) bool {
		p := path + "." + string(fd.Name())
		if err := deprecation(fd, v); err != nil {
			errs = append(errs, fmt.Errorf("%s: %w", p, err))
		}
		switch {
		case fd.IsMap():
			if fd.MapValue().Message() == nil {
				return true
			}
			mp := v.Map()
			keys := make([]protoreflect.MapKey, 0, mp.Len())
			mp.Range(func(k protoreflect.MapKey, _ protoreflect.Value) bool {
				keys = append(keys, k)
				return true
			})
			// Deterministic error order.
			slices.SortFunc(keys, func(a, b protoreflect.MapKey) int {
				return strings.Compare(a.String(), b.String())
			})
			for _, k := range keys {
				errs = append(errs, visit(mp.Get(k).Message(), fmt.Sprintf("%s[%q]", p, k.String()))...)
			}
		case fd.IsList():
			if fd.Message() == nil {
				return true
			}
			l := v.List()
			for i := range l.Len() {
				errs = append(errs, visit(l.Get(i).Message(), fmt.Sprintf("%s[%d]", p, i))...)
			}
		case fd.Message() != nil:
			errs = append(errs, visit(v.Message(), p)...)
		}
		return true
	})
	return errs
}

// deprecation reports a set field, or an enum value, marked deprecated in
// Envoy's API.
func deprecation(fd protoreflect.FieldDescriptor, v protoreflect.Value) error {
	if opts, ok := fd.Options().(*descriptorpb.FieldOptions); ok && opts.GetDeprecated() {
		return errors.New("field is deprecated")
	}
	if fd.Kind() != protoreflect.EnumKind || fd.IsMap() {
		return nil
	}
	nums := []protoreflect.EnumNumber{}
	if fd.IsList() {
		for i := range v.List().Len() {
			nums = append(nums, v.List().Get(i).Enum())
		}
	} else {
		nums = append(nums, v.Enum())
	}
	for _, n := range nums {
		ev := fd.Enum().Values().ByNumber(n)
		if ev == nil {
			continue // undefined values are ValidateAll's business
		}
		if opts, ok := ev.Options().(*descriptorpb.EnumValueOptions); ok && opts.GetDeprecated() {
			return fmt.Errorf("enum value %s is deprecated", ev.Name())
		}
	}
	return nil
}

// visit handles one message value: an Any is unpacked and validated as a
// fresh root; anything else is walked for nested Anys (its own rules were
// already checked by the enclosing ValidateAll).
func visit(m protoreflect.Message, path string) []error {
	if m.Descriptor().FullName() != "google.protobuf.Any" {
		return walkFields(m, path)
	}
	a, ok := m.Interface().(*anypb.Any)
	if !ok {
		return []error{fmt.Errorf("%s: Any of unexpected Go type %T", path, m.Interface())}
	}
	inner, err := a.UnmarshalNew()
	if err != nil {
		return []error{fmt.Errorf("%s (%s): %w", path, a.GetTypeUrl(), err)}
	}
	p := fmt.Sprintf("%s<%s>", path, inner.ProtoReflect().Descriptor().FullName())
	if err := validateDeep(inner, p); err != nil {
		return []error{err}
	}
	return nil
}

func readFile(t *testing.T, path string) []byte {
	t.Helper()
	data, err := os.ReadFile(path)
	require.NoError(t, err)
	return data
}

func TestConfigsValid(t *testing.T) {
	paths, err := filepath.Glob("*.yaml")
	require.NoError(t, err)
	require.Contains(t, paths, sidecarPath, "the glob must at least find the shipped sidecar")
	require.Contains(t, paths, rateLimitPath, "and the rate limit example")

	for _, path := range paths {
		t.Run(path, func(t *testing.T) {
			require.NoError(t, checkConfig(readFile(t, path)))
		})
	}
}

// TestCheckerCatchesBrokenConfigs breaks sidecar.yaml in memory, one fault
// at a time, and requires the checker to reject each. Most faults sit
// inside a typed_config, where the generated top-level ValidateAll does
// not look; shallowMisses records the ones that prove the deep walk is
// needed (decoding succeeds and the top-level ValidateAll passes).
func TestCheckerCatchesBrokenConfigs(t *testing.T) {
	sidecar := string(readFile(t, sidecarPath))

	tests := map[string]struct {
		old, new      string
		wantErr       string // substring of the error
		shallowMisses bool
	}{
		"zero max_request_bytes in ext_authz": {
			old: "max_request_bytes: 262144", new: "max_request_bytes: 0",
			wantErr: "MaxRequestBytes", shallowMisses: true,
		},
		"empty stat_prefix in http_connection_manager": {
			old: "stat_prefix: openai", new: `stat_prefix: ""`,
			wantErr: "StatPrefix", shallowMisses: true,
		},
		"empty ext_authz gRPC cluster": {
			old: "envoy_grpc: { cluster_name: tollgate }", new: `envoy_grpc: { cluster_name: "" }`,
			wantErr: "ClusterName", shallowMisses: true,
		},
		"unspecified SAN type in upstream TLS": {
			old: "san_type: DNS", new: "san_type: SAN_TYPE_UNSPECIFIED",
			wantErr: "SanType", shallowMisses: true,
		},
		"misspelt field in ext_authz": {
			old: "failure_mode_allow:", new: "failur_mode_allow:",
			wantErr: "failur_mode_allow",
		},
		"unknown enum value in ext_authz": {
			old: "transport_api_version: V3", new: "transport_api_version: V4",
			wantErr: "V4",
		},
		"deprecated enum value in ext_authz": {
			old: "transport_api_version: V3", new: "transport_api_version: V2",
			wantErr: "enum value V2 is deprecated", shallowMisses: true,
		},
		"unregistered typed_config type": {
			old: "envoy.extensions.filters.http.router.v3.Router", new: "envoy.extensions.filters.http.router.v3.Rooter",
			wantErr: "Rooter",
		},
		"deprecated field inside upstream TLS": {
			old:     "match_typed_subject_alt_names:\n            - san_type: DNS\n              matcher: { exact: api.openai.com }",
			new:     "match_subject_alt_names:\n            - { exact: api.openai.com }",
			wantErr: "match_subject_alt_names: field is deprecated", shallowMisses: true,
		},
		"deprecated field on a cluster": {
			old:     "connect_timeout: 0.25s",
			new:     "connect_timeout: 0.25s\n    max_requests_per_connection: 1000",
			wantErr: "max_requests_per_connection: field is deprecated",
		},
		"unknown body mode in ext_proc": {
			old: "response_body_mode: STREAMED", new: "response_body_mode: STREAMD",
			wantErr: "STREAMD",
		},
		"empty ext_proc gRPC cluster": {
			old:     "grpc_service:\n                envoy_grpc: { cluster_name: tollgate }\n              # The call was already admitted",
			new:     "grpc_service:\n                envoy_grpc: { cluster_name: \"\" }\n              # The call was already admitted",
			wantErr: "ClusterName", shallowMisses: true,
		},
		"listener port out of range": {
			old: "port_value: 10001", new: "port_value: 99999",
			wantErr: "PortValue",
		},
	}
	for name, tc := range tests {
		t.Run(name, func(t *testing.T) {
			require.Contains(t, sidecar, tc.old, "mutation does not apply: the config changed, update the test")
			broken := []byte(strings.ReplaceAll(sidecar, tc.old, tc.new))

			err := checkConfig(broken)
			require.Error(t, err)
			assert.Contains(t, err.Error(), tc.wantErr)

			if tc.shallowMisses {
				b, err := loadBootstrap(broken)
				require.NoError(t, err, "this fault should survive decoding")
				assert.NoError(t, b.ValidateAll(),
					"top-level ValidateAll now catches this; the case no longer shows why the deep walk exists")
			}
		})
	}
}

// sidecar decodes the shipped sidecar.yaml after checking it is valid.
func sidecar(t *testing.T) *bootstrapv3.Bootstrap {
	t.Helper()
	data := readFile(t, sidecarPath)
	require.NoError(t, checkConfig(data))
	b, err := loadBootstrap(data)
	require.NoError(t, err)
	return b
}

func unpack[T proto.Message](t *testing.T, a *anypb.Any, into T) T {
	t.Helper()
	require.NotNil(t, a, "missing typed_config")
	require.NoError(t, a.UnmarshalTo(into))
	return into
}

func connectionManager(t *testing.T, l *listenerv3.Listener) *hcmv3.HttpConnectionManager {
	t.Helper()
	require.Len(t, l.GetFilterChains(), 1, "listener %s", l.GetName())
	for _, f := range l.GetFilterChains()[0].GetFilters() {
		if f.GetName() == hcmFilter {
			return unpack(t, f.GetTypedConfig(), &hcmv3.HttpConnectionManager{})
		}
	}
	require.FailNow(t, "no http_connection_manager", "listener %s", l.GetName())
	return nil
}

func extAuthz(t *testing.T, hcm *hcmv3.HttpConnectionManager) *extauthzv3.ExtAuthz {
	t.Helper()
	for _, f := range hcm.GetHttpFilters() {
		if f.GetName() == extAuthzFilter {
			return unpack(t, f.GetTypedConfig(), &extauthzv3.ExtAuthz{})
		}
	}
	require.FailNow(t, "no ext_authz filter", "in %s", hcm.GetStatPrefix())
	return nil
}

func socketAddress(t *testing.T, c *clusterv3.Cluster) *corev3.SocketAddress {
	t.Helper()
	eps := c.GetLoadAssignment().GetEndpoints()
	require.Len(t, eps, 1, "cluster %s", c.GetName())
	lbs := eps[0].GetLbEndpoints()
	require.Len(t, lbs, 1, "cluster %s", c.GetName())
	sa := lbs[0].GetEndpoint().GetAddress().GetSocketAddress()
	require.NotNil(t, sa, "cluster %s", c.GetName())
	return sa
}

func clustersByName(t *testing.T, b *bootstrapv3.Bootstrap) map[string]*clusterv3.Cluster {
	t.Helper()
	out := map[string]*clusterv3.Cluster{}
	for _, c := range b.GetStaticResources().GetClusters() {
		require.NotContains(t, out, c.GetName(), "duplicate cluster")
		out[c.GetName()] = c
	}
	return out
}

func TestSidecarAdminIsLoopbackOnly(t *testing.T) {
	addr := sidecar(t).GetAdmin().GetAddress().GetSocketAddress()
	require.NotNil(t, addr)
	assert.Equal(t, "127.0.0.1", addr.GetAddress(), "the admin API can shut Envoy down; keep it off the network")
}

// TestSidecarListenersAreLoopbackOnly: bound to 0.0.0.0, the listeners
// would let any pod that can reach this one send calls on its budget and
// its credentials (an open egress proxy).
// TestSidecarNormalizesPaths: every listener normalizes paths, merges
// slashes and refuses escaped slashes, so that no spelling of a metered
// path dodges its route (issue 11).
func TestSidecarNormalizesPaths(t *testing.T) {
	for _, l := range sidecar(t).GetStaticResources().GetListeners() {
		hcm := connectionManager(t, l)
		assert.True(t, hcm.GetNormalizePath().GetValue(), "listener %s: normalize_path", l.GetName())
		assert.True(t, hcm.GetMergeSlashes(), "listener %s: merge_slashes", l.GetName())
		assert.Equal(t, hcmv3.HttpConnectionManager_REJECT_REQUEST, hcm.GetPathWithEscapedSlashesAction(), "listener %s: escaped slashes", l.GetName())
	}
}

func TestSidecarListenersAreLoopbackOnly(t *testing.T) {
	for _, l := range sidecar(t).GetStaticResources().GetListeners() {
		assert.Equal(t, "127.0.0.1", l.GetAddress().GetSocketAddress().GetAddress(), "listener %s", l.GetName())
	}
}

func TestSidecarExtAuthzFilter(t *testing.T) {
	b := sidecar(t)
	listeners := b.GetStaticResources().GetListeners()
	require.NotEmpty(t, listeners)

	for _, l := range listeners {
		t.Run(l.GetName(), func(t *testing.T) {
			hcm := connectionManager(t, l)
			names := make([]string, 0, len(hcm.GetHttpFilters()))
			for _, f := range hcm.GetHttpFilters() {
				names = append(names, f.GetName())
			}
			authz := slices.Index(names, extAuthzFilter)
			router := slices.Index(names, routerFilter)
			require.NotEqual(t, -1, authz, "no ext_authz filter: calls would go out unchecked")
			require.NotEqual(t, -1, router, "no router filter")
			assert.Less(t, authz, router, "ext_authz must run before the router")
			assert.Equal(t, len(names)-1, router, "the router must be the last filter")

			cfg := extAuthz(t, hcm)
			assert.Equal(t, corev3.ApiVersion_V3, cfg.GetTransportApiVersion())

			grpc := cfg.GetGrpcService()
			require.NotNil(t, grpc, "ext_authz must call Tollgate over gRPC")
			assert.Equal(t, tollgateName, grpc.GetEnvoyGrpc().GetClusterName())
			require.NotNil(t, grpc.GetTimeout(), "without a timeout Envoy uses its 200 ms default")
			assert.Greater(t, grpc.GetTimeout().AsDuration(), envoyDefaultExtAuthzTimeout)
			longest := policy.Default().Queue.LongestWait()
			assert.Greater(t, grpc.GetTimeout().AsDuration(), longest,
				"Envoy must wait longer than the bundled policy may hold a call (%v)", longest)
			require.NotNil(t, hcm.GetStreamIdleTimeout(), "Envoy's 5 min idle default would cut a held call")
			assert.Greater(t, hcm.GetStreamIdleTimeout().AsDuration(), grpc.GetTimeout().AsDuration(),
				"a held call sends nothing: the stream must not be idle-timed-out first")

			assert.False(t, cfg.GetFailureModeAllow(), "fail closed: an unreachable Tollgate must not mean unmetered calls")
			assert.Equal(t, 503, int(cfg.GetStatusOnError().GetCode()))

			body := cfg.GetWithRequestBody()
			require.NotNil(t, body, "Tollgate needs the request body")
			assert.Positive(t, body.GetMaxRequestBytes())
			assert.True(t, body.GetPackAsBytes())
			assert.True(t, body.GetAllowPartialMessage(), "oversized bodies must still be checked, not rejected with 413")

			assert.False(t, cfg.GetClearRouteCache())
		})
	}
}

func extProc(t *testing.T, hcm *hcmv3.HttpConnectionManager) *extprocv3.ExternalProcessor {
	t.Helper()
	for _, f := range hcm.GetHttpFilters() {
		if f.GetName() == extProcFilter {
			return unpack(t, f.GetTypedConfig(), &extprocv3.ExternalProcessor{})
		}
	}
	require.FailNow(t, "no ext_proc filter", "in %s", hcm.GetStatPrefix())
	return nil
}

// TestSidecarExtProcFilter: every listener settles its calls through
// Tollgate's ext_proc, after ext_authz and before the router, failing open
// (the call was admitted), streaming responses, and never sending
// credentials.
func TestSidecarExtProcFilter(t *testing.T) {
	for _, l := range sidecar(t).GetStaticResources().GetListeners() {
		t.Run(l.GetName(), func(t *testing.T) {
			hcm := connectionManager(t, l)
			var names []string
			for _, f := range hcm.GetHttpFilters() {
				names = append(names, f.GetName())
			}
			assert.Equal(t, []string{extAuthzFilter, extProcFilter, routerFilter}, names,
				"ext_authz admits, ext_proc sees the reservation ext_authz added, the router sends")

			cfg := extProc(t, hcm)
			assert.Equal(t, tollgateName, cfg.GetGrpcService().GetEnvoyGrpc().GetClusterName())
			assert.True(t, cfg.GetFailureModeAllow(), "an admitted call must not fail because it cannot be settled")
			assert.True(t, cfg.GetAllowModeOverride(), "Tollgate skips what it does not need, call by call")
			require.NotNil(t, cfg.GetMessageTimeout())

			m := cfg.GetProcessingMode()
			assert.Equal(t, extprocv3.ProcessingMode_SEND, m.GetRequestHeaderMode(), "the reservation id is in the request headers")
			assert.Equal(t, extprocv3.ProcessingMode_BUFFERED_PARTIAL, m.GetRequestBodyMode(), "a whole body to rewrite, a large one never refused")
			assert.Equal(t, extprocv3.ProcessingMode_SEND, m.GetResponseHeaderMode())
			assert.Equal(t, extprocv3.ProcessingMode_STREAMED, m.GetResponseBodyMode(), "BUFFERED would hold back a streamed reply")

			var dropped []string
			for _, p := range cfg.GetForwardRules().GetDisallowedHeaders().GetPatterns() {
				assert.True(t, p.GetIgnoreCase())
				dropped = append(dropped, p.GetExact())
			}
			assert.Subset(t, dropped, []string{"authorization", "x-api-key"}, "credentials never go to Tollgate")
		})
	}
}

func TestSidecarTollgateCluster(t *testing.T) {
	b := sidecar(t)
	c, ok := clustersByName(t, b)[tollgateName]
	require.True(t, ok, "no %q cluster", tollgateName)

	assert.Equal(t, clusterv3.Cluster_STATIC, c.GetType())
	sa := socketAddress(t, c)
	assert.Equal(t, "127.0.0.1", sa.GetAddress())
	assert.EqualValues(t, 8081, sa.GetPortValue())

	opts := unpack(t, c.GetTypedExtensionProtocolOptions()[httpProtoOpts], &upstreamhttpv3.HttpProtocolOptions{})
	assert.NotNil(t, opts.GetExplicitHttpConfig().GetHttp2ProtocolOptions(), "gRPC needs HTTP/2 to Tollgate")

	t.Run("circuit breakers hold a full queue and the open streams", func(t *testing.T) {
		// Each held call is an open ext_authz request; each admitted call
		// in flight keeps an ext_proc stream open. Envoy's defaults (1,024)
		// would refuse them with 503 long before the queue is full.
		queued := 0
		for _, cls := range policy.Default().Queue.Classes {
			queued += cls.MaxDepth
		}
		const openStreams = 10_000 // ext_proc streams and unheld checks in flight
		var th *clusterv3.CircuitBreakers_Thresholds
		for _, x := range c.GetCircuitBreakers().GetThresholds() {
			if x.GetPriority() == corev3.RoutingPriority_DEFAULT {
				th = x
			}
		}
		require.NotNil(t, th, "the tollgate cluster sets circuit breakers for DEFAULT priority")
		for name, v := range map[string]uint32{
			"max_requests":         th.GetMaxRequests().GetValue(),
			"max_pending_requests": th.GetMaxPendingRequests().GetValue(),
		} {
			assert.Greater(t, int(v), queued+openStreams, "%s: the bundled queue holds %d calls", name, queued)
		}
		assert.GreaterOrEqual(t, th.GetMaxConnections().GetValue(), uint32(1), "max_connections is set")
	})

	require.NotNil(t, c.GetConnectTimeout())
	for _, l := range b.GetStaticResources().GetListeners() {
		authz := extAuthz(t, connectionManager(t, l))
		assert.Less(t, c.GetConnectTimeout().AsDuration(), authz.GetGrpcService().GetTimeout().AsDuration(),
			"listener %s: connecting to Tollgate must leave room inside the ext_authz timeout", l.GetName())
	}
}

func TestSidecarProviderClusters(t *testing.T) {
	clusters := clustersByName(t, sidecar(t))
	require.Greater(t, len(clusters), 1, "no provider clusters")

	for name, c := range clusters {
		if name == tollgateName {
			continue
		}
		t.Run(name, func(t *testing.T) {
			assert.Equal(t, clusterv3.Cluster_LOGICAL_DNS, c.GetType())
			assert.Equal(t, clusterv3.Cluster_V4_ONLY, c.GetDnsLookupFamily())

			sa := socketAddress(t, c)
			host := sa.GetAddress()
			assert.EqualValues(t, 443, sa.GetPortValue())

			ts := c.GetTransportSocket()
			require.NotNil(t, ts, "provider traffic must be TLS")
			assert.Equal(t, tlsSocket, ts.GetName())
			tls := unpack(t, ts.GetTypedConfig(), &tlsv3.UpstreamTlsContext{})
			assert.Equal(t, host, tls.GetSni())

			vc := tls.GetCommonTlsContext().GetValidationContext()
			require.NotNil(t, vc, "without a validation_context Envoy accepts any certificate")
			assert.NotEmpty(t, vc.GetTrustedCa().GetFilename())
			sans := vc.GetMatchTypedSubjectAltNames()
			require.Len(t, sans, 1)
			assert.Equal(t, tlsv3.SubjectAltNameMatcher_DNS, sans[0].GetSanType())
			assert.Equal(t, host, sans[0].GetMatcher().GetExact())
		})
	}
}

func TestSidecarRoutes(t *testing.T) {
	b := sidecar(t)
	clusters := clustersByName(t, b)

	for _, l := range b.GetStaticResources().GetListeners() {
		hcm := connectionManager(t, l)
		assert.NotEmpty(t, hcm.GetStatPrefix())
		for _, vh := range hcm.GetRouteConfig().GetVirtualHosts() {
			require.NotEmpty(t, vh.GetRoutes())
			for i, r := range vh.GetRoutes() {
				t.Run(fmt.Sprintf("%s/%s/%d", l.GetName(), vh.GetName(), i), func(t *testing.T) {
					checkRoute(t, r, clusters)
				})
			}
		}
	}
}

func checkRoute(t *testing.T, r *routev3.Route, clusters map[string]*clusterv3.Cluster) {
	action := r.GetRoute()
	require.NotNil(t, action, "route must forward")
	host := action.GetHostRewriteLiteral()
	require.NotEmpty(t, host, "the provider needs its own name, not 127.0.0.1:1000x")

	c, ok := clusters[action.GetCluster()]
	require.True(t, ok, "route to unknown cluster %q", action.GetCluster())
	require.NotEqual(t, tollgateName, action.GetCluster())
	assert.Equal(t, host, socketAddress(t, c).GetAddress(), "host rewrite and cluster disagree")

	require.NotNil(t, action.GetTimeout(), "route timeout left at Envoy's 15 s default")
	assert.Greater(t, action.GetTimeout().AsDuration(), envoyDefaultRouteTimeout)

	assert.Subset(t, r.GetRequestHeadersToRemove(), []string{"x-tollgate-client", "x-tollgate-priority", "x-tollgate-reservation", "x-tollgate-route"},
		"Tollgate's headers must not reach the provider")

	per := unpack(t, r.GetTypedPerFilterConfig()[extAuthzFilter], &extauthzv3.ExtAuthzPerRoute{})
	assert.Equal(t, host, per.GetCheckSettings().GetContextExtensions()["upstream_host"],
		"Tollgate matches on upstream_host; it must name the host the call goes to")
}

// TestSidecarsServeEveryRoutedHost: sidecar.yaml and sidecar-http.yaml
// have a listener for every host the bundled policy routes (a routed host
// without one cannot be called through Envoy at all), and the same
// listeners on the same ports, so that a worker's base URLs hold for
// either.
func TestSidecarsServeEveryRoutedHost(t *testing.T) {
	ports := map[string]map[string]uint32{}
	for file, b := range map[string]*bootstrapv3.Bootstrap{sidecarPath: sidecar(t), sidecarHTTPPath: sidecarHTTP(t)} {
		ports[file] = map[string]uint32{}
		var hosts []string
		for _, l := range b.GetStaticResources().GetListeners() {
			ports[file][l.GetName()] = l.GetAddress().GetSocketAddress().GetPortValue()
			vhs := connectionManager(t, l).GetRouteConfig().GetVirtualHosts()
			require.Len(t, vhs, 1, "%s: listener %s", file, l.GetName())
			require.Len(t, vhs[0].GetRoutes(), 1, "%s: listener %s", file, l.GetName())
			hosts = append(hosts, vhs[0].GetRoutes()[0].GetRoute().GetHostRewriteLiteral())
		}
		assert.ElementsMatch(t, routed(), hosts, "%s: one listener per host the bundled policy routes", file)
	}
	assert.Equal(t, ports[sidecarPath], ports[sidecarHTTPPath], "the same listeners on the same ports")
}
