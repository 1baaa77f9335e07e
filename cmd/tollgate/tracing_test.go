package main

import (
	"io"
	"strconv"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/tollgate/tollgate/internal/otlptest"
)

// TestServeTracing: with --otlp-endpoint, the spans of a call reach the
// collector by the time serve returns (shutdown flushes them); without it,
// nothing connects to a collector, even one the process environment names.
func TestServeTracing(t *testing.T) {
	t.Run("on", func(t *testing.T) {
		col := otlptest.Start(t)
		grpcAddr, httpAddr := freePort(t), freePort(t)
		srv := startRun(t, noEnv, httpAddr, serveArgs(grpcAddr, httpAddr, "--policy", tourPolicy,
			"--otlp-endpoint", col.Addr(), "--otlp-insecure", "--trace-sample", "1")...)
		out, err := probeTour(grpcAddr)
		require.NoError(t, err, out)
		require.NoError(t, srv.stop(t))
		assert.Contains(t, srv.stderr.String(), "tracing on")
		checks := col.Named("tollgate.check")
		require.Len(t, checks, 1, "spans: %+v", col.Spans())
		assert.Equal(t, "allowed", checks[0].Attrs["tollgate.decision"])
		assert.Equal(t, "tollgate", checks[0].Service)
		assert.NotEmpty(t, col.Named("tollgate.store.reserve"))
	})
	t.Run("off", func(t *testing.T) {
		col := otlptest.Start(t)
		// The exporter library reads these from the process; off, it is
		// never built.
		t.Setenv("OTEL_EXPORTER_OTLP_ENDPOINT", "http://"+col.Addr())
		t.Setenv("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", "http://"+col.Addr())
		grpcAddr, httpAddr := freePort(t), freePort(t)
		srv := startRun(t, env(map[string]string{"OTEL_EXPORTER_OTLP_ENDPOINT": "http://" + col.Addr()}), httpAddr,
			serveArgs(grpcAddr, httpAddr, "--policy", tourPolicy)...)
		out, err := probeTour(grpcAddr)
		require.NoError(t, err, out)
		require.NoError(t, srv.stop(t))
		assert.NotContains(t, srv.stderr.String(), "tracing on")
		assert.Zero(t, col.Connections(), "no connection to the collector")
		assert.Empty(t, col.Spans())
	})
}

// TestTracingFlagErrors: a bad ratio or endpoint stops serve at start.
func TestTracingFlagErrors(t *testing.T) {
	for name, args := range map[string][]string{
		"ratio above 1":         {"--otlp-endpoint", "127.0.0.1:4317", "--trace-sample", "1.5"},
		"negative ratio":        {"--trace-sample", "-0.1"},
		"endpoint not hostport": {"--otlp-endpoint", "http://collector"},
	} {
		t.Run(name, func(t *testing.T) {
			grpcAddr, httpAddr := freePort(t), freePort(t)
			err := run(t.Context(), serveArgs(grpcAddr, httpAddr, args...), withTestToken(noEnv), io.Discard, &syncBuffer{})
			require.Error(t, err)
			assert.Contains(t, err.Error(), "tracing:", strconv.Quote(err.Error()))
		})
	}
}
