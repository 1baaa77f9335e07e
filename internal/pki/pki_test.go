package pki_test

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/json"
	"math/big"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/tollgate/tollgate/internal/pki"
)

var t0 = time.Date(2026, 3, 1, 12, 0, 0, 0, time.UTC)

func newCA(t *testing.T, hosts ...string) *pki.CA {
	t.Helper()
	ca, err := pki.NewCA(hosts, t0, 365*24*time.Hour)
	require.NoError(t, err)
	return ca
}

func verify(ca *pki.CA, leaf *x509.Certificate, name string, at time.Time) error {
	roots := x509.NewCertPool()
	roots.AddCert(ca.Cert)
	_, err := leaf.Verify(x509.VerifyOptions{Roots: roots, DNSName: name, CurrentTime: at, KeyUsages: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth}})
	return err
}

// TestLeafChains: a leaf verifies against the CA for its own routed name,
// while it is valid, and for nothing else.
func TestLeafChains(t *testing.T) {
	ca := newCA(t, "api.openai.com", "api.twilio.com", "*.example.com")
	assert.True(t, ca.Cert.IsCA)
	assert.True(t, ca.Cert.MaxPathLenZero)
	assert.ElementsMatch(t, []string{"api.openai.com", "api.twilio.com", "example.com"}, ca.Cert.PermittedDNSDomains)

	leaf, err := ca.Issue("api.openai.com", t0, 24*time.Hour)
	require.NoError(t, err)
	assert.Equal(t, []string{"api.openai.com"}, leaf.Cert.DNSNames)
	assert.Equal(t, []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth}, leaf.Cert.ExtKeyUsage)
	pub, ok := leaf.Cert.PublicKey.(*ecdsa.PublicKey)
	require.True(t, ok)
	assert.Equal(t, elliptic.P256(), pub.Curve)
	assert.False(t, leaf.Cert.IsCA)

	tests := map[string]struct {
		name string
		at   time.Time
		ok   bool
	}{
		"its name, now":             {name: "api.openai.com", at: t0, ok: true},
		"its name, an hour on":      {name: "api.openai.com", at: t0.Add(time.Hour), ok: true},
		"its name, after expiry":    {name: "api.openai.com", at: t0.Add(24*time.Hour + time.Second)},
		"another routed name":       {name: "api.twilio.com", at: t0},
		"a name under it":           {name: "x.api.openai.com", at: t0},
		"a name it was never given": {name: "www.google.com", at: t0},
	}
	for name, tc := range tests {
		t.Run(name, func(t *testing.T) {
			err := verify(ca, leaf.Cert, tc.name, tc.at)
			if tc.ok {
				assert.NoError(t, err)
			} else {
				assert.Error(t, err)
			}
		})
	}

	t.Run("wildcard route", func(t *testing.T) {
		w, err := ca.Issue("*.example.com", t0, time.Hour)
		require.NoError(t, err)
		assert.NoError(t, verify(ca, w.Cert, "api.example.com", t0))
		assert.Error(t, verify(ca, w.Cert, "example.org", t0))
	})
}

// TestCAKeyCannotMintOtherNames: the name constraints hold even against
// the CA's own key: Issue refuses, and a certificate signed by hand with
// the key for another domain does not verify.
func TestCAKeyCannotMintOtherNames(t *testing.T) {
	ca := newCA(t, "api.openai.com")
	_, err := ca.Issue("www.bank.com", t0, time.Hour)
	require.ErrorContains(t, err, "do not cover www.bank.com")

	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	require.NoError(t, err)
	tmpl := &x509.Certificate{
		SerialNumber: big.NewInt(7), Subject: pkix.Name{CommonName: "www.bank.com"}, DNSNames: []string{"www.bank.com"},
		NotBefore: t0.Add(-time.Minute), NotAfter: t0.Add(time.Hour),
		ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, ca.Cert, key.Public(), ca.Key)
	require.NoError(t, err)
	forged, err := x509.ParseCertificate(der)
	require.NoError(t, err)
	err = verify(ca, forged, "www.bank.com", t0)
	var cie x509.CertificateInvalidError
	require.ErrorAs(t, err, &cie)
	assert.Equal(t, x509.CANotAuthorizedForThisName, cie.Reason)
}

