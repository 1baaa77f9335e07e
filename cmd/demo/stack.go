package main

import (
	"bufio"
	"context"
	"crypto/rand"
	"encoding/base64"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"sync"
	"time"

	authv3 "github.com/envoyproxy/go-control-plane/envoy/service/auth/v3"
	extprocv3 "github.com/envoyproxy/go-control-plane/envoy/service/ext_proc/v3"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"

	"github.com/tollgate/tollgate/internal/envoysim"
	"github.com/tollgate/tollgate/internal/redistest"
)

// stackConfig names the pieces the demo starts.
type stackConfig struct {
	Tollgate    string // the tollgate binary
	FakeAPI     string // the fakeapi binary
	Policy      string
	EnvoyConfig string
	Members     int // Tollgates in the fleet, each behind its own Envoy stand-in
	Log         io.Writer
}

// member is one pod of the demo: a `tollgate serve --cluster` process and
// the Envoy stand-in in front of it.
type member struct {
	name     string
	grpcAddr string
	httpAddr string
	apiAddr  string
	gossip   string
	front    string // base URL of the stand-in's openai listener
	proc     *exec.Cmd
	exited   chan error
	conn     *grpc.ClientConn
	proxy    *envoysim.Proxy
	server   *http.Server
}

// stack is everything the demo runs; close stops it all, in reverse.
type stack struct {
	redis    *redistest.Server
	fakeapi  *exec.Cmd
	fakeDone chan error
	upstream string
	members  []*member
	apiToken string
	closers  []func() error
}

func (s *stack) close() error {
	var errs []error
	for i := len(s.closers) - 1; i >= 0; i-- {
		errs = append(errs, s.closers[i]())
	}
	return errors.Join(errs...)
}

// startStack starts Redis, the fake provider, the fleet and one Envoy
// stand-in per member. On error it stops what it started.
func startStack(ctx context.Context, cfg stackConfig) (_ *stack, err error) {
	s := &stack{apiToken: randHex(16)}
	defer func() {
		if err != nil {
			err = errors.Join(err, s.close())
		}
	}()
	for _, bin := range []string{cfg.Tollgate, cfg.FakeAPI} {
		if _, err := os.Stat(bin); err != nil {
			return nil, fmt.Errorf("%w (run `make demo`, which builds it)", err)
		}
	}

	s.redis, err = redistest.Start()
	if err != nil {
		return nil, err
	}
	s.closers = append(s.closers, s.redis.Close)

	if err := s.startFakeAPI(ctx, cfg); err != nil {
		return nil, err
	}
	listeners, err := envoysim.Load(cfg.EnvoyConfig)
	if err != nil {
		return nil, err
	}
	openai, ok := listeners["openai"]
	if !ok {
		return nil, fmt.Errorf("%s has no openai listener", cfg.EnvoyConfig)
	}

	gossipKey := make([]byte, 32)
	_, _ = rand.Read(gossipKey)
	env := append(cleanEnv(), "TOLLGATE_GOSSIP_KEY="+base64.StdEncoding.EncodeToString(gossipKey), "TOLLGATE_API_TOKEN="+s.apiToken)
	for i := range cfg.Members {
		m := &member{name: fmt.Sprintf("pod-%c", 'a'+i)}
		if m.grpcAddr, err = freeAddr(); err != nil {
			return nil, err
		}
		if m.httpAddr, err = freeAddr(); err != nil {
			return nil, err
		}
		if m.apiAddr, err = freeAddr(); err != nil {
			return nil, err
		}
		if m.gossip, err = freeAddr(); err != nil {
			return nil, err
		}
		var seeds []string
		for _, o := range s.members {
			seeds = append(seeds, o.gossip)
		}
		if err := s.startMember(ctx, cfg, m, seeds, env); err != nil {
			return nil, err
		}
		if err := s.front(m, openai); err != nil {
			return nil, err
		}
		s.members = append(s.members, m)
	}
	return s, nil
}

// startFakeAPI runs cmd/fakeapi on a free port: it prints its address.
func (s *stack) startFakeAPI(ctx context.Context, cfg stackConfig) error {
	cmd := exec.Command(cfg.FakeAPI, "--addr", "127.0.0.1:0")
	dieWithParent(cmd)
	cmd.Stderr = cfg.Log
	out, err := cmd.StdoutPipe()
	if err != nil {
		return err
	}
	if err := cmd.Start(); err != nil {
		return fmt.Errorf("fakeapi: %w", err)
	}
	s.fakeapi, s.fakeDone = cmd, make(chan error, 1)
	go func() { s.fakeDone <- cmd.Wait() }()
	s.closers = append(s.closers, func() error { return stop(cmd, s.fakeDone, 5*time.Second) })
	line := make(chan string, 1)
	go func() {
		sc := bufio.NewScanner(out)
		if sc.Scan() {
			line <- sc.Text()
		}
		close(line)
		_, _ = io.Copy(io.Discard, out)
	}()
	select {
	case addr, ok := <-line:
		if !ok {
			return errors.New("fakeapi exited before printing its address")
		}
		s.upstream = strings.TrimSpace(addr)
		return nil
	case <-time.After(10 * time.Second):
		return errors.New("fakeapi did not print its address within 10s")
	case <-ctx.Done():
		return ctx.Err()
	}
}

