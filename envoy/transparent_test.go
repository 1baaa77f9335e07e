package envoy_test

import (
	"crypto/x509"
	"encoding/pem"
	"os"
	"path"
	"path/filepath"
	"slices"
	"testing"
	"time"

	bootstrapv3 "github.com/envoyproxy/go-control-plane/envoy/config/bootstrap/v3"
	clusterv3 "github.com/envoyproxy/go-control-plane/envoy/config/cluster/v3"
	listenerv3 "github.com/envoyproxy/go-control-plane/envoy/config/listener/v3"
	rbacconfigv3 "github.com/envoyproxy/go-control-plane/envoy/config/rbac/v3"
	extauthzv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/http/ext_authz/v3"
	hcmv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/network/http_connection_manager/v3"
	rbacv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/network/rbac/v3"
	tcpproxyv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/network/tcp_proxy/v3"
	tlsv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/transport_sockets/tls/v3"
	discoveryv3 "github.com/envoyproxy/go-control-plane/envoy/service/discovery/v3"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"google.golang.org/protobuf/encoding/protojson"
	"google.golang.org/protobuf/proto"

	"github.com/tollgate/tollgate/authz"
	"github.com/tollgate/tollgate/internal/pki"
	"github.com/tollgate/tollgate/internal/redirect"
	"github.com/tollgate/tollgate/policy"
)

const (
	transparentPath = "sidecar-transparent.yaml"
	sdsDirInEnvoy   = "/etc/tollgate/sds"
	passthrough     = "passthrough"
)

func transparent(t *testing.T) *bootstrapv3.Bootstrap {
	t.Helper()
	data := readFile(t, transparentPath)
	require.NoError(t, checkConfig(data))
	b, err := loadBootstrap(data)
	require.NoError(t, err)
	return b
}

// routed are the host names the bundled policy routes: those the CA
// issues leaves for.
func routed() []string {
	var out []string
	for _, r := range policy.Default().Routes {
		if r.Host != "" && !slices.Contains(out, r.Host) {
			out = append(out, r.Host)
		}
	}
	return out
}

const loopbackChain = "loopback"

// providerChains are the listener's chains that terminate a provider's
// TLS: all but the loopback guard.
func providerChains(t *testing.T, l *listenerv3.Listener) []*listenerv3.FilterChain {
	t.Helper()
	var out []*listenerv3.FilterChain
	for _, fc := range l.GetFilterChains() {
		if fc.GetName() != loopbackChain {
			out = append(out, fc)
		}
	}
	require.NotEmpty(t, out)
	return out
}

func chainHCM(t *testing.T, fc *listenerv3.FilterChain) *hcmv3.HttpConnectionManager {
	t.Helper()
	require.Len(t, fc.GetFilters(), 1, "chain %s", fc.GetName())
	require.Equal(t, hcmFilter, fc.GetFilters()[0].GetName())
	return unpack(t, fc.GetFilters()[0].GetTypedConfig(), &hcmv3.HttpConnectionManager{})
}

