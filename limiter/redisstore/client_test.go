package redisstore_test

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"errors"
	"fmt"
	"io"
	"math/big"
	"net"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/tollgate/tollgate/limiter/redisstore"
)

func TestClientConfigValidate(t *testing.T) {
	tests := map[string]struct {
		edit func(*redisstore.ClientConfig)
		// wantErrs are substrings of the error, one per problem; none means valid.
		wantErrs []string
	}{
		"default": {edit: func(*redisstore.ClientConfig) {}},
		"sentinel": {edit: func(c *redisstore.ClientConfig) {
			c.Mode, c.MasterName, c.Addrs, c.DB = redisstore.ModeSentinel, "mymaster", []string{"s1:26379", "s2:26379"}, 2
		}},
		"cluster": {edit: func(c *redisstore.ClientConfig) {
			c.Mode, c.Addrs = redisstore.ModeCluster, []string{"n1:6379", "n2:6379", "n3:6379"}
		}},
		"pool size zero means the default": {edit: func(c *redisstore.ClientConfig) { c.PoolSize = 0 }},
		"no addresses": {
			edit: func(c *redisstore.ClientConfig) { c.Addrs = nil }, wantErrs: []string{"at least one address"},
		},
		"an empty address": {
			edit: func(c *redisstore.ClientConfig) { c.Addrs = []string{""} }, wantErrs: []string{"at least one address"},
		},
		"single with two addresses": {
			edit:     func(c *redisstore.ClientConfig) { c.Addrs = []string{"a:6379", "b:6379"} },
			wantErrs: []string{"single mode takes one address"},
		},
		"sentinel without a master": {
			edit:     func(c *redisstore.ClientConfig) { c.Mode = redisstore.ModeSentinel },
			wantErrs: []string{"needs the master name"},
		},
		"cluster with database 1": {
			edit:     func(c *redisstore.ClientConfig) { c.Mode, c.DB = redisstore.ModeCluster, 1 },
			wantErrs: []string{"only database 0"},
		},
		"negative database": {
			edit: func(c *redisstore.ClientConfig) { c.DB = -1 }, wantErrs: []string{"must not be negative"},
		},
		"negative pool": {
			edit: func(c *redisstore.ClientConfig) { c.PoolSize = -1 }, wantErrs: []string{"must not be negative"},
		},
		"zero dial timeout": {
			edit: func(c *redisstore.ClientConfig) { c.DialTimeout = 0 }, wantErrs: []string{"timeouts must be positive"},
		},
		"zero read timeout": {
			edit: func(c *redisstore.ClientConfig) { c.ReadTimeout = 0 }, wantErrs: []string{"timeouts must be positive"},
		},
		"negative write timeout": {
			edit: func(c *redisstore.ClientConfig) { c.WriteTimeout = -time.Second }, wantErrs: []string{"timeouts must be positive"},
		},
		"bad mode": {
			edit: func(c *redisstore.ClientConfig) { c.Mode = "ring" }, wantErrs: []string{`mode "ring"`},
		},
		"empty mode": {
			edit: func(c *redisstore.ClientConfig) { c.Mode = "" }, wantErrs: []string{`mode ""`},
		},
		"every problem at once": {
			edit: func(c *redisstore.ClientConfig) {
				c.Addrs, c.Mode, c.PoolSize = nil, "ring", -1
			},
			wantErrs: []string{"at least one address", `mode "ring"`, "must not be negative"},
		},
	}
	for name, tc := range tests {
		t.Run(name, func(t *testing.T) {
			cfg := redisstore.DefaultClientConfig()
			tc.edit(&cfg)
			err := cfg.Validate()
			if len(tc.wantErrs) == 0 {
				require.NoError(t, err)
				return
			}
			require.Error(t, err)
			for _, want := range tc.wantErrs {
				assert.ErrorContains(t, err, want)
			}
			_, err = redisstore.NewClient(cfg)
			assert.Error(t, err, "NewClient validates too")
		})
	}
}

func TestNewClientSingle(t *testing.T) {
	cfg := redisstore.DefaultClientConfig()
	cfg.Addrs = []string{srv.Addr}
	c, err := redisstore.NewClient(cfg)
	require.NoError(t, err)
	t.Cleanup(func() { assert.NoError(t, c.Close()) })
	require.NoError(t, c.Ping(context.Background()).Err())

	s, err := redisstore.New(c, redisstore.Config{Prefix: "client-test"})
	require.NoError(t, err)
	require.NoError(t, s.Load(context.Background()), "scripts load through a NewClient client")
}

