package pki

import (
	"crypto/x509"
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"time"
)

// Config says where the CA and its leaves live and what they cover.
type Config struct {
	// Dir holds ca.crt, ca.key (0600) and leaves/<host>.crt (the leaves'
	// certificates, read back to decide renewal). Only the process that
	// renews should mount it.
	Dir string
	// SDSDir receives one Envoy SDS file per host, <host>.json (see
	// SDSFile): a DiscoveryResponse with a tls.v3.Secret named after the
	// host, certificate and key inline, so that one rename replaces both at
	// once. Envoy watches the directory (path_config_source with
	// watched_directory) and reloads without a restart. Files are 0640:
	// Envoy reads them through the pod's fsGroup.
	SDSDir string
	// TrustDir, if set, receives what the worker trusts: ca.crt, and
	// bundle.pem (SystemBundle's certificates followed by ca.crt) for
	// runtimes whose variable replaces the system roots (SSL_CERT_FILE,
	// REQUESTS_CA_BUNDLE).
	TrustDir string
	// SystemBundle is the system's CA bundle copied into bundle.pem ("":
	// bundle.pem holds ca.crt alone).
	SystemBundle string
	// Hosts are the names to issue leaves for (the policy's routed hosts).
	Hosts []string
	// CALife and LeafLife are the lifetimes of a new CA and of each leaf.
	CALife, LeafLife time.Duration
	// Remake replaces an existing CA that does not cover every host (Init
	// only); without it the CA is kept and those hosts get no leaf.
	Remake bool
}

// DefaultConfig: a CA for a year (a pod lives far less), leaves for a day.
func DefaultConfig() Config {
	return Config{CALife: 365 * 24 * time.Hour, LeafLife: 24 * time.Hour, SystemBundle: "/etc/ssl/certs/ca-certificates.crt"}
}

// Validate reports every problem at once.
func (c Config) Validate() error {
	var errs []error
	if c.Dir == "" {
		errs = append(errs, errors.New("pki: no CA directory"))
	}
	if c.SDSDir == "" {
		errs = append(errs, errors.New("pki: no SDS directory"))
	}
	if len(c.Hosts) == 0 {
		errs = append(errs, errors.New("pki: no host names: the policy routes no exact host"))
	}
	for _, h := range c.Hosts {
		if err := CheckHost(h); err != nil {
			errs = append(errs, err)
		}
	}
	if c.LeafLife <= 0 || c.CALife <= 0 {
		errs = append(errs, fmt.Errorf("pki: lifetimes must be positive (CA %v, leaf %v)", c.CALife, c.LeafLife))
	} else if c.LeafLife > c.CALife {
		errs = append(errs, fmt.Errorf("pki: leaf lifetime %v exceeds the CA's %v", c.LeafLife, c.CALife))
	}
	return errors.Join(errs...)
}

// Result is what Init or Renew did.
type Result struct {
	NewCA   bool
	Renewed []string  // hosts given a new leaf
	Next    time.Time // the earliest renewal due
	// Uncovered are hosts outside the CA's name constraints (the policy
	// routes a host added after the CA was made): they get no leaf, the
	// others are renewed as usual. A new CA (Remake) covers them.
	Uncovered []string
}

// SDSFile is the file name of host's SDS resource in SDSDir; the Secret
// inside is named host.
func SDSFile(host string) string {
	return strings.ReplaceAll(host, "*", "_") + ".json"
}