// TestLeafNeverOutlivesCA: near the CA's end a leaf is cut short; past it
// none is issued.
func TestLeafNeverOutlivesCA(t *testing.T) {
	ca, err := pki.NewCA([]string{"api.openai.com"}, t0, 48*time.Hour)
	require.NoError(t, err)
	l, err := ca.Issue("api.openai.com", t0.Add(36*time.Hour), 24*time.Hour)
	require.NoError(t, err)
	assert.Equal(t, ca.Cert.NotAfter, l.Cert.NotAfter)
	_, err = ca.Issue("api.openai.com", t0.Add(49*time.Hour), 24*time.Hour)
	assert.ErrorContains(t, err, "CA expired")
}

func TestCheckHost(t *testing.T) {
	for _, h := range []string{"api.openai.com", "*.example.com", "a-b.c0.io"} {
		assert.NoError(t, pki.CheckHost(h), h)
	}
	for _, h := range []string{"", "localhost", "10.0.0.1", "API.openai.com", "a..b", "*.*.x.com", "x.*.com", "-a.com", "a b.com", "[::1]"} {
		assert.Error(t, pki.CheckHost(h), h)
	}
}

func testConfig(t *testing.T, hosts ...string) pki.Config {
	t.Helper()
	dir := t.TempDir()
	cfg := pki.DefaultConfig()
	cfg.Dir, cfg.SDSDir, cfg.TrustDir = filepath.Join(dir, "ca"), filepath.Join(dir, "sds"), filepath.Join(dir, "trust")
	bundle := filepath.Join(dir, "system.pem")
	require.NoError(t, os.WriteFile(bundle, []byte("# the system roots\n"), 0o644))
	cfg.SystemBundle = bundle
	cfg.Hosts = hosts
	return cfg
}

// sdsLeaf reads the certificate out of host's SDS file.
func sdsLeaf(t *testing.T, cfg pki.Config, host string) *x509.Certificate {
	t.Helper()
	var doc struct {
		Resources []struct {
			Type           string `json:"@type"`
			Name           string `json:"name"`
			TLSCertificate struct {
				CertificateChain struct {
					InlineString string `json:"inline_string"`
				} `json:"certificate_chain"`
				PrivateKey struct {
					InlineString string `json:"inline_string"`
				} `json:"private_key"`
			} `json:"tls_certificate"`
		} `json:"resources"`
	}
	path := filepath.Join(cfg.SDSDir, pki.SDSFile(host))
	st, err := os.Stat(path)
	require.NoError(t, err)
	assert.Equal(t, os.FileMode(0o640), st.Mode().Perm())
	data, err := os.ReadFile(path)
	require.NoError(t, err)
	require.NoError(t, json.Unmarshal(data, &doc))
	require.Len(t, doc.Resources, 1)
	r := doc.Resources[0]
	assert.Equal(t, "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.Secret", r.Type)
	assert.Equal(t, host, r.Name)
	assert.Contains(t, r.TLSCertificate.PrivateKey.InlineString, "PRIVATE KEY")
	certs, err := parsePEMCerts([]byte(r.TLSCertificate.CertificateChain.InlineString))
	require.NoError(t, err)
	require.Len(t, certs, 1)
	return certs[0]
}

func parsePEMCerts(data []byte) ([]*x509.Certificate, error) {
	pool := x509.NewCertPool()
	if !pool.AppendCertsFromPEM(data) {
		return nil, os.ErrInvalid
	}
	var out []*x509.Certificate
	for len(data) > 0 {
		c, rest, err := nextCert(data)
		if err != nil {
			return nil, err
		}
		if c == nil {
			break
		}
		out = append(out, c)
		data = rest
	}
	return out, nil
}