// TestNewClientModes constructs a client of each deployment: go-redis
// dials lazily, so no server is needed (the addresses lead nowhere).
func TestNewClientModes(t *testing.T) {
	tests := map[string]struct {
		cfg  redisstore.ClientConfig
		want redis.UniversalClient
	}{
		"single": {
			cfg:  redisstore.ClientConfig{Mode: redisstore.ModeSingle, Addrs: []string{"127.0.0.1:1"}},
			want: (*redis.Client)(nil),
		},
		"sentinel": {
			cfg:  redisstore.ClientConfig{Mode: redisstore.ModeSentinel, MasterName: "mymaster", Addrs: []string{"127.0.0.1:1", "127.0.0.1:2"}},
			want: (*redis.Client)(nil), // a failover client is a *redis.Client
		},
		"cluster": {
			cfg:  redisstore.ClientConfig{Mode: redisstore.ModeCluster, Addrs: []string{"127.0.0.1:1", "127.0.0.1:2"}},
			want: (*redis.ClusterClient)(nil),
		},
		"tls with system roots": {
			cfg:  redisstore.ClientConfig{Mode: redisstore.ModeSingle, Addrs: []string{"127.0.0.1:1"}, TLS: true, TLSServer: "redis.example"},
			want: (*redis.Client)(nil),
		},
	}
	for name, tc := range tests {
		t.Run(name, func(t *testing.T) {
			cfg := tc.cfg
			cfg.DialTimeout, cfg.ReadTimeout, cfg.WriteTimeout = time.Second, time.Second, time.Second
			c, err := redisstore.NewClient(cfg)
			require.NoError(t, err)
			require.NotNil(t, c)
			t.Cleanup(func() { assert.NoError(t, c.Close()) })
			assert.IsType(t, tc.want, c)
		})
	}
}

func TestNewClientTLSCA(t *testing.T) {
	dir := t.TempDir()
	notPEM := filepath.Join(dir, "not.pem")
	require.NoError(t, os.WriteFile(notPEM, []byte("this is not a certificate\n"), 0o600))
	emptyPEM := filepath.Join(dir, "empty.pem")
	require.NoError(t, os.WriteFile(emptyPEM, nil, 0o600))

	tests := map[string]struct {
		file    string
		wantErr string
	}{
		"missing file":   {file: filepath.Join(dir, "missing.pem"), wantErr: "TLS CA"},
		"not PEM":        {file: notPEM, wantErr: "holds no PEM certificates"},
		"empty":          {file: emptyPEM, wantErr: "holds no PEM certificates"},
		"a directory":    {file: dir, wantErr: "TLS CA"},
		"TLS turned off": {file: filepath.Join(dir, "missing.pem")}, // the file is not read
	}
	for name, tc := range tests {
		t.Run(name, func(t *testing.T) {
			cfg := redisstore.DefaultClientConfig()
			cfg.TLS, cfg.TLSCAFile = tc.wantErr != "", tc.file
			c, err := redisstore.NewClient(cfg)
			if tc.wantErr == "" {
				require.NoError(t, err)
				assert.NoError(t, c.Close())
				return
			}
			require.ErrorContains(t, err, tc.wantErr)
			assert.Nil(t, c)
		})
	}
}

func TestNewClientTLSConfig(t *testing.T) {
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	require.NoError(t, err)
	tmpl := &x509.Certificate{
		SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: "test CA"},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Hour),
		IsCA: true, BasicConstraintsValid: true, KeyUsage: x509.KeyUsageCertSign,
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	require.NoError(t, err)
	ca := filepath.Join(t.TempDir(), "ca.pem")
	require.NoError(t, os.WriteFile(ca, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}), 0o600))

	cfg := redisstore.DefaultClientConfig()
	cfg.TLS, cfg.TLSCAFile, cfg.TLSServer = true, ca, "redis.internal"
	c, err := redisstore.NewClient(cfg)
	require.NoError(t, err)
	t.Cleanup(func() { assert.NoError(t, c.Close()) })
	tc := c.(*redis.Client).Options().TLSConfig
	require.NotNil(t, tc)
	assert.Equal(t, "redis.internal", tc.ServerName)
	assert.Equal(t, uint16(tls.VersionTLS12), tc.MinVersion)
	require.NotNil(t, tc.RootCAs, "the CA file replaces the system roots")
	assert.True(t, tc.RootCAs.Equal(func() *x509.CertPool {
		p := x509.NewCertPool()
		cert, err := x509.ParseCertificate(der)
		require.NoError(t, err)
		p.AddCert(cert)
		return p
	}()))
}

