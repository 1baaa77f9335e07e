// Package pki is the pod-local certificate authority of transparent mode
// (docs/transparent.md): a CA made in the pod, whose key never leaves the
// pod's volume, and short-lived leaf certificates for the provider host
// names the policy routes, which Envoy serves to the worker in place of the
// provider's own. Standard library only (crypto/x509).
//
// The CA is name-constrained to the routed names: a stolen CA key cannot
// mint a certificate any client would accept for another domain. The cost:
// when the policy routes a new host, the CA must be made again (and the
// worker restarted to trust the new one).
package pki

import (
	"crypto"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"errors"
	"fmt"
	"math/big"
	"slices"
	"strings"
	"time"
)

// CA is a loaded certificate authority.
type CA struct {
	Cert *x509.Certificate
	Key  crypto.Signer
	PEM  []byte // Cert, PEM-encoded
}

// backdate is how far before now certificates start, for clocks slightly
// behind the one that made them.
const backdate = time.Minute

// NewCA makes a CA valid from now for life, constrained to hosts (exact
// names or "*.suffix").
func NewCA(hosts []string, now time.Time, life time.Duration) (*CA, error) {
	if len(hosts) == 0 {
		return nil, errors.New("pki: a CA needs at least one host name to be constrained to")
	}
	if life <= 0 {
		return nil, fmt.Errorf("pki: CA lifetime %v must be positive", life)
	}
	var permitted []string
	for _, h := range hosts {
		if err := CheckHost(h); err != nil {
			return nil, err
		}
		permitted = append(permitted, constraintOf(h))
	}
	slices.Sort(permitted)
	permitted = slices.Compact(permitted)
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return nil, fmt.Errorf("pki: CA key: %w", err)
	}
	serial, err := newSerial()
	if err != nil {
		return nil, err
	}
	tmpl := &x509.Certificate{
		SerialNumber:                serial,
		Subject:                     pkix.Name{CommonName: "Tollgate pod-local CA", Organization: []string{"Tollgate transparent mode"}},
		NotBefore:                   now.Add(-backdate),
		NotAfter:                    now.Add(life),
		IsCA:                        true,
		BasicConstraintsValid:       true,
		MaxPathLen:                  0,
		MaxPathLenZero:              true, // leaves only: no intermediate can be made under it
		KeyUsage:                    x509.KeyUsageCertSign | x509.KeyUsageCRLSign,
		PermittedDNSDomainsCritical: true,
		PermittedDNSDomains:         permitted,
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, key.Public(), key)
	if err != nil {
		return nil, fmt.Errorf("pki: CA certificate: %w", err)
	}
	cert, err := x509.ParseCertificate(der)
	if err != nil {
		return nil, fmt.Errorf("pki: CA certificate: %w", err)
	}
	return &CA{Cert: cert, Key: key, PEM: pemBlock("CERTIFICATE", der)}, nil
}

// constraintOf is the DNS name constraint that permits h: in crypto/x509 a
// constraint "api.openai.com" permits that name and names under it, and a
// route "*.example.com" needs "example.com".
func constraintOf(h string) string {
	return strings.TrimPrefix(h, "*.")
}

// Covers reports whether the CA's name constraints permit host.
func (ca *CA) Covers(host string) bool {
	name := constraintOf(host)
	for _, c := range ca.Cert.PermittedDNSDomains {
		if name == c || strings.HasSuffix(name, "."+c) {
			return true
		}
	}
	return false
}

// CheckHost refuses what cannot be a leaf's DNS name: empty, an IP, a
// wildcard anywhere but as the whole first label, bad characters.
func CheckHost(h string) error {
	if h == "" {
		return errors.New("pki: empty host name")
	}
	if len(h) > 253 {
		return fmt.Errorf("pki: host name %.20q… is over 253 characters", h)
	}
	name := strings.TrimPrefix(h, "*.")
	labels := strings.Split(name, ".")
	if len(labels) < 2 {
		return fmt.Errorf("pki: host %q: want a dotted DNS name", h)
	}
	for _, l := range labels {
		if l == "" || len(l) > 63 || l[0] == '-' || l[len(l)-1] == '-' {
			return fmt.Errorf("pki: host %q: bad label %q", h, l)
		}
		for _, c := range l {
			if !(c >= 'a' && c <= 'z' || c >= '0' && c <= '9' || c == '-') {
				return fmt.Errorf("pki: host %q: %q is not allowed (lower-case letters, digits, '-')", h, c)
			}
		}
	}
	if allDigits := strings.Trim(labels[len(labels)-1], "0123456789") == ""; allDigits {
		return fmt.Errorf("pki: host %q looks like an IP address", h)
	}
	return nil
}

// ParseCA reads a CA from its PEM certificate and PEM PKCS#8 key, and
// checks they belong together and that it is a constrained CA of ours.
func ParseCA(certPEM, keyPEM []byte) (*CA, error) {
	cert, err := parseCert(certPEM)
	if err != nil {
		return nil, fmt.Errorf("pki: CA certificate: %w", err)
	}
	if !cert.IsCA || !cert.MaxPathLenZero || len(cert.PermittedDNSDomains) == 0 {
		return nil, errors.New("pki: the CA certificate is not a name-constrained CA with path length 0")
	}
	kb, _ := pem.Decode(keyPEM)
	if kb == nil || kb.Type != "PRIVATE KEY" {
		return nil, errors.New("pki: CA key: no PEM PRIVATE KEY block")
	}
	k, err := x509.ParsePKCS8PrivateKey(kb.Bytes)
	if err != nil {
		return nil, fmt.Errorf("pki: CA key: %w", err)
	}
	key, ok := k.(*ecdsa.PrivateKey)
	if !ok {
		return nil, fmt.Errorf("pki: CA key: %T, want ECDSA", k)
	}
	if !key.PublicKey.Equal(cert.PublicKey) {
		return nil, errors.New("pki: the CA key does not match the CA certificate")
	}
	return &CA{Cert: cert, Key: key, PEM: certPEM}, nil
}

// KeyPEM is the CA key as PEM PKCS#8.
func (ca *CA) KeyPEM() ([]byte, error) {
	der, err := x509.MarshalPKCS8PrivateKey(ca.Key)
	if err != nil {
		return nil, fmt.Errorf("pki: CA key: %w", err)
	}
	return pemBlock("PRIVATE KEY", der), nil
}

func parseCert(data []byte) (*x509.Certificate, error) {
	b, _ := pem.Decode(data)
	if b == nil || b.Type != "CERTIFICATE" {
		return nil, errors.New("no PEM CERTIFICATE block")
	}
	return x509.ParseCertificate(b.Bytes)
}

func pemBlock(typ string, der []byte) []byte {
	return pem.EncodeToMemory(&pem.Block{Type: typ, Bytes: der})
}

func newSerial() (*big.Int, error) {
	n, err := rand.Int(rand.Reader, new(big.Int).Lsh(big.NewInt(1), 128))
	if err != nil {
		return nil, fmt.Errorf("pki: serial number: %w", err)
	}
	return n.Add(n, big.NewInt(1)), nil // never zero
}