// TestTransparentListener: one listener on the port the redirect rules
// send to, reading the original destination and the SNI; a chain per
// provider the shipped sidecar.yaml serves, each terminating TLS for one
// routed host with that host's leaf from the SDS file internal/pki writes,
// with sidecar.yaml's filters, a route to that provider's cluster (as
// sidecar.yaml's: verified TLS to the real provider), the host pinned, and
// the client pinned by the pod (never the worker); anything else passed
// through to its original destination.
func TestTransparentListener(t *testing.T) {
	b := transparent(t)
	side := sidecar(t)
	listeners := b.GetStaticResources().GetListeners()
	require.Len(t, listeners, 1)
	l := listeners[0]
	sa := l.GetAddress().GetSocketAddress()
	assert.Equal(t, "127.0.0.1", sa.GetAddress(), "REDIRECT delivers locally made connections to 127.0.0.1")
	assert.EqualValues(t, redirect.DefaultConfig().ListenPort, sa.GetPortValue(), "the port tollgate redirect sends to by default")
	var lf []string
	for _, f := range l.GetListenerFilters() {
		lf = append(lf, f.GetName())
	}
	assert.Equal(t, []string{"envoy.filters.listener.original_dst", "envoy.filters.listener.tls_inspector"}, lf)

	clusters := clustersByName(t, b)
	sideClusters := clustersByName(t, side)
	sideAuthz := extAuthz(t, connectionManager(t, side.GetStaticResources().GetListeners()[0]))
	hosts := routed()
	var terminated []string
	for _, fc := range providerChains(t, l) {
		t.Run(fc.GetName(), func(t *testing.T) {
			names := fc.GetFilterChainMatch().GetServerNames()
			require.Len(t, names, 1, "one host per chain: its own leaf")
			host := names[0]
			terminated = append(terminated, host)
			assert.Contains(t, hosts, host, "the policy routes %s: the CA has a leaf for it", host)
			assert.Equal(t, "tls", fc.GetFilterChainMatch().GetTransportProtocol())

			require.Equal(t, tlsSocket, fc.GetTransportSocket().GetName())
			dtls := unpack(t, fc.GetTransportSocket().GetTypedConfig(), &tlsv3.DownstreamTlsContext{})
			ctc := dtls.GetCommonTlsContext()
			assert.Empty(t, ctc.GetTlsCertificates(), "the leaf comes from SDS, renewed without a restart")
			require.Len(t, ctc.GetTlsCertificateSdsSecretConfigs(), 1)
			sds := ctc.GetTlsCertificateSdsSecretConfigs()[0]
			assert.Equal(t, host, sds.GetName(), "internal/pki names each Secret after its host")
			pcs := sds.GetSdsConfig().GetPathConfigSource()
			require.NotNil(t, pcs, "file-based SDS")
			assert.Equal(t, path.Join(sdsDirInEnvoy, pki.SDSFile(host)), pcs.GetPath())
			assert.Equal(t, sdsDirInEnvoy, pcs.GetWatchedDirectory().GetPath(), "renewal renames into the watched directory")
			assert.Equal(t, []string{"h2", "http/1.1"}, ctc.GetAlpnProtocols())

			hcm := chainHCM(t, fc)
			assert.True(t, hcm.GetNormalizePath().GetValue())
			assert.True(t, hcm.GetMergeSlashes())
			assert.Equal(t, hcmv3.HttpConnectionManager_REJECT_REQUEST, hcm.GetPathWithEscapedSlashesAction())
			var filters []string
			for _, f := range hcm.GetHttpFilters() {
				filters = append(filters, f.GetName())
			}
			require.Equal(t, []string{extAuthzFilter, extProcFilter, routerFilter}, filters)
			assert.True(t, proto.Equal(sideAuthz, extAuthz(t, hcm)), "ext_authz as sidecar.yaml's")

			vhs := hcm.GetRouteConfig().GetVirtualHosts()
			require.Len(t, vhs, 1)
			require.Len(t, vhs[0].GetRoutes(), 1)
			r := vhs[0].GetRoutes()[0]
			assert.Equal(t, host, r.GetRoute().GetHostRewriteLiteral())
			assert.Contains(t, r.GetRequestHeadersToRemove(), "x-tollgate-client", "a worker's header never reaches the provider")
			per := unpack(t, r.GetTypedPerFilterConfig()[extAuthzFilter], &extauthzv3.ExtAuthzPerRoute{})
			ext := per.GetCheckSettings().GetContextExtensions()
			assert.Equal(t, host, ext[authz.ContextUpstreamHost])
			assert.NotEmpty(t, ext[authz.ContextClient], "the pod names the client: authz prefers it to the worker's x-tollgate-client")

			assert.Equal(t, fc.GetName(), r.GetRoute().GetCluster(), "a chain routes to the cluster of its name")
			c, ok := clusters[r.GetRoute().GetCluster()]
			require.True(t, ok)
			up := unpack(t, c.GetTransportSocket().GetTypedConfig(), &tlsv3.UpstreamTlsContext{})
			assert.Equal(t, host, up.GetSni())
			assert.True(t, proto.Equal(sideClusters[c.GetName()], c), "cluster %s as sidecar.yaml's: verified TLS to the provider", c.GetName())
		})
	}
	var sideHosts []string
	for _, sl := range side.GetStaticResources().GetListeners() {
		up := unpack(t, connectionManager(t, sl).GetRouteConfig().GetVirtualHosts()[0].GetRoutes()[0].GetTypedPerFilterConfig()[extAuthzFilter], &extauthzv3.ExtAuthzPerRoute{})
		sideHosts = append(sideHosts, up.GetCheckSettings().GetContextExtensions()[authz.ContextUpstreamHost])
	}
	assert.ElementsMatch(t, sideHosts, terminated, "the providers sidecar.yaml serves")
	assert.ElementsMatch(t, hosts, terminated, "every host the policy routes: one without a chain would pass through unmetered")

	t.Run("loopback is refused, not looped", func(t *testing.T) {
		i := slices.IndexFunc(l.GetFilterChains(), func(fc *listenerv3.FilterChain) bool { return fc.GetName() == loopbackChain })
		require.NotEqual(t, -1, i)
		fc := l.GetFilterChains()[i]
		pr := fc.GetFilterChainMatch().GetPrefixRanges()
		require.Len(t, pr, 1)
		assert.Equal(t, "127.0.0.0", pr[0].GetAddressPrefix())
		assert.EqualValues(t, 8, pr[0].GetPrefixLen().GetValue())
		require.Len(t, fc.GetFilters(), 1)
		rb := unpack(t, fc.GetFilters()[0].GetTypedConfig(), &rbacv3.RBAC{})
		assert.Equal(t, rbacconfigv3.RBAC_ALLOW, rb.GetRules().GetAction())
		assert.Empty(t, rb.GetRules().GetPolicies(), "allow nothing")
	})

	t.Run("passthrough", func(t *testing.T) {
		dfc := l.GetDefaultFilterChain()
		require.NotNil(t, dfc, "what is not a routed provider goes through untouched")
		assert.Nil(t, dfc.GetTransportSocket(), "not terminated")
		require.Len(t, dfc.GetFilters(), 1)
		tp := unpack(t, dfc.GetFilters()[0].GetTypedConfig(), &tcpproxyv3.TcpProxy{})
		c := clusters[tp.GetCluster()]
		require.NotNil(t, c)
		assert.Equal(t, passthrough, c.GetName())
		assert.Equal(t, clusterv3.Cluster_ORIGINAL_DST, c.GetType())
		assert.Equal(t, clusterv3.Cluster_CLUSTER_PROVIDED, c.GetLbPolicy())
	})
}

