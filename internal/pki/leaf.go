package pki

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"fmt"
	"time"
)

// Leaf is a server certificate for one host name and its key, PEM-encoded.
type Leaf struct {
	Host    string
	Cert    *x509.Certificate
	CertPEM []byte
	KeyPEM  []byte
}

// Issue makes a leaf for host, valid from now for life but never past the
// CA's own expiry: ECDSA P-256, the exact host as its only SAN, server
// authentication only.
func (ca *CA) Issue(host string, now time.Time, life time.Duration) (*Leaf, error) {
	if err := CheckHost(host); err != nil {
		return nil, err
	}
	if !ca.Covers(host) {
		return nil, fmt.Errorf("pki: the CA's name constraints %v do not cover %s: make a new CA (tollgate ca init --remake)", ca.Cert.PermittedDNSDomains, host)
	}
	if life <= 0 {
		return nil, fmt.Errorf("pki: leaf lifetime %v must be positive", life)
	}
	notAfter := now.Add(life)
	if notAfter.After(ca.Cert.NotAfter) {
		notAfter = ca.Cert.NotAfter
	}
	if !notAfter.After(now) {
		return nil, fmt.Errorf("pki: the CA expired at %s: make a new CA (tollgate ca init --remake)", ca.Cert.NotAfter.UTC().Format(time.RFC3339))
	}
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return nil, fmt.Errorf("pki: leaf key: %w", err)
	}
	serial, err := newSerial()
	if err != nil {
		return nil, err
	}
	tmpl := &x509.Certificate{
		SerialNumber:          serial,
		Subject:               pkix.Name{CommonName: host},
		DNSNames:              []string{host},
		NotBefore:             now.Add(-backdate),
		NotAfter:              notAfter,
		KeyUsage:              x509.KeyUsageDigitalSignature,
		ExtKeyUsage:           []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
		BasicConstraintsValid: true,
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, ca.Cert, key.Public(), ca.Key)
	if err != nil {
		return nil, fmt.Errorf("pki: leaf for %s: %w", host, err)
	}
	cert, err := x509.ParseCertificate(der)
	if err != nil {
		return nil, fmt.Errorf("pki: leaf for %s: %w", host, err)
	}
	kder, err := x509.MarshalPKCS8PrivateKey(key)
	if err != nil {
		return nil, fmt.Errorf("pki: leaf key: %w", err)
	}
	return &Leaf{Host: host, Cert: cert, CertPEM: pemBlock("CERTIFICATE", der), KeyPEM: pemBlock("PRIVATE KEY", kder)}, nil
}

// RenewAt is when a certificate is due for renewal: two thirds into its
// life, so that a renewer that misses a turn or two still replaces it well
// before it expires.
func RenewAt(c *x509.Certificate) time.Time {
	life := c.NotAfter.Sub(c.NotBefore)
	return c.NotBefore.Add(life * 2 / 3)
}
