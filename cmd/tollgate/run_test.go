package main

import (
	"bytes"
	"context"
	"errors"
	"io"
	"net"
	"net/http"
	"path/filepath"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// TestServeTour is the README tour: three quick calls pass; a fourth that
// may not wait (class immediate) is refused with 429 and Retry-After; one
// that may (the default class, normal) is held until the pool refills and
// then passes; cancelling the context (SIGTERM) stops the server cleanly.
func TestServeTour(t *testing.T) {
	grpcAddr, httpAddr := freePort(t), freePort(t)
	srv := startRun(t, noEnv, httpAddr, serveArgs(grpcAddr, httpAddr, "--policy", tourPolicy)...)

	for i := range 3 {
		out, err := probeTour(grpcAddr)
		require.NoError(t, err, "call %d: %s", i+1, out)
		assert.Contains(t, out, "decision: ALLOWED")
	}

	out, err := probeTour(grpcAddr, "--header", "x-tollgate-priority: immediate")
	var ee *exitError
	require.ErrorAs(t, err, &ee, out)
	assert.Equal(t, exitDenied, ee.code)
	assert.Equal(t, 3, exitCode(err, io.Discard))
	assert.Contains(t, out, "DENIED")
	assert.Contains(t, out, "429")
	assert.Contains(t, out, "retry-after: 1")

	// The pool refills one request a second, in real time: a normal call is
	// held for it.
	out, err = probeTour(grpcAddr)
	require.NoError(t, err, out)
	assert.Contains(t, out, "decision: ALLOWED")
	assert.Regexp(t, `x-tollgate-queue-wait: (0\.[1-9]|1\.)\d*`, out, "held until the refill")

	require.NoError(t, srv.stop(t))
	assert.Contains(t, srv.stderr.String(), "stopped")
}

func TestServeEnvironment(t *testing.T) {
	t.Run("env vars are honoured", func(t *testing.T) {
		grpcAddr, httpAddr := freePort(t), freePort(t)
		srv := startRun(t, env(map[string]string{
			"TOLLGATE_GRPC_ADDR":   grpcAddr,
			"TOLLGATE_HTTP_ADDR":   httpAddr,
			"TOLLGATE_POLICY":      tourPolicy,
			"TOLLGATE_DRAIN_DELAY": "0s",
			"TOLLGATE_LOG_FORMAT":  "json",
		}), httpAddr, "serve")

		// The tour policy is in force, not the bundled one.
		out, err := probeTour(grpcAddr)
		require.NoError(t, err, out)
		assert.Contains(t, out, "x-ratelimit-limit: 3")

		require.NoError(t, srv.stop(t))
		assert.Contains(t, srv.stderr.String(), `"msg":"stopped"`, "TOLLGATE_LOG_FORMAT=json")
	})

	t.Run("a flag beats the env var", func(t *testing.T) {
		grpcAddr, httpAddr := freePort(t), freePort(t)
		srv := startRun(t, env(map[string]string{
			"TOLLGATE_GRPC_ADDR":   grpcAddr,
			"TOLLGATE_HTTP_ADDR":   "127.0.0.1:bogus", // would fail to bind
			"TOLLGATE_POLICY":      filepath.Join(t.TempDir(), "missing.yaml"),
			"TOLLGATE_DRAIN_DELAY": "abc", // would fail to parse
		}), httpAddr, "serve", "--http-addr", httpAddr, "--policy", tourPolicy, "--drain-delay", "0")
		require.NoError(t, srv.stop(t))
	})

	t.Run("probe reads its flags from env too", func(t *testing.T) {
		grpcAddr, httpAddr := freePort(t), freePort(t)
		startRun(t, noEnv, httpAddr, serveArgs(grpcAddr, httpAddr, "--policy", tourPolicy)...)
		var out bytes.Buffer
		err := run(context.Background(), []string{"probe"}, env(map[string]string{
			"TOLLGATE_ADDR":   grpcAddr,
			"TOLLGATE_CLIENT": "acme",
			"TOLLGATE_URL":    tourURL,
		}), &out, io.Discard)
		require.NoError(t, err, out.String())
		assert.Contains(t, out.String(), "x-ratelimit-limit: 3")
	})
}

func TestRunErrors(t *testing.T) {
	missing := filepath.Join(t.TempDir(), "nope", "policy.yaml")
	busy, err := net.Listen("tcp", "127.0.0.1:0")
	require.NoError(t, err)
	defer busy.Close()
	tests := map[string]struct {
		args []string
		env  map[string]string
		want []string
	}{
		"bad duration in env": {
			args: []string{"serve", "--policy", tourPolicy},
			env:  map[string]string{"TOLLGATE_DRAIN_DELAY": "abc"},
			want: []string{"TOLLGATE_DRAIN_DELAY", `"abc"`},
		},
		"bad int in env": {
			args: []string{"load", "--duration", "1ms"},
			env:  map[string]string{"TOLLGATE_CONCURRENCY": "many"},
			want: []string{"TOLLGATE_CONCURRENCY", `"many"`},
		},
		"every bad env var is named": {
			args: []string{"serve"},
			env:  map[string]string{"TOLLGATE_DRAIN_DELAY": "abc", "TOLLGATE_SHUTDOWN_TIMEOUT": "soon"},
			want: []string{"TOLLGATE_DRAIN_DELAY", "TOLLGATE_SHUTDOWN_TIMEOUT"},
		},
		"missing policy file": {
			args: []string{"serve", "--policy", missing},
			want: []string{missing},
		},
		"invalid policy file": {
			args: []string{"serve", "--policy", "../../testdata/bad/zero-refill.yaml"},
			want: []string{"../../testdata/bad/zero-refill.yaml", "refill_per_second"},
		},
		"gRPC address in use": {
			// The policy watcher has started by then; it must be stopped too
			// (goleak in TestMain).
			args: []string{"serve", "--policy", tourPolicy, "--grpc-addr", busy.Addr().String()},
			want: []string{"gRPC listener", busy.Addr().String()},
		},
		"HTTP address in use": {
			args: []string{"serve", "--http-addr", busy.Addr().String()},
			want: []string{"HTTP listener", busy.Addr().String()},
		},
		"invalid --client": {
			args: []string{"serve", "--client", "team a", "--api-addr", "127.0.0.1:0"},
			want: []string{"authz: client id", `"team a"`},
		},
		"bad log level": {
			args: []string{"serve", "--log-level", "loud"},
			want: []string{"loud"},
		},
		"unknown command": {
			args: []string{"frobnicate"},
			want: []string{"frobnicate"},
		},
		"probe without --url": {
			args: []string{"probe", "--client", "acme"},
			want: []string{"url"},
		},
		"probe with a relative url": {
			args: []string{"probe", "--url", "/v1/chat/completions"},
			want: []string{"not an absolute URL"},
		},
	}
	for name, tc := range tests {
		t.Run(name, func(t *testing.T) {
			// Free addresses, so that nothing fails for want of a port.
			getenv := func(k string) string {
				switch k {
				case "TOLLGATE_GRPC_ADDR", "TOLLGATE_HTTP_ADDR":
					return freePort(t)
				}
				return tc.env[k]
			}
			err := run(context.Background(), tc.args, getenv, io.Discard, io.Discard)
			require.Error(t, err)
			for _, w := range tc.want {
				assert.ErrorContains(t, err, w)
			}
			assert.Equal(t, 1, exitCode(err, io.Discard))
		})
	}
}

func TestServeBundledPolicy(t *testing.T) {
	grpcAddr, httpAddr := freePort(t), freePort(t)
	srv := startRun(t, noEnv, httpAddr, serveArgs(grpcAddr, httpAddr)...)

	resp, err := httpClient.Get("http://" + httpAddr + "/debug/policy")
	require.NoError(t, err)
	body, err := io.ReadAll(resp.Body)
	require.NoError(t, resp.Body.Close())
	require.NoError(t, err)
	assert.Equal(t, http.StatusOK, resp.StatusCode)
	assert.Contains(t, string(body), "default.yaml (bundled)")
	assert.Contains(t, string(body), "gpt-4")

	require.NoError(t, srv.stop(t))
	assert.Contains(t, srv.stderr.String(), "bundled")
}

func TestExitCode(t *testing.T) {
	tests := map[string]struct {
		err        error
		want       int
		wantStderr string
	}{
		"nil":                        {err: nil, want: 0},
		"plain error":                {err: errors.New("boom"), want: 1, wantStderr: "tollgate: boom\n"},
		"exitError without message":  {err: &exitError{code: 3}, want: 3},
		"exitError with message":     {err: &exitError{code: 1, err: errors.New("policy is invalid")}, want: 1, wantStderr: "tollgate: policy is invalid\n"},
		"wrapped exitError keeps it": {err: errors.Join(errors.New("ctx"), &exitError{code: 3}), want: 3},
	}
	for name, tc := range tests {
		t.Run(name, func(t *testing.T) {
			var stderr bytes.Buffer
			assert.Equal(t, tc.want, exitCode(tc.err, &stderr))
			assert.Equal(t, tc.wantStderr, stderr.String())
		})
	}
}