func loadTrust(t *testing.T, cfg pki.Config) *pki.CA {
	t.Helper()
	cert, err := os.ReadFile(filepath.Join(cfg.Dir, "ca.crt"))
	require.NoError(t, err)
	key, err := os.ReadFile(filepath.Join(cfg.Dir, "ca.key"))
	require.NoError(t, err)
	ca, err := pki.ParseCA(cert, key)
	require.NoError(t, err)
	return ca
}

// TestInitAndRenew: init makes the CA (key 0600), the trust files and a
// leaf per host; renewal leaves a fresh leaf alone and replaces it two
// thirds into its life; every leaf on file verifies for its host.
func TestInitAndRenew(t *testing.T) {
	hosts := []string{"api.openai.com", "api.anthropic.com"}
	cfg := testConfig(t, hosts...)

	res, err := pki.Init(cfg, t0)
	require.NoError(t, err)
	assert.True(t, res.NewCA)
	assert.ElementsMatch(t, hosts, res.Renewed)
	assert.Equal(t, t0.Add(-time.Minute).Add((24*time.Hour+time.Minute)*2/3), res.Next, "24 h leaves (from a minute back), renewed at 2/3 of their life")

	st, err := os.Stat(filepath.Join(cfg.Dir, "ca.key"))
	require.NoError(t, err)
	assert.Equal(t, os.FileMode(0o600), st.Mode().Perm(), "the CA key is the owner's alone")
	ca := loadTrust(t, cfg)
	trusted, err := os.ReadFile(filepath.Join(cfg.TrustDir, "ca.crt"))
	require.NoError(t, err)
	assert.Equal(t, ca.PEM, trusted)
	bundle, err := os.ReadFile(filepath.Join(cfg.TrustDir, "bundle.pem"))
	require.NoError(t, err)
	assert.Contains(t, string(bundle), "# the system roots")
	assert.Contains(t, string(bundle), string(ca.PEM))
	_, err = os.Stat(filepath.Join(cfg.TrustDir, "ca.key"))
	assert.ErrorIs(t, err, os.ErrNotExist, "the key never goes to the worker")

	first := map[string]*x509.Certificate{}
	for _, h := range hosts {
		first[h] = sdsLeaf(t, cfg, h)
		require.NoError(t, verify(ca, first[h], h, t0))
	}

	res, err = pki.Renew(cfg, t0.Add(15*time.Hour))
	require.NoError(t, err)
	assert.Empty(t, res.Renewed, "not due yet")
	for _, h := range hosts {
		assert.Equal(t, first[h].SerialNumber, sdsLeaf(t, cfg, h).SerialNumber)
	}

	later := t0.Add(16 * time.Hour)
	res, err = pki.Renew(cfg, later)
	require.NoError(t, err)
	assert.ElementsMatch(t, hosts, res.Renewed)
	assert.Equal(t, later.Add(-time.Minute).Add((24*time.Hour+time.Minute)*2/3), res.Next)
	for _, h := range hosts {
		c := sdsLeaf(t, cfg, h)
		assert.NotEqual(t, first[h].SerialNumber, c.SerialNumber)
		assert.NoError(t, verify(ca, c, h, t0.Add(30*time.Hour)), "the renewed leaf outlives the first")
		assert.Error(t, verify(ca, first[h], h, t0.Add(30*time.Hour)))
	}

	t.Run("init again keeps the CA and the fresh leaves", func(t *testing.T) {
		res, err := pki.Init(cfg, later.Add(time.Minute))
		require.NoError(t, err)
		assert.False(t, res.NewCA)
		assert.Empty(t, res.Renewed)
		assert.Equal(t, ca.Cert.SerialNumber, loadTrust(t, cfg).Cert.SerialNumber)
	})

	t.Run("a lost SDS file is written again", func(t *testing.T) {
		require.NoError(t, os.Remove(filepath.Join(cfg.SDSDir, pki.SDSFile("api.openai.com"))))
		res, err := pki.Renew(cfg, later.Add(time.Minute))
		require.NoError(t, err)
		assert.Equal(t, []string{"api.openai.com"}, res.Renewed)
	})

	t.Run("no temporary files are left", func(t *testing.T) {
		for _, d := range []string{cfg.Dir, cfg.SDSDir, cfg.TrustDir, filepath.Join(cfg.Dir, "leaves")} {
			names, err := filepath.Glob(filepath.Join(d, ".*"))
			require.NoError(t, err)
			assert.Empty(t, names, d)
		}
	})
}

