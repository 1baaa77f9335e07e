package pki_test

import (
	"crypto/x509"
	"encoding/pem"
)

// nextCert parses the first PEM certificate of data; nil when none is left.
func nextCert(data []byte) (*x509.Certificate, []byte, error) {
	b, rest := pem.Decode(data)
	if b == nil {
		return nil, nil, nil
	}
	c, err := x509.ParseCertificate(b.Bytes)
	return c, rest, err
}
