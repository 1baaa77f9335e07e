package main

import (
	"context"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

const cachePolicyFile = "../../testdata/good/cache.yaml"

// TestCacheServe: serve with the cache tour's policy answers a repeated
// deterministic call from its cache (probe says so, and usage books the
// saving), DELETE /api/cache forgets it, and --cache-bytes 0 turns the
// cache off.
func TestCacheServe(t *testing.T) {
	body := filepath.Join(t.TempDir(), "body.json")
	require.NoError(t, os.WriteFile(body, []byte(`{"model":"gpt-4o","temperature":0,"max_tokens":300,"messages":[{"role":"user","content":"Summarize the report."}]}`), 0o600))
	answer, err := os.ReadFile("../../testdata/responses/openai-chat.json")
	require.NoError(t, err)
	probe := func(grpcAddr string) string {
		t.Helper()
		out, err := probeTour(grpcAddr, "--body", body, "--response", "../../testdata/responses/openai-chat.json")
		require.NoError(t, err, out)
		return out
	}
	drop := func(httpAddr, path string) (int, string) {
		t.Helper()
		req, err := http.NewRequest(http.MethodDelete, "http://"+httpAddr+path, nil)
		require.NoError(t, err)
		resp, err := httpClient.Do(req)
		require.NoError(t, err)
		defer resp.Body.Close()
		b, err := io.ReadAll(resp.Body)
		require.NoError(t, err)
		return resp.StatusCode, string(b)
	}

	t.Run("on", func(t *testing.T) {
		grpcAddr, httpAddr := freePort(t), freePort(t)
		startRun(t, noEnv, httpAddr, serveArgs(grpcAddr, httpAddr, "--policy", cachePolicyFile)...)
		out := probe(grpcAddr)
		assert.Contains(t, out, "decision: ALLOWED")
		assert.Contains(t, out, "  x-tollgate-cache: miss\n")
		out = probe(grpcAddr)
		assert.Contains(t, out, "decision: ANSWERED FROM THE CACHE (hit; HTTP 200, gRPC PERMISSION_DENIED)\n")
		assert.Contains(t, out, "body: "+string(answer))
		require.Eventually(t, func() bool { // booked within a second
			usage, err := runUsage("acme", "--addr", httpAddr)
			return err == nil && strings.Contains(usage, "cache")
		}, 10*time.Second, 20*time.Millisecond)

		sc, js := drop(httpAddr, "/api/cache/acme?route=openai")
		assert.Equal(t, http.StatusOK, sc)
		assert.JSONEq(t, `{"scope":"acme","route":"openai","dropped":1}`, js)
		assert.Contains(t, probe(grpcAddr), "decision: ALLOWED", "forgotten: sent again")
	})
	t.Run("off", func(t *testing.T) {
		grpcAddr, httpAddr := freePort(t), freePort(t)
		startRun(t, noEnv, httpAddr, serveArgs(grpcAddr, httpAddr, "--policy", cachePolicyFile, "--cache-bytes", "0")...)
		for range 2 {
			out := probe(grpcAddr)
			assert.Contains(t, out, "decision: ALLOWED")
			assert.NotContains(t, out, "x-tollgate-cache")
		}
		sc, _ := drop(httpAddr, "/api/cache/acme")
		assert.Equal(t, http.StatusNotFound, sc)
	})
	t.Run("bad flags", func(t *testing.T) {
		for _, args := range [][]string{{"--cache-bytes", "-1"}, {"--cache-max-entry", "0"}, {"--cache-bytes", "1000", "--cache-max-entry", "2000"}} {
			err := run(context.Background(), serveArgs(freePort(t), freePort(t), args...), withTestToken(noEnv), io.Discard, io.Discard)
			require.Error(t, err, strings.Join(args, " "))
			assert.Contains(t, err.Error(), "--cache-", strings.Join(args, " "))
		}
	})
}
