package redisstore

import (
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"os"
	"slices"
	"time"

	"github.com/redis/go-redis/v9"
)

// Modes of deployment a client can talk to.
const (
	ModeSingle   = "single"
	ModeSentinel = "sentinel"
	ModeCluster  = "cluster"
)

// ClientConfig describes how to reach Redis.
type ClientConfig struct {
	// Addrs are host:port: the server (single), the sentinels, or cluster
	// seed nodes.
	Addrs      []string
	Mode       string
	MasterName string // sentinel only
	Username   string
	Password   string
	DB         int // single and sentinel only
	TLS        bool
	TLSCAFile  string // PEM bundle to verify the server; empty: system roots
	TLSServer  string // server name to verify; empty: from the address
	PoolSize   int    // 0: go-redis's default (10 per CPU)
	// Timeouts bound every call: a check never waits on Redis longer than
	// DialTimeout + ReadTimeout + WriteTimeout, and Envoy's own deadline
	// (propagated in the context) cuts it shorter.
	DialTimeout  time.Duration
	ReadTimeout  time.Duration
	WriteTimeout time.Duration
}

// DefaultClientConfig is a local single server with timeouts that keep a
// check well inside Envoy's ext_authz timeout.
func DefaultClientConfig() ClientConfig {
	return ClientConfig{
		Addrs: []string{"127.0.0.1:6379"}, Mode: ModeSingle,
		DialTimeout: 250 * time.Millisecond, ReadTimeout: 100 * time.Millisecond, WriteTimeout: 100 * time.Millisecond,
	}
}

// Validate reports a configuration that cannot work.
func (c ClientConfig) Validate() error {
	var errs []error
	if len(c.Addrs) == 0 || slices.Contains(c.Addrs, "") {
		errs = append(errs, errors.New("redis: at least one address is needed"))
	}
	switch c.Mode {
	case ModeSingle:
		if len(c.Addrs) > 1 {
			errs = append(errs, errors.New("redis: single mode takes one address (use --redis-mode cluster or sentinel for more)"))
		}
	case ModeSentinel:
		if c.MasterName == "" {
			errs = append(errs, errors.New("redis: sentinel mode needs the master name"))
		}
	case ModeCluster:
		if c.DB != 0 {
			errs = append(errs, errors.New("redis: cluster mode has only database 0"))
		}
	default:
		errs = append(errs, fmt.Errorf("redis: mode %q: want single, sentinel or cluster", c.Mode))
	}
	if c.DB < 0 || c.PoolSize < 0 || c.DialTimeout <= 0 || c.ReadTimeout <= 0 || c.WriteTimeout <= 0 {
		errs = append(errs, errors.New("redis: db and pool size must not be negative, and timeouts must be positive"))
	}
	return errors.Join(errs...)
}

// noResend is go-redis's MaxRetries for Tollgate's clients: none. A call
// whose reply did not come in time may still have run (Redis was busy and
// served it later), and a script sent twice applies twice: a refund gives
// units back twice, a lease takes them twice, a commit charges twice. The
// store's callers decide what a failed call means (the fleet's members
// tell a slow Redis from one that is down); a dial is still retried once
// (DialerRetries), since nothing was sent.
const noResend = -1

// NewClient connects lazily to the Redis that cfg describes.
func NewClient(cfg ClientConfig) (redis.UniversalClient, error) {
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	var tc *tls.Config
	if cfg.TLS {
		tc = &tls.Config{MinVersion: tls.VersionTLS12, ServerName: cfg.TLSServer}
		if cfg.TLSCAFile != "" {
			pem, err := os.ReadFile(cfg.TLSCAFile)
			if err != nil {
				return nil, fmt.Errorf("redis: TLS CA: %w", err)
			}
			tc.RootCAs = x509.NewCertPool()
			if !tc.RootCAs.AppendCertsFromPEM(pem) {
				return nil, fmt.Errorf("redis: TLS CA %s holds no PEM certificates", cfg.TLSCAFile)
			}
		}
	}
	switch cfg.Mode {
	case ModeCluster:
		return redis.NewClusterClient(&redis.ClusterOptions{
			Addrs: cfg.Addrs, Username: cfg.Username, Password: cfg.Password, TLSConfig: tc, PoolSize: cfg.PoolSize,
			DialTimeout: cfg.DialTimeout, ReadTimeout: cfg.ReadTimeout, WriteTimeout: cfg.WriteTimeout,
			ContextTimeoutEnabled: true, MaxRetries: noResend, DialerRetries: 1,
		}), nil
	case ModeSentinel:
		return redis.NewFailoverClient(&redis.FailoverOptions{
			MasterName: cfg.MasterName, SentinelAddrs: cfg.Addrs, Username: cfg.Username, Password: cfg.Password,
			DB: cfg.DB, TLSConfig: tc, PoolSize: cfg.PoolSize,
			DialTimeout: cfg.DialTimeout, ReadTimeout: cfg.ReadTimeout, WriteTimeout: cfg.WriteTimeout,
			ContextTimeoutEnabled: true, MaxRetries: noResend, DialerRetries: 1,
		}), nil
	default:
		return redis.NewClient(&redis.Options{
			Addr: cfg.Addrs[0], Username: cfg.Username, Password: cfg.Password, DB: cfg.DB, TLSConfig: tc, PoolSize: cfg.PoolSize,
			DialTimeout: cfg.DialTimeout, ReadTimeout: cfg.ReadTimeout, WriteTimeout: cfg.WriteTimeout,
			ContextTimeoutEnabled: true, MaxRetries: noResend, DialerRetries: 1,
		}), nil
	}
}
