package pki_test

import (
	"testing"
	"time"

	"github.com/tollgate/tollgate/internal/pki"
)

// FuzzParseCA: any bytes for the CA files give a CA or an error, never a
// panic.
func FuzzParseCA(f *testing.F) {
	ca, err := pki.NewCA([]string{"api.openai.com"}, time.Unix(1_700_000_000, 0), time.Hour)
	if err != nil {
		f.Fatal(err)
	}
	key, err := ca.KeyPEM()
	if err != nil {
		f.Fatal(err)
	}
	f.Add(ca.PEM, key)
	f.Add([]byte("-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n"), []byte(""))
	f.Fuzz(func(t *testing.T, cert, key []byte) {
		_, _ = pki.ParseCA(cert, key)
	})
}

// FuzzCheckHost: what CheckHost accepts, NewCA and Issue accept too.
func FuzzCheckHost(f *testing.F) {
	for _, s := range []string{"api.openai.com", "*.example.com", "10.0.0.1", "", "a..b"} {
		f.Add(s)
	}
	now := time.Unix(1_700_000_000, 0)
	f.Fuzz(func(t *testing.T, h string) {
		if pki.CheckHost(h) != nil {
			return
		}
		ca, err := pki.NewCA([]string{h}, now, time.Hour)
		if err != nil {
			t.Fatalf("NewCA(%q): %v", h, err)
		}
		if _, err := ca.Issue(h, now, time.Minute); err != nil {
			t.Fatalf("Issue(%q): %v", h, err)
		}
	})
}
