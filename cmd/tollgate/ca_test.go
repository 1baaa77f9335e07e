package main

import (
	"bytes"
	"context"
	"crypto/x509"
	"encoding/pem"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	"sigs.k8s.io/yaml"

	"github.com/tollgate/tollgate/internal/pki"
	"github.com/tollgate/tollgate/policy"
)

func runOut(t *testing.T, args ...string) (string, error) {
	t.Helper()
	var out, errOut bytes.Buffer
	err := run(context.Background(), args, noEnv, &out, &errOut)
	return out.String() + errOut.String(), err
}

// TestCAHosts: the CA covers the hosts the policy routes, exact and
// wildcard, plus --host.
func TestCAHosts(t *testing.T) {
	out, err := runOut(t, "ca", "hosts", "--host", "api.example.com")
	require.NoError(t, err)
	hosts := strings.Fields(out)
	for _, h := range []string{"api.openai.com", "api.anthropic.com", "api.twilio.com", "api.sendgrid.com", "api.cloudflare.com", "api.example.com"} {
		assert.Contains(t, hosts, h)
	}
	assert.Equal(t, routedHosts(policy.Default(), []string{"api.example.com"}), hosts)
}

// TestCAInitRenewCLI: ca init writes the CA, the trust files and one SDS
// file per routed host; ca renew right after renews nothing.
func TestCAInitRenewCLI(t *testing.T) {
	dir := t.TempDir()
	caDir, sds, trust := filepath.Join(dir, "ca"), filepath.Join(dir, "sds"), filepath.Join(dir, "trust")
	args := []string{"--dir", caDir, "--sds-dir", sds, "--trust-dir", trust, "--system-bundle", ""}
	out, err := runOut(t, append([]string{"ca", "init"}, args...)...)
	require.NoError(t, err, out)
	assert.Contains(t, out, "made a new CA")
	for _, h := range routedHosts(policy.Default(), nil) {
		_, err := os.Stat(filepath.Join(sds, pki.SDSFile(h)))
		assert.NoError(t, err, h)
	}
	data, err := os.ReadFile(filepath.Join(trust, "ca.crt"))
	require.NoError(t, err)
	b, _ := pem.Decode(data)
	require.NotNil(t, b)
	ca, err := x509.ParseCertificate(b.Bytes)
	require.NoError(t, err)
	assert.True(t, ca.IsCA)

	out, err = runOut(t, append([]string{"ca", "renew"}, args...)...)
	require.NoError(t, err, out)
	assert.Contains(t, out, "no leaf was due")

	_, err = runOut(t, "ca", "init")
	assert.ErrorContains(t, err, `"dir" not set`)
}

// TestServeCA: serve --ca-dir has the leaves in place before it is ready.
func TestServeCA(t *testing.T) {
	dir := t.TempDir()
	grpc, http := freePort(t), freePort(t)
	startRun(t, noEnv, http, serveArgs(grpc, http, "--ca-dir", filepath.Join(dir, "ca"), "--ca-sds-dir", filepath.Join(dir, "sds"), "--ca-leaf-life", "2h")...)
	for _, h := range routedHosts(policy.Default(), nil) {
		_, err := os.Stat(filepath.Join(dir, "sds", pki.SDSFile(h)))
		assert.NoError(t, err, h)
	}
}

func TestRedirectCLI(t *testing.T) {
	out, err := runOut(t, "redirect", "--format", "iptables", "--envoy-uid", "101", "--port", "15001")
	require.NoError(t, err)
	assert.Contains(t, out, "-A TOLLGATE_OUTPUT -p tcp --dport 443 -j REDIRECT --to-ports 15001")
	assert.Contains(t, out, "--reject-with tcp-reset", "and the IPv6 script")
	out, err = runOut(t, "redirect", "--format", "nft")
	require.NoError(t, err)
	assert.Contains(t, out, "table inet tollgate {")
	_, err = runOut(t, "redirect", "--format", "pf")
	assert.ErrorContains(t, err, `--format "pf"`)
	_, err = runOut(t, "redirect", "--envoy-uid", "0", "--format", "nft")
	assert.ErrorContains(t, err, "must be positive")
}

// TestK8sTransparentArgs: the transparent overlay's redirect container
// runs flags `tollgate redirect` accepts, and every TOLLGATE_ variable it
// gives serve names a serve flag.
func TestK8sTransparentArgs(t *testing.T) {
	raw, err := os.ReadFile("../../deploy/k8s/overlays/transparent/transparent.yaml")
	require.NoError(t, err)
	var dep appsv1.Deployment
	require.NoError(t, yaml.UnmarshalStrict(raw, &dep))
	cs := dep.Spec.Template.Spec.InitContainers
	i := slices.IndexFunc(cs, func(c corev1.Container) bool { return c.Name == "tollgate-redirect" })
	require.NotEqual(t, -1, i)
	args := cs[i].Args
	require.Equal(t, "redirect", args[0])
	cmd := redirectCmd()
	require.NoError(t, cmd.ParseFlags(args[1:]))
	assert.Empty(t, cmd.Flags().Args(), "stray arguments")

	i = slices.IndexFunc(cs, func(c corev1.Container) bool { return c.Name == "tollgate" })
	require.NotEqual(t, -1, i)
	serve := serveCmd(noEnv)
	for _, e := range cs[i].Env {
		name, ok := strings.CutPrefix(e.Name, "TOLLGATE_")
		require.True(t, ok, e.Name)
		flag := strings.ToLower(strings.ReplaceAll(name, "_", "-"))
		assert.NotNil(t, serve.Flags().Lookup(flag), "%s: serve has no --%s", e.Name, flag)
	}
}
