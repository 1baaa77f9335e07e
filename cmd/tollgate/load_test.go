package main

import (
	"bytes"
	"context"
	"io"
	"path/filepath"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

func TestLoadSmoke(t *testing.T) {
	tests := map[string][]string{
		"for a duration":      {"load", "--duration", "300ms", "--concurrency", "2"},
		"for a request count": {"load", "--requests", "50", "--concurrency", "2", "--clients", "5"},
		"with a policy file":  {"load", "--duration", "100ms", "--concurrency", "2", "--policy", tourPolicy},
		"on a redis store":    {"load", "--requests", "50", "--concurrency", "2", "--redis-addr", "REDIS"},
		"a fleet of three": {"load", "--duration", "500ms", "--concurrency", "3", "--nodes", "3", "--redis-addr", "REDIS",
			"--policy", "../../testdata/good/bench-cluster.yaml", "--overshoot-pool", "bench-requests"},
	}
	for name, args := range tests {
		t.Run(name, func(t *testing.T) {
			for i, a := range args {
				if a == "REDIS" {
					args[i] = redisSrv.Addr
				}
			}
			var out bytes.Buffer
			require.NoError(t, run(context.Background(), args, noEnv, &out, io.Discard))
			assert.Contains(t, out.String(), "in-process tollgate on 127.0.0.1:")
			assert.Contains(t, out.String(), "checks/s")
			assert.Contains(t, out.String(), "p999")
			assert.Contains(t, out.String(), "errors 0")
			if name == "a fleet of three" {
				assert.Contains(t, out.String(), "a fleet of 3 with leases and gossip")
				assert.Regexp(t, `redis round trips \d+: \d+ per 1,000 checks, [0-9.]+ per decision \(decided locally [0-9.]+%`, out.String())
				assert.Regexp(t, `overshoot on pool bench-requests: admitted \d+ in`, out.String())
			}
		})
	}
}

func TestLoadAgainstServer(t *testing.T) {
	grpcAddr, httpAddr := freePort(t), freePort(t)
	startRun(t, noEnv, httpAddr, serveArgs(grpcAddr, httpAddr, "--policy", tourPolicy)...)
	var out bytes.Buffer
	require.NoError(t, run(context.Background(),
		[]string{"load", "--addr", grpcAddr, "--requests", "20", "--concurrency", "2", "--url", tourURL},
		noEnv, &out, io.Discard))
	assert.NotContains(t, out.String(), "in-process")
	assert.Contains(t, out.String(), "calls 20 ")
	assert.Contains(t, out.String(), "checks/s")
}

func TestLoadBadFlags(t *testing.T) {
	tests := map[string]struct {
		args []string
		want string
	}{
		"zero concurrency":     {args: []string{"load", "--concurrency", "0"}, want: "--concurrency"},
		"negative concurrency": {args: []string{"load", "--concurrency", "-1"}, want: "--concurrency"},
		"zero clients":         {args: []string{"load", "--clients", "0"}, want: "--clients"},
		"neither duration nor requests": {
			args: []string{"load", "--duration", "0", "--requests", "0"}, want: "--duration or --requests",
		},
		"not a number":          {args: []string{"load", "--concurrency", "many"}, want: "many"},
		"missing policy":        {args: []string{"load", "--duration", "1ms", "--policy", filepath.Join(t.TempDir(), "missing.yaml")}, want: "missing.yaml"},
		"relative url":          {args: []string{"load", "--duration", "1ms", "--url", "/v1/"}, want: "not an absolute URL"},
		"extra argument":        {args: []string{"load", "now"}, want: "now"},
		"no nodes":              {args: []string{"load", "--nodes", "0"}, want: "--nodes"},
		"a fleet without redis": {args: []string{"load", "--duration", "1ms", "--nodes", "2"}, want: "--redis-addr"},
		"nodes and an address":  {args: []string{"load", "--nodes", "2", "--addr", "127.0.0.1:1"}, want: "--addr"},
		"an overshoot pool of tokens": {
			args: []string{"load", "--duration", "1ms", "--overshoot-pool", "gpt-4"}, want: "counted in requests",
		},
		"an unknown overshoot pool": {args: []string{"load", "--duration", "1ms", "--overshoot-pool", "nope"}, want: `"nope"`},
	}
	for name, tc := range tests {
		t.Run(name, func(t *testing.T) {
			var out bytes.Buffer
			err := run(context.Background(), tc.args, noEnv, &out, io.Discard)
			require.Error(t, err)
			assert.ErrorContains(t, err, tc.want)
			assert.NotContains(t, out.String(), "checks/s")
		})
	}
}