// startMember runs `tollgate serve` as one fleet member on the Redis
// store and waits until /readyz answers 200.
func (s *stack) startMember(ctx context.Context, cfg stackConfig, m *member, seeds []string, env []string) error {
	_, gossipPort, _ := net.SplitHostPort(m.gossip)
	args := []string{"serve",
		"--grpc-addr=" + m.grpcAddr, "--http-addr=" + m.httpAddr, "--api-addr=" + m.apiAddr,
		"--policy=" + cfg.Policy,
		"--store=redis", "--redis-addr=" + s.redis.Addr,
		"--cluster", "--node-name=" + m.name, "--gossip-addr=127.0.0.1", "--gossip-port=" + gossipPort,
		"--drain-delay=0s", "--log-level=warn",
	}
	if len(seeds) > 0 {
		args = append(args, "--cluster-seeds="+strings.Join(seeds, ","))
	}
	cmd := exec.Command(cfg.Tollgate, args...)
	dieWithParent(cmd)
	cmd.Env = env
	cmd.Stdout, cmd.Stderr = cfg.Log, cfg.Log
	if err := cmd.Start(); err != nil {
		return fmt.Errorf("%s: %w", m.name, err)
	}
	m.proc, m.exited = cmd, make(chan error, 1)
	go func() { m.exited <- cmd.Wait() }()
	s.closers = append(s.closers, func() error { return stop(cmd, m.exited, 20*time.Second) })

	deadline := time.Now().Add(20 * time.Second)
	for {
		if httpOK("http://" + m.httpAddr + "/readyz") {
			return nil
		}
		select {
		case err := <-m.exited:
			m.exited <- err
			return fmt.Errorf("%s: tollgate serve exited at start: %v", m.name, err)
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(100 * time.Millisecond):
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("%s: not ready within 20s on http://%s/readyz", m.name, m.httpAddr)
		}
	}
}

// front puts the Envoy stand-in, running the sidecar config's openai
// listener, in front of member m, forwarding to the fake provider.
func (s *stack) front(m *member, l *envoysim.Listener) error {
	conn, err := grpc.NewClient(m.grpcAddr, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		return err
	}
	s.closers = append(s.closers, conn.Close)
	p, err := envoysim.New(envoysim.Config{Listener: l, Authz: authv3.NewAuthorizationClient(conn),
		Proc: extprocv3.NewExternalProcessorClient(conn), Upstream: s.upstream, Logger: slog.New(slog.DiscardHandler)})
	if err != nil {
		return err
	}
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return err
	}
	srv := &http.Server{Handler: p, ReadHeaderTimeout: 10 * time.Second}
	var wg sync.WaitGroup
	wg.Add(1)
	go func() { defer wg.Done(); _ = srv.Serve(lis) }()
	s.closers = append(s.closers, func() error {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		err := srv.Shutdown(ctx)
		wg.Wait()
		p.Close()
		return err
	})
	m.conn, m.proxy, m.server, m.front = conn, p, srv, "http://"+lis.Addr().String()
	return nil
}

// stop asks a child to stop (SIGTERM: Tollgate drains and exits 0) and
// kills it after grace.
func stop(cmd *exec.Cmd, exited chan error, grace time.Duration) error {
	select {
	case err := <-exited:
		exited <- err
		return nil // already gone; its error was reported when it happened
	default:
	}
	_ = cmd.Process.Signal(os.Interrupt)
	select {
	case err := <-exited:
		exited <- err
		if err != nil {
			return fmt.Errorf("%s: %w", cmd.Path, err)
		}
		return nil
	case <-time.After(grace):
		_ = cmd.Process.Kill()
		err := <-exited
		exited <- err
		return fmt.Errorf("%s did not stop within %s; killed", cmd.Path, grace)
	}
}

// cleanEnv is the demo's environment without TOLLGATE_* variables: every
// serve flag also reads TOLLGATE_<FLAG>, and the demo sets its own.
func cleanEnv() []string {
	var out []string
	for _, kv := range os.Environ() {
		if !strings.HasPrefix(kv, "TOLLGATE_") {
			out = append(out, kv)
		}
	}
	return out
}

func freeAddr() (string, error) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return "", err
	}
	defer l.Close()
	return net.JoinHostPort("127.0.0.1", strconv.Itoa(l.Addr().(*net.TCPAddr).Port)), nil
}

var plainHTTP = &http.Client{Timeout: 2 * time.Second, Transport: &http.Transport{DisableKeepAlives: true}}

func httpOK(url string) bool {
	resp, err := plainHTTP.Get(url)
	if err != nil {
		return false
	}
	_, _ = io.Copy(io.Discard, resp.Body)
	_ = resp.Body.Close()
	return resp.StatusCode == http.StatusOK
}

func randHex(n int) string {
	b := make([]byte, n)
	_, _ = rand.Read(b)
	return hex.EncodeToString(b)
}