// Init makes the CA if Dir has none (or, with Remake, if the one there does
// not cover every host), writes the trust files, then renews. Without
// Remake an existing CA is kept even if hosts are uncovered (see
// Result.Uncovered): a restarted container must not replace the CA the
// running worker trusts.
func Init(cfg Config, now time.Time) (Result, error) {
	if err := cfg.Validate(); err != nil {
		return Result{}, err
	}
	ca, err := loadCA(cfg.Dir)
	newCA := false
	switch {
	case errors.Is(err, fs.ErrNotExist):
		newCA = true
	case err != nil:
		return Result{}, err
	default:
		if len(uncovered(ca, cfg.Hosts)) > 0 && cfg.Remake {
			newCA = true
		}
	}
	if newCA {
		if ca, err = NewCA(cfg.Hosts, now, cfg.CALife); err != nil {
			return Result{}, err
		}
		if err := saveCA(cfg.Dir, ca); err != nil {
			return Result{}, err
		}
		// Old leaves were signed by the old CA: drop them.
		if err := os.RemoveAll(filepath.Join(cfg.Dir, "leaves")); err != nil {
			return Result{}, fmt.Errorf("pki: %w", err)
		}
	}
	if cfg.TrustDir != "" {
		if err := writeTrust(cfg, ca); err != nil {
			return Result{}, err
		}
	}
	res, err := renew(cfg, ca, now)
	res.NewCA = newCA
	return res, err
}

// Renew issues a leaf for every host whose leaf is missing, unreadable, not
// the CA's, or past RenewAt; the others are left alone. Hosts the CA does
// not cover are listed in Result.Uncovered, not an error: the covered
// ones must keep being renewed.
func Renew(cfg Config, now time.Time) (Result, error) {
	if err := cfg.Validate(); err != nil {
		return Result{}, err
	}
	ca, err := loadCA(cfg.Dir)
	if err != nil {
		return Result{}, err
	}
	return renew(cfg, ca, now)
}

func renew(cfg Config, ca *CA, now time.Time) (Result, error) {
	if !now.Before(RenewAt(ca.Cert)) {
		return Result{}, fmt.Errorf("pki: the CA is due for replacement (expires %s): make a new one (tollgate ca init --remake) and restart the worker", ca.Cert.NotAfter.UTC().Format(time.RFC3339))
	}
	for _, d := range []string{filepath.Join(cfg.Dir, "leaves"), cfg.SDSDir} {
		if err := os.MkdirAll(d, 0o750); err != nil {
			return Result{}, fmt.Errorf("pki: %w", err)
		}
	}
	var res Result
	hosts := slices.Clone(cfg.Hosts)
	slices.Sort(hosts)
	for _, h := range slices.Compact(hosts) {
		if !ca.Covers(h) {
			res.Uncovered = append(res.Uncovered, h)
			continue
		}
		certPath := filepath.Join(cfg.Dir, "leaves", strings.TrimSuffix(SDSFile(h), ".json")+".crt")
		if c := currentLeaf(certPath, ca, h, cfg.SDSDir); c != nil && now.Before(RenewAt(c)) {
			res.Next = earliest(res.Next, RenewAt(c))
			continue
		}
		leaf, err := ca.Issue(h, now, cfg.LeafLife)
		if err != nil {
			return res, err
		}
		// The SDS file first: a crash between the two writes leaves an old
		// certificate on record, which the next turn renews again.
		sds, err := sdsJSON(leaf)
		if err != nil {
			return res, err
		}
		if err := writeAtomic(filepath.Join(cfg.SDSDir, SDSFile(h)), sds, 0o640); err != nil {
			return res, err
		}
		if err := writeAtomic(certPath, leaf.CertPEM, 0o644); err != nil {
			return res, err
		}
		res.Renewed = append(res.Renewed, h)
		res.Next = earliest(res.Next, RenewAt(leaf.Cert))
	}
	return res, nil
}

// currentLeaf is the recorded leaf for host if it is the CA's, names host,
// and its SDS file is in place; nil otherwise.
func currentLeaf(path string, ca *CA, host, sdsDir string) *x509.Certificate {
	data, err := os.ReadFile(path)
	if err != nil {
		return nil
	}
	c, err := parseCert(data)
	if err != nil || c.CheckSignatureFrom(ca.Cert) != nil || !slices.Equal(c.DNSNames, []string{host}) {
		return nil
	}
	if _, err := os.Stat(filepath.Join(sdsDir, SDSFile(host))); err != nil {
		return nil
	}
	return c
}

