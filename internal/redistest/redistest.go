// Package redistest runs a real, throwaway redis-server for tests: one per
// test package, started from TestMain on a free loopback port with its data
// in a temporary directory. A missing redis-server binary fails the tests;
// it never skips them (`make test` installs the Debian package).
package redistest

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"
)

// Server is a redis-server child process listening on 127.0.0.1.
type Server struct {
	// Addr is host:port.
	Addr string

	bin   string
	dir   string
	port  int
	extra []string // more redis-server arguments (cluster mode)

	mu   sync.Mutex
	cmd  *exec.Cmd     // nil when stopped
	done chan struct{} // closed when cmd has exited and been reaped
}

// Start launches redis-server on a free loopback port. Its data (RDB
// snapshots when asked for) lives in a fresh temporary directory.
func Start() (*Server, error) { return startWith(nil) }

// startWith is Start with more redis-server arguments, made by extra from
// the server's port and data directory.
func startWith(extra func(port int, dir string) ([]string, error)) (*Server, error) {
	bin, err := findBinary()
	if err != nil {
		return nil, err
	}
	dir, err := os.MkdirTemp("", "tollgate-redis-")
	if err != nil {
		return nil, fmt.Errorf("redistest: %w", err)
	}
	port, err := freePort()
	if err != nil {
		return nil, err
	}
	s := &Server{Addr: net.JoinHostPort("127.0.0.1", strconv.Itoa(port)), bin: bin, dir: dir, port: port}
	if extra != nil {
		if s.extra, err = extra(port, dir); err != nil {
			_ = os.RemoveAll(dir)
			return nil, err
		}
	}
	if err := s.start(); err != nil {
		_ = os.RemoveAll(dir)
		return nil, err
	}
	return s, nil
}

func findBinary() (string, error) {
	if p, err := exec.LookPath("redis-server"); err == nil {
		return p, nil
	}
	for _, p := range []string{"/usr/bin/redis-server", "/usr/sbin/redis-server", "/usr/local/bin/redis-server"} {
		if _, err := os.Stat(p); err == nil {
			return p, nil
		}
	}
	return "", errors.New("redistest: redis-server not found: run `make test` (it installs the Debian package redis-server) or apt-get install redis-server")
}

func freePort() (int, error) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return 0, fmt.Errorf("redistest: %w", err)
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port, nil
}

func (s *Server) start() error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.running() {
		return nil // a second redis-server would race this one for the port
	}
	args := []string{
		"--port", strconv.Itoa(s.port), "--bind", "127.0.0.1", "--protected-mode", "no",
		"--dir", s.dir, "--dbfilename", "dump.rdb", "--save", "", "--appendonly", "no",
		"--daemonize", "no", "--loglevel", "warning", "--logfile", filepath.Join(s.dir, "redis.log")}
	cmd := exec.Command(s.bin, append(args, s.extra...)...)
	dieWithParent(cmd)
	if err := cmd.Start(); err != nil {
		return fmt.Errorf("redistest: start %s: %w", s.bin, err)
	}
	done := make(chan struct{})
	var waitErr error
	go func() {
		waitErr = cmd.Wait()
		close(done)
	}()
	s.cmd, s.done = cmd, done
	c := redis.NewClient(&redis.Options{Addr: s.Addr, MaxRetries: -1, DialTimeout: 100 * time.Millisecond})
	defer c.Close()
	deadline := time.Now().Add(10 * time.Second)
	for {
		select {
		case <-done:
			s.cmd = nil
			log, _ := os.ReadFile(filepath.Join(s.dir, "redis.log"))
			return fmt.Errorf("redistest: redis-server exited at start (%v): %s", waitErr, strings.TrimSpace(string(log)))
		default:
		}
		ctx, cancel := context.WithTimeout(context.Background(), 200*time.Millisecond)
		err := c.Ping(ctx).Err()
		cancel()
		if err == nil {
			return nil
		}
		if time.Now().After(deadline) {
			_ = cmd.Process.Kill()
			<-done
			s.cmd = nil
			return fmt.Errorf("redistest: redis-server on %s not answering: %w", s.Addr, err)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// running reports whether the server process is alive; s.mu is held.
func (s *Server) running() bool {
	if s.cmd == nil {
		return false
	}
	select {
	case <-s.done:
		s.cmd = nil // it died on its own
		return false
	default:
		return true
	}
}

// Stop shuts the server down and waits for its process to exit. With save,
// it writes a snapshot first, so a later Resume finds its data (as a Redis
// with persistence would after a restart); without, it also deletes any
// earlier snapshot, so the server comes back empty (as a Redis without
// persistence would) rather than with stale data. Stopping a stopped server
// does nothing.
func (s *Server) Stop(save bool) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.running() {
		c := redis.NewClient(&redis.Options{Addr: s.Addr, MaxRetries: -1})
		defer c.Close()
		mode := "NOSAVE"
		if save {
			mode = "SAVE"
		}
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		_ = c.Do(ctx, "SHUTDOWN", mode).Err() // the connection drops: an error is the normal answer
		select {
		case <-s.done:
		case <-ctx.Done():
			return fmt.Errorf("redistest: redis-server on %s did not stop", s.Addr)
		}
		s.cmd = nil
	}
	if !save {
		if err := os.Remove(filepath.Join(s.dir, "dump.rdb")); err != nil && !errors.Is(err, os.ErrNotExist) {
			return fmt.Errorf("redistest: %w", err)
		}
	}
	return nil
}

// Restart stops the server (saving a snapshot when save is set) and starts
// it again on the same address and data directory.
func (s *Server) Restart(save bool) error {
	if err := s.Stop(save); err != nil {
		return err
	}
	return s.Resume()
}

// Resume starts a stopped server again on the same address and data. It
// does nothing to a running server.
func (s *Server) Resume() error { return s.start() }

// Close stops the server and removes its data.
func (s *Server) Close() error {
	return errors.Join(s.Stop(false), os.RemoveAll(s.dir))
}

// Client returns a client of the server, closed when tb ends.
func (s *Server) Client(tb testing.TB) *redis.Client {
	tb.Helper()
	c := redis.NewClient(&redis.Options{Addr: s.Addr})
	tb.Cleanup(func() { _ = c.Close() })
	return c
}

// Prefix returns a key prefix of tb's own, so tests sharing the server never
// see each other's keys.
func Prefix(tb testing.TB) string {
	var b [4]byte
	_, _ = rand.Read(b[:])
	// No space, newline or brace: the prefix goes inside a Redis hash tag.
	name := strings.NewReplacer("/", ".", " ", "_", "\n", "_", "{", "(", "}", ")").Replace(tb.Name())
	return "t:" + name + ":" + hex.EncodeToString(b[:])
}

// Main runs a package's tests with one server started for all of them:
//
//	var srv *redistest.Server
//	func TestMain(m *testing.M) { os.Exit(redistest.Main(m, &srv)) }
//
// It fails (exit status 1) when redis-server cannot be started.
func Main(m *testing.M, srv **Server) int {
	s, err := Start()
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	*srv = s
	code := m.Run()
	if err := s.Close(); err != nil {
		fmt.Fprintln(os.Stderr, err)
	}
	return code
}
