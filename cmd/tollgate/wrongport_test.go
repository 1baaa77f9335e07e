package main

import (
	"bytes"
	"context"
	"io"
	"net/http"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// TestWrongPort: probe and load speak gRPC, usage and estimate speak HTTP; given the
// other port, each says so and names the flag to use, instead of
// "http2: frame too large" or "malformed HTTP response".
func TestWrongPort(t *testing.T) {
	grpcAddr, httpAddr := freePort(t), freePort(t)
	startRun(t, noEnv, httpAddr, serveArgs(grpcAddr, httpAddr, "--policy", tourPolicy)...)
	const chat = "../../testdata/bodies/openai/chat-simple-stream.json"

	tests := map[string]struct {
		run  func() (string, error)
		want []string
	}{
		"probe on the HTTP port": {
			run:  func() (string, error) { return probeTour(httpAddr) },
			want: []string{"probe: " + httpAddr + " looks like Tollgate's HTTP port (serve --http-addr)", "probe speaks gRPC", "serve --grpc-addr"},
		},
		"load on the HTTP port": {
			run: func() (string, error) {
				var out bytes.Buffer
				err := run(context.Background(), []string{"load", "--addr", httpAddr, "--requests", "1"}, noEnv, &out, io.Discard)
				return out.String(), err
			},
			want: []string{"load: " + httpAddr + " looks like Tollgate's HTTP port (serve --http-addr)", "load speaks gRPC", "serve --grpc-addr"},
		},
		"usage on the gRPC port": {
			run:  func() (string, error) { return runUsage("acme", "--addr", grpcAddr) },
			want: []string{"usage: " + grpcAddr + " looks like Tollgate's gRPC port (serve --grpc-addr)", "usage speaks HTTP", "serve --http-addr"},
		},
		"estimate on the gRPC port": {
			run: func() (string, error) {
				return runEstimate("", "--url", "https://api.openai.com/v1/chat/completions", "--body", chat, "--addr", grpcAddr)
			},
			want: []string{"estimate: " + grpcAddr + " looks like Tollgate's gRPC port (serve --grpc-addr)", "estimate speaks HTTP", "serve --http-addr"},
		},
	}
	for name, tc := range tests {
		t.Run(name, func(t *testing.T) {
			_, err := tc.run()
			require.Error(t, err)
			for _, w := range tc.want {
				assert.ErrorContains(t, err, w)
			}
			assert.Equal(t, 1, exitCode(err, io.Discard))
		})
	}

	t.Run("right ports still work", func(t *testing.T) {
		_, err := probeTour(grpcAddr)
		require.NoError(t, err)
		_, err = runUsage("acme", "--addr", httpAddr)
		require.NoError(t, err)
	})
}

// TestUsagePathOfAChildClient: a client id with a slash is one path
// segment of /api/usage/{client}, so the slash is escaped, as the docs'
// curl example shows; unescaped it is another path, 404.
func TestUsagePathOfAChildClient(t *testing.T) {
	grpcAddr, httpAddr := freePort(t), freePort(t)
	startRun(t, noEnv, httpAddr, serveArgs(grpcAddr, httpAddr, "--policy", tourPolicy)...)
	tests := map[string]struct {
		path string
		want int
	}{
		"escaped slash, as documented": {path: "/api/usage/acme%2Fmarketing", want: http.StatusOK},
		"raw slash":                    {path: "/api/usage/acme/marketing", want: http.StatusNotFound},
	}
	for name, tc := range tests {
		t.Run(name, func(t *testing.T) {
			resp, err := httpClient.Get("http://" + httpAddr + tc.path)
			require.NoError(t, err)
			body, err := io.ReadAll(resp.Body)
			require.NoError(t, resp.Body.Close())
			require.NoError(t, err)
			assert.Equal(t, tc.want, resp.StatusCode, "%s", body)
			if tc.want == http.StatusOK {
				assert.Contains(t, string(body), `"client": "acme/marketing"`)
			}
		})
	}
	out, err := runUsage("acme/marketing", "--addr", httpAddr)
	require.NoError(t, err, out)
	assert.Contains(t, out, "client acme/marketing")
}