func earliest(a, b time.Time) time.Time {
	if a.IsZero() || b.Before(a) {
		return b
	}
	return a
}

func uncovered(ca *CA, hosts []string) []string {
	var out []string
	for _, h := range hosts {
		if !ca.Covers(h) {
			out = append(out, h)
		}
	}
	return out
}

func loadCA(dir string) (*CA, error) {
	certPEM, err := os.ReadFile(filepath.Join(dir, "ca.crt"))
	if err != nil {
		return nil, fmt.Errorf("pki: %w", err)
	}
	keyPEM, err := os.ReadFile(filepath.Join(dir, "ca.key"))
	if err != nil {
		return nil, fmt.Errorf("pki: %w", err)
	}
	return ParseCA(certPEM, keyPEM)
}

func saveCA(dir string, ca *CA) error {
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return fmt.Errorf("pki: %w", err)
	}
	key, err := ca.KeyPEM()
	if err != nil {
		return err
	}
	// The key before the certificate: a certificate on disk always has its
	// key beside it.
	if err := writeAtomic(filepath.Join(dir, "ca.key"), key, 0o600); err != nil {
		return err
	}
	return writeAtomic(filepath.Join(dir, "ca.crt"), ca.PEM, 0o644)
}

func writeTrust(cfg Config, ca *CA) error {
	if err := os.MkdirAll(cfg.TrustDir, 0o755); err != nil {
		return fmt.Errorf("pki: %w", err)
	}
	var bundle []byte
	if cfg.SystemBundle != "" {
		sys, err := os.ReadFile(cfg.SystemBundle)
		if err != nil {
			return fmt.Errorf("pki: system CA bundle (for bundle.pem): %w", err)
		}
		bundle = append(sys, '\n')
	}
	bundle = append(bundle, ca.PEM...)
	if err := writeAtomic(filepath.Join(cfg.TrustDir, "ca.crt"), ca.PEM, 0o644); err != nil {
		return err
	}
	return writeAtomic(filepath.Join(cfg.TrustDir, "bundle.pem"), bundle, 0o644)
}

// sdsJSON is an Envoy SDS file: a DiscoveryResponse whose one resource is
// the leaf as a tls.v3.Secret named after its host.
func sdsJSON(l *Leaf) ([]byte, error) {
	type inline struct {
		InlineString string `json:"inline_string"`
	}
	doc := map[string]any{"resources": []any{map[string]any{
		"@type": "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.Secret",
		"name":  l.Host,
		"tls_certificate": map[string]any{
			"certificate_chain": inline{string(l.CertPEM)},
			"private_key":       inline{string(l.KeyPEM)},
		},
	}}}
	out, err := json.MarshalIndent(doc, "", "  ")
	if err != nil {
		return nil, fmt.Errorf("pki: SDS file: %w", err)
	}
	return append(out, '\n'), nil
}

// writeAtomic writes data to a temporary file beside path and renames it
// into place, so that a reader (Envoy's directory watch) sees the old file
// or the new one, never half of one.
func writeAtomic(path string, data []byte, perm os.FileMode) error {
	f, err := os.CreateTemp(filepath.Dir(path), "."+filepath.Base(path)+".tmp-*")
	if err != nil {
		return fmt.Errorf("pki: %w", err)
	}
	tmp := f.Name()
	_, werr := f.Write(data)
	errs := []error{werr, f.Chmod(perm), f.Sync(), f.Close()}
	if err := errors.Join(errs...); err != nil {
		return errors.Join(fmt.Errorf("pki: write %s: %w", path, err), os.Remove(tmp))
	}
	if err := os.Rename(tmp, path); err != nil {
		return errors.Join(fmt.Errorf("pki: %w", err), os.Remove(tmp))
	}
	return nil
}