// TestTransparentSDSFiles: the files internal/pki writes are what the
// listener's SDS configs read: each decodes as an Envoy DiscoveryResponse,
// validates deeply, holds one Secret named after its host, and its
// certificate verifies against the CA for that host.
func TestTransparentSDSFiles(t *testing.T) {
	var hosts []string
	for _, fc := range providerChains(t, transparent(t).GetStaticResources().GetListeners()[0]) {
		hosts = append(hosts, fc.GetFilterChainMatch().GetServerNames()...)
	}
	dir := t.TempDir()
	cfg := pki.DefaultConfig()
	cfg.Dir, cfg.SDSDir, cfg.SystemBundle, cfg.Hosts = filepath.Join(dir, "ca"), filepath.Join(dir, "sds"), "", routed()
	now := time.Now()
	_, err := pki.Init(cfg, now)
	require.NoError(t, err)
	caPEM, err := os.ReadFile(filepath.Join(cfg.Dir, "ca.crt"))
	require.NoError(t, err)
	roots := x509.NewCertPool()
	require.True(t, roots.AppendCertsFromPEM(caPEM))

	for _, host := range hosts {
		t.Run(host, func(t *testing.T) {
			data := readFile(t, filepath.Join(cfg.SDSDir, pki.SDSFile(host)))
			var dr discoveryv3.DiscoveryResponse
			require.NoError(t, protojson.Unmarshal(data, &dr))
			require.NoError(t, validateDeep(&dr, "sds"))
			require.Len(t, dr.GetResources(), 1)
			var sec tlsv3.Secret
			require.NoError(t, dr.GetResources()[0].UnmarshalTo(&sec))
			assert.Equal(t, host, sec.GetName())
			blk, _ := pem.Decode(sec.GetTlsCertificate().GetCertificateChain().GetInlineBytes())
			if blk == nil {
				blk, _ = pem.Decode([]byte(sec.GetTlsCertificate().GetCertificateChain().GetInlineString()))
			}
			require.NotNil(t, blk)
			leaf, err := x509.ParseCertificate(blk.Bytes)
			require.NoError(t, err)
			_, err = leaf.Verify(x509.VerifyOptions{Roots: roots, DNSName: host, CurrentTime: now})
			assert.NoError(t, err)
			assert.NotEmpty(t, sec.GetTlsCertificate().GetPrivateKey().GetInlineString())
		})
	}
}
