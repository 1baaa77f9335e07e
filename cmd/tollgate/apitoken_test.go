package main

import (
	"io"
	"os"
	"path/filepath"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// TestServeAPIToken: the API token comes from --api-token-file or
// TOLLGATE_API_TOKEN (never both); usage sends it; without one the API
// refuses, and the CLI says how to give it; it never reaches the log.
func TestServeAPIToken(t *testing.T) {
	const token = "a-token-of-sixteen-or-more"
	file := filepath.Join(t.TempDir(), "token")
	require.NoError(t, os.WriteFile(file, []byte(token+"\n"), 0o600))

	tests := map[string]struct {
		serveEnv  map[string]string
		serveArgs []string
		usageEnv  map[string]string
		usageArgs []string
		wantErr   string // from usage
	}{
		"token from the environment": {
			serveEnv: map[string]string{apiTokenEnv: token}, usageEnv: map[string]string{apiTokenEnv: token},
		},
		"token from a file": {
			serveArgs: []string{"--api-token-file", file}, usageArgs: []string{"--api-token-file", file},
		},
		"file for serve, environment for usage": {
			serveArgs: []string{"--api-token-file", file}, usageEnv: map[string]string{apiTokenEnv: token},
		},
		"wrong token": {
			serveEnv: map[string]string{apiTokenEnv: token}, usageEnv: map[string]string{apiTokenEnv: token + "-not"},
			wantErr: "HTTP 401: missing or wrong API token",
		},
		"no token at usage": {
			serveEnv: map[string]string{apiTokenEnv: token}, usageEnv: map[string]string{apiTokenEnv: " "},
			wantErr: "pass --api-token-file FILE or set TOLLGATE_API_TOKEN",
		},
		"no token at serve": {
			serveEnv: map[string]string{apiTokenEnv: " "}, usageEnv: map[string]string{apiTokenEnv: token},
			wantErr: "HTTP 403: the API is disabled: no API token is configured",
		},
	}
	for name, tc := range tests {
		t.Run(name, func(t *testing.T) {
			grpcAddr, httpAddr, apiAddr := freePort(t), freePort(t), freePort(t)
			srv := startRun(t, env(tc.serveEnv), httpAddr,
				serveArgs(grpcAddr, httpAddr, append([]string{"--policy", tourPolicy, "--api-addr", apiAddr}, tc.serveArgs...)...)...)
			var out syncBuffer
			err := run(t.Context(), append([]string{"usage", "acme", "--addr", apiAddr}, tc.usageArgs...), env(tc.usageEnv), &out, &out)
			if tc.wantErr == "" {
				require.NoError(t, err, out.String())
				assert.Contains(t, out.String(), "acme")
			} else {
				require.ErrorContains(t, err, tc.wantErr)
			}
			require.NoError(t, srv.stop(t))
			assert.NotContains(t, srv.stderr.String(), token, "the token is never logged")
		})
	}

	t.Run("both sources is an error", func(t *testing.T) {
		err := run(t.Context(), serveArgs(freePort(t), freePort(t), "--api-token-file", file), env(map[string]string{apiTokenEnv: token}), io.Discard, io.Discard)
		require.ErrorContains(t, err, "both --api-token-file and TOLLGATE_API_TOKEN are set")
	})
	t.Run("an empty file is an error", func(t *testing.T) {
		empty := filepath.Join(t.TempDir(), "empty")
		require.NoError(t, os.WriteFile(empty, []byte("\n"), 0o600))
		err := run(t.Context(), serveArgs(freePort(t), freePort(t), "--api-token-file", empty), noEnv, io.Discard, io.Discard)
		require.ErrorContains(t, err, "is empty")
	})
	t.Run("a short token is an error", func(t *testing.T) {
		err := run(t.Context(), serveArgs(freePort(t), freePort(t), "--api-addr", freePort(t)), env(map[string]string{apiTokenEnv: "short"}), io.Discard, io.Discard)
		require.ErrorContains(t, err, "at least 16 characters")
	})
}