// TestNewHostNeedsNewCA: a host the policy adds later is outside the CA's
// constraints: renew and init (without --remake) keep the CA, list the
// host as uncovered and go on renewing the others; init --remake makes a
// new CA and re-issues every leaf under it.
func TestNewHostNeedsNewCA(t *testing.T) {
	cfg := testConfig(t, "api.openai.com")
	_, err := pki.Init(cfg, t0)
	require.NoError(t, err)
	old := loadTrust(t, cfg)

	cfg.Hosts = []string{"api.openai.com", "api.sendgrid.com"}
	res, err := pki.Renew(cfg, t0.Add(17*time.Hour))
	require.NoError(t, err)
	assert.Equal(t, []string{"api.sendgrid.com"}, res.Uncovered)
	assert.Equal(t, []string{"api.openai.com"}, res.Renewed, "the covered host is still renewed")
	_, err = os.Stat(filepath.Join(cfg.SDSDir, pki.SDSFile("api.sendgrid.com")))
	assert.ErrorIs(t, err, os.ErrNotExist)

	res, err = pki.Init(cfg, t0.Add(17*time.Hour))
	require.NoError(t, err)
	assert.False(t, res.NewCA, "a restart keeps the CA the worker trusts")
	assert.Equal(t, []string{"api.sendgrid.com"}, res.Uncovered)

	cfg.Remake = true
	res, err = pki.Init(cfg, t0.Add(18*time.Hour))
	require.NoError(t, err)
	assert.True(t, res.NewCA)
	assert.Empty(t, res.Uncovered)
	assert.ElementsMatch(t, cfg.Hosts, res.Renewed, "every leaf again, under the new CA")
	ca := loadTrust(t, cfg)
	assert.NotEqual(t, old.Cert.SerialNumber, ca.Cert.SerialNumber)
	for _, h := range cfg.Hosts {
		assert.NoError(t, verify(ca, sdsLeaf(t, cfg, h), h, t0.Add(19*time.Hour)))
	}
}

// TestCADueForReplacement: past two thirds of the CA's life renew refuses
// rather than issue leaves cut short by the CA's end.
func TestCADueForReplacement(t *testing.T) {
	cfg := testConfig(t, "api.openai.com")
	cfg.CALife = 30 * 24 * time.Hour
	_, err := pki.Init(cfg, t0)
	require.NoError(t, err)
	_, err = pki.Renew(cfg, t0.Add(21*24*time.Hour))
	assert.ErrorContains(t, err, "due for replacement")
}

func TestConfigValidate(t *testing.T) {
	cfg := pki.DefaultConfig()
	cfg.LeafLife = 0
	cfg.Hosts = []string{"localhost"}
	err := cfg.Validate()
	require.Error(t, err)
	for _, want := range []string{"no CA directory", "no SDS directory", "localhost", "lifetimes must be positive"} {
		assert.ErrorContains(t, err, want)
	}
}

func TestParseCARefusesMismatch(t *testing.T) {
	a, b := newCA(t, "api.openai.com"), newCA(t, "api.openai.com")
	bKey, err := b.KeyPEM()
	require.NoError(t, err)
	_, err = pki.ParseCA(a.PEM, bKey)
	assert.ErrorContains(t, err, "does not match")
	leaf, err := a.Issue("api.openai.com", t0, time.Hour)
	require.NoError(t, err)
	_, err = pki.ParseCA(leaf.CertPEM, leaf.KeyPEM)
	assert.ErrorContains(t, err, "not a name-constrained CA")
	_, err = pki.ParseCA([]byte("junk"), bKey)
	assert.ErrorContains(t, err, "no PEM CERTIFICATE")
}
