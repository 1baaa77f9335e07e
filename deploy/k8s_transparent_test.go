package deploy_test

import (
	"slices"
	"strconv"
	"strings"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	corev1 "k8s.io/api/core/v1"
	"sigs.k8s.io/yaml"
)

const k8sTransparent = "k8s/overlays/transparent"

// TestK8sTransparent: the transparent overlay builds and decodes strictly;
// Envoy runs sidecar-transparent.yaml; Tollgate makes the CA (its key in a
// volume no other container mounts) and pins the client from the pod's
// label; the redirect init container, the only one with NET_ADMIN, runs
// after Envoy and before the worker, skips Envoy's uid (the one Envoy runs
// as) and sends to the transparent listener's port; the worker runs as
// another uid, calls the providers' own addresses and trusts the CA
// through its runtimes' variables.
func TestK8sTransparent(t *testing.T) {
	d := decodeAll(t, build(t, k8sTransparent))
	dep, ok := d.deployments["worker"]
	require.True(t, ok)
	spec := dep.Spec.Template.Spec

	var order []string
	for _, c := range spec.InitContainers {
		order = append(order, c.Name)
	}
	require.Equal(t, []string{"tollgate", "envoy", "tollgate-redirect"}, order, "the CA before Envoy, the rules before the worker")

	cm, ok := d.configMaps["envoy-config"]
	require.True(t, ok)
	assert.Equal(t, string(readFile(t, "../envoy/sidecar-transparent.yaml")), cm.Data["envoy.yaml"])
	var envoyCfg struct {
		StaticResources struct {
			Listeners []struct {
				Address struct {
					SocketAddress struct {
						PortValue int `json:"port_value"`
					} `json:"socket_address"`
				} `json:"address"`
			} `json:"listeners"`
		} `json:"static_resources"`
	}
	require.NoError(t, yaml.Unmarshal([]byte(cm.Data["envoy.yaml"]), &envoyCfg))
	require.Len(t, envoyCfg.StaticResources.Listeners, 1)
	listenPort := envoyCfg.StaticResources.Listeners[0].Address.SocketAddress.PortValue

	envoy := container(t, spec.InitContainers, "envoy")
	tollgate := container(t, spec.InitContainers, "tollgate")
	redirect := container(t, spec.InitContainers, "tollgate-redirect")
	worker := container(t, spec.Containers, "worker")
	require.NotNil(t, envoy.SecurityContext.RunAsUser)
	envoyUID := int(*envoy.SecurityContext.RunAsUser)

	env := func(c corev1.Container) map[string]corev1.EnvVar {
		out := map[string]corev1.EnvVar{}
		for _, e := range c.Env {
			out[e.Name] = e
		}
		return out
	}

	t.Run("tollgate keeps the CA and pins the client from the pod", func(t *testing.T) {
		e := env(tollgate)
		require.Contains(t, e, "TOLLGATE_CLIENT")
		require.NotNil(t, e["TOLLGATE_CLIENT"].ValueFrom)
		assert.Equal(t, "metadata.labels['tollgate.io/client']", e["TOLLGATE_CLIENT"].ValueFrom.FieldRef.FieldPath)
		assert.NotEmpty(t, dep.Spec.Template.Labels["tollgate.io/client"])
		caDir := e["TOLLGATE_CA_DIR"].Value
		sdsDir := e["TOLLGATE_CA_SDS_DIR"].Value
		trustDir := e["TOLLGATE_CA_TRUST_DIR"].Value
		keyVol := mountAt(t, tollgate, caDir).Name
		for _, c := range append(slices.Clone(spec.InitContainers), spec.Containers...) {
			if c.Name == "tollgate" {
				continue
			}
			for _, m := range c.VolumeMounts {
				assert.NotEqual(t, keyVol, m.Name, "%s mounts the CA key's volume", c.Name)
			}
		}
		assert.Equal(t, corev1.StorageMediumMemory, volume(t, spec, keyVol).EmptyDir.Medium, "the key never reaches the node's disk")

		sds := mountAt(t, envoy, "/etc/tollgate/sds")
		assert.True(t, sds.ReadOnly)
		assert.Equal(t, mountAt(t, tollgate, sdsDir).Name, sds.Name, "Envoy reads the SDS files Tollgate writes")
		require.NotNil(t, spec.SecurityContext.FSGroup)
		assert.EqualValues(t, envoyUID, *spec.SecurityContext.FSGroup, "Envoy reads the 0640 SDS files through the fsGroup")

		trust := mountAt(t, worker, trustDir)
		assert.True(t, trust.ReadOnly)
		assert.Equal(t, mountAt(t, tollgate, trustDir).Name, trust.Name)
		we := env(worker)
		for name, file := range map[string]string{"SSL_CERT_FILE": "bundle.pem", "REQUESTS_CA_BUNDLE": "bundle.pem", "NODE_EXTRA_CA_CERTS": "ca.crt"} {
			assert.Equal(t, trustDir+"/"+file, we[name].Value, name)
		}
		assert.True(t, strings.HasPrefix(we["OPENAI_BASE_URL"].Value, "https://api.openai.com"), "the worker calls the provider itself")
		assert.Equal(t, "https://api.cloudflare.com/client/v4", we["CLOUDFLARE_BASE_URL"].Value, "not the base's plain-HTTP listener, which transparent mode does not run")
	})

	t.Run("the redirect init container", func(t *testing.T) {
		assert.Nil(t, redirect.RestartPolicy, "runs once, to completion, before the worker")
		assert.Equal(t, []string{"redirect", "--apply"}, redirect.Args[:2])
		uid, ok := flag(redirect, "envoy-uid")
		require.True(t, ok)
		assert.Equal(t, strconv.Itoa(envoyUID), uid, "Envoy's own connections are not redirected")
		port, ok := flag(redirect, "port")
		require.True(t, ok)
		assert.Equal(t, strconv.Itoa(listenPort), port, "to the transparent listener")
		assert.Equal(t, []corev1.Capability{"NET_ADMIN", "NET_RAW"}, redirect.SecurityContext.Capabilities.Add)
		for _, c := range append(slices.Clone(spec.InitContainers), spec.Containers...) {
			if c.Name != redirect.Name && c.SecurityContext != nil && c.SecurityContext.Capabilities != nil {
				assert.Empty(t, c.SecurityContext.Capabilities.Add, "%s gains no capability", c.Name)
			}
		}
		require.NotNil(t, worker.SecurityContext.RunAsUser)
		assert.NotEqual(t, int64(envoyUID), *worker.SecurityContext.RunAsUser, "the worker's traffic is redirected: not Envoy's uid")
	})
}