// TestUnavailable: what a fleet member takes for Redis being away (and
// decides on its own share), and what for Redis refusing a call.
func TestUnavailable(t *testing.T) {
	ctx := context.Background()
	dead := redis.NewClient(&redis.Options{Addr: "127.0.0.1:1", MaxRetries: -1, DialTimeout: 100 * time.Millisecond})
	t.Cleanup(func() { _ = dead.Close() })
	refused := dead.Ping(ctx).Err()
	require.Error(t, refused)

	live := srv.Client(t)
	scriptErr := live.Eval(ctx, "return redis.error_reply('ERR boom')", nil).Err()
	require.Error(t, scriptErr)
	closed := redis.NewClient(&redis.Options{Addr: srv.Addr})
	require.NoError(t, closed.Close())

	tests := map[string]struct {
		err  error
		want bool
	}{
		"nil":                        {nil, false},
		"connection refused":         {refused, true},
		"wrapped connection refused": {fmt.Errorf("redisstore: reserve: %w", refused), true},
		"a closed client":            {closed.Ping(ctx).Err(), true},
		"EOF":                        {io.EOF, true},
		"a timeout":                  {context.DeadlineExceeded, true},
		"a script error":             {scriptErr, false},
		"loading after a restart":    {fmt.Errorf("redisstore: lease: %w", replyErr("LOADING Redis is loading the dataset in memory")), true},
		"a replica after a failover": {replyErr("READONLY You can't write against a read only replica."), true},
		"a refusal":                  {replyErr("ERR unknown command"), false},
		"a plain error":              {errors.New("redisstore: reply has 3 values"), false},
	}
	for name, tc := range tests {
		t.Run(name, func(t *testing.T) {
			assert.Equal(t, tc.want, redisstore.Unavailable(tc.err))
		})
	}
}

func TestUnsent(t *testing.T) {
	ctx := context.Background()
	dead := redis.NewClient(&redis.Options{Addr: "127.0.0.1:1", MaxRetries: -1, DialTimeout: 100 * time.Millisecond})
	t.Cleanup(func() { _ = dead.Close() })
	refused := dead.Ping(ctx).Err()
	require.Error(t, refused)
	closed := redis.NewClient(&redis.Options{Addr: srv.Addr})
	require.NoError(t, closed.Close())
	late := &net.OpError{Op: "read", Net: "tcp", Err: os.ErrDeadlineExceeded}

	tests := map[string]struct {
		err  error
		want bool
	}{
		"nil":                        {nil, false},
		"connection refused":         {refused, true},
		"wrapped connection refused": {fmt.Errorf("redisstore: adjust: %w", refused), true},
		"a closed client":            {closed.Ping(ctx).Err(), true},
		"no free connection":         {redis.ErrPoolTimeout, true},
		"busy running a script":      {replyErr("BUSY Redis is busy running a script."), true},
		"loading after a restart":    {replyErr("LOADING Redis is loading the dataset in memory"), true},
		"a reply too late":           {fmt.Errorf("redisstore: adjust: %w", late), false},
		"a connection lost":          {io.EOF, false},
		"the caller's deadline":      {context.DeadlineExceeded, false},
		"a refusal":                  {replyErr("ERR unknown command"), false},
	}
	for name, tc := range tests {
		t.Run(name, func(t *testing.T) {
			assert.Equal(t, tc.want, redisstore.Unsent(tc.err))
		})
	}
}

// replyErr is an error reply as go-redis hands it back.
type replyErr string

func (e replyErr) Error() string { return string(e) }
func (replyErr) RedisError()     {}

// TestRoundTripsHook: a command is one round trip, and so is a pipeline.
func TestRoundTripsHook(t *testing.T) {
	ctx := context.Background()
	c := redis.NewClient(&redis.Options{Addr: srv.Addr, PoolSize: 1})
	t.Cleanup(func() { _ = c.Close() })
	rt := &redisstore.RoundTrips{}
	c.AddHook(rt)
	pipeline := func() {
		_, err := c.Pipelined(ctx, func(p redis.Pipeliner) error {
			p.Ping(ctx)
			p.Ping(ctx)
			return nil
		})
		require.NoError(t, err)
	}
	require.NoError(t, c.Ping(ctx).Err()) // the connection's handshake is a round trip too: warm it first
	pipeline()
	before := rt.Count()
	require.NoError(t, c.Ping(ctx).Err())
	require.NoError(t, c.Ping(ctx).Err())
	pipeline()
	assert.Equal(t, int64(3), rt.Count()-before, "two commands and a pipeline")
}
