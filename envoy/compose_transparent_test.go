package envoy_test

import (
	"strconv"
	"strings"
	"testing"

	clusterv3 "github.com/envoyproxy/go-control-plane/envoy/config/cluster/v3"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"sigs.k8s.io/yaml"
)

const transparentComposePath = deployDir + "/docker-compose.transparent.yaml"

// TestComposeTransparent: the compose variant of transparent mode, merged
// over docker-compose.yaml as compose does. Envoy runs
// sidecar-transparent.yaml with only its provider clusters rewritten to
// fakeapi (the result validated deeply), as uid the redirect rules skip,
// reading the SDS files from the volume the init service writes them to;
// the init service (the only one with NET_ADMIN) makes the CA and applies
// the rules for Envoy's port in the shared namespace; the worker, in that
// namespace as another uid, calls the providers' own https addresses and
// trusts the CA; Tollgate pins the client.
func TestComposeTransparent(t *testing.T) {
	var override composeFile
	require.NoError(t, yaml.Unmarshal(readFile(t, transparentComposePath), &override))
	c := mergeCompose(loadCompose(t), override)
	envoy, initSvc, worker, tollgate := c.Services["envoy"], c.Services["transparent-init"], c.Services["worker"], c.Services["tollgate"]

	b := composeEnvoyFrom(t, envoy, transparentPath)
	listeners := b.GetStaticResources().GetListeners()
	var transparentPort int
	for _, l := range listeners {
		if l.GetName() == "transparent" {
			sa := l.GetAddress().GetSocketAddress()
			assert.Equal(t, "127.0.0.1", sa.GetAddress(), "where REDIRECT delivers; never published")
			transparentPort = int(sa.GetPortValue())
			assert.NotEmpty(t, l.GetFilterChains()[0].GetTransportSocket(), "TLS is still terminated")
		}
	}
	require.NotZero(t, transparentPort)
	clusters := clustersByName(t, b)
	assert.Equal(t, clusterv3.Cluster_ORIGINAL_DST, clusters[passthrough].GetType(), "passthrough is not rewritten")
	for _, fc := range providerChains(t, transparent(t).GetStaticResources().GetListeners()[0]) {
		name := fc.GetName() // each chain routes to the cluster of its name (TestTransparentListener)
		cl, ok := clusters[name]
		require.True(t, ok, name)
		assert.Nil(t, cl.GetTransportSocket(), "fakeapi speaks plain HTTP")
		sa := socketAddress(t, cl)
		assert.Equal(t, fakeAPIHost, sa.GetAddress(), "cluster %s goes to fakeapi", name)
		assert.EqualValues(t, fakeAPIPort, sa.GetPortValue())
	}

	assert.Equal(t, "101", envoy.User, "Envoy runs as the uid the rules skip")
	assert.Equal(t, "service:tollgate", envoy.NetworkMode)
	assert.Contains(t, envoy.Volumes, "tollgate-sds:/etc/tollgate/sds:ro")

	require.Equal(t, "init", initSvc.Build.Target)
	assert.Equal(t, "service:tollgate", initSvc.NetworkMode, "the rules go into the namespace the worker and Envoy share")
	assert.ElementsMatch(t, []string{"NET_ADMIN", "NET_RAW"}, initSvc.CapAdd)
	for name, s := range c.Services {
		if name != "transparent-init" {
			assert.Empty(t, s.CapAdd, "%s gains no capability", name)
		}
	}
	require.Len(t, initSvc.Command, 1)
	script := initSvc.Command[0]
	assert.Contains(t, script, "/tollgate ca init ")
	assert.Contains(t, script, "--sds-dir=/etc/tollgate/sds")
	assert.Contains(t, script, "/tollgate redirect --apply --envoy-uid="+envoy.User+" ")
	assert.Contains(t, script, "--port="+strconv.Itoa(transparentPort))
	assert.Contains(t, initSvc.Volumes, "tollgate-sds:/etc/tollgate/sds")

	assert.Equal(t, "service:tollgate", worker.NetworkMode)
	assert.NotEqual(t, envoy.User, worker.User, "the worker's :443 is redirected")
	assert.True(t, strings.HasPrefix(worker.Environment["OPENAI_BASE_URL"], "https://api.openai.com"))
	assert.Equal(t, "https://api.cloudflare.com/client/v4", worker.Environment["CLOUDFLARE_BASE_URL"], "not the plain-HTTP listener, which transparent mode does not run")
	assert.Equal(t, "/etc/tollgate/trust/ca.crt", worker.Environment["NODE_EXTRA_CA_CERTS"])
	assert.Equal(t, "/etc/tollgate/trust/bundle.pem", worker.Environment["SSL_CERT_FILE"])
	assert.Contains(t, worker.Volumes, "tollgate-trust:/etc/tollgate/trust:ro")
	assert.Contains(t, script, "--trust-dir=/etc/tollgate/trust")

	client := flagValues(tollgate.Command, "client")
	require.Len(t, client, 1, "the pod names the client, not the worker")
	assert.NotEmpty(t, client[0])
}
