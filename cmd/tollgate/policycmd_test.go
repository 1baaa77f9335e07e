package main

import (
	"bytes"
	"context"
	"encoding/json"
	"io"
	"os"
	"path/filepath"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/tollgate/tollgate/policy"
)

// badPolicy has two errors, on lines 5 and 11.
const badPolicy = `pools:
  demo:
    unit: request
    capacity: 3
    refill_per_second: 0
routes:
  demo:
    host: api.openai.com
    path_prefix: /v1/
    provider: openai
    pools: [nope]
`

func TestPolicyCheck(t *testing.T) {
	bad := filepath.Join(t.TempDir(), "bad.yaml")
	require.NoError(t, os.WriteFile(bad, []byte(badPolicy), 0o600))
	free := filepath.Join(t.TempDir(), "free.yaml")
	require.NoError(t, os.WriteFile(free, []byte(`
pools:
  calls: {unit: request, capacity: 10, refill_per_second: 1}
routes:
  openai:
    host: api.openai.com
    path_prefix: /v1/
    provider: openai
    pools: [calls]
`), 0o600))

	tests := map[string]struct {
		args     []string
		wantCode int
		want     []string
	}{
		"bundled default": {
			args: []string{"policy", "check"},
			want: []string{"policy OK", "default.yaml (bundled)", "gpt-4"},
		},
		"tour": {
			args: []string{"policy", "check", tourPolicy},
			want: []string{"policy OK", tourPolicy, "demo", "api.openai.com"},
		},
		"an LLM route whose money comes from nowhere: OK with a warning": {
			args: []string{"policy", "check", free},
			want: []string{"policy OK", "warning: routes.openai: an LLM route whose pools have no price"},
		},
		"directory": {
			args: []string{"policy", "check", "../../testdata/good/tiers"},
			want: []string{"policy OK", "REFILL", "10000/min", "gpt-4 2000 at 2000/min"},
		},
		"errors with file and line": {
			args:     []string{"policy", "check", bad},
			wantCode: 1,
			want: []string{
				bad + ":5: pools.demo.refill_per_second:",
				bad + `:11: routes.demo.pools: pool "nope" does not exist`,
			},
		},
		"missing file": {
			args:     []string{"policy", "check", filepath.Join(t.TempDir(), "missing.yaml")},
			wantCode: 1,
			want:     []string{"missing.yaml"},
		},
		"too many args": {
			args:     []string{"policy", "check", tourPolicy, tourPolicy},
			wantCode: 1,
		},
	}
	for name, tc := range tests {
		t.Run(name, func(t *testing.T) {
			var out bytes.Buffer
			err := run(context.Background(), tc.args, noEnv, &out, io.Discard)
			assert.Equal(t, tc.wantCode, exitCode(err, io.Discard), "err: %v", err)
			for _, w := range tc.want {
				assert.Contains(t, out.String(), w)
			}
		})
	}
}

func TestPolicyCheckInvalidIsExitError(t *testing.T) {
	var out bytes.Buffer
	err := run(context.Background(), []string{"policy", "check", "../../testdata/bad/no-pools.yaml"}, noEnv, &out, io.Discard)
	var ee *exitError
	require.ErrorAs(t, err, &ee)
	assert.Equal(t, 1, ee.code)
	assert.Contains(t, out.String(), "../../testdata/bad/no-pools.yaml:")
}

func TestPolicyCheckJSON(t *testing.T) {
	tests := map[string]struct {
		args      []string
		wantPools []string
	}{
		"bundled": {args: []string{"policy", "check", "--json"}, wantPools: []string{"claude", "d1", "email", "gpt-3.5", "gpt-4",
			"gpt-4.1", "gpt-4.1-mini", "gpt-4o", "gpt-4o-mini", "gpt-5", "gpt-5-mini", "kv", "o-mini", "o-series",
			"openai-audio", "openai-batches", "openai-embeddings", "openai-files", "openai-images", "openai-moderations", "sms"}},
		"tour": {args: []string{"policy", "check", "--json", tourPolicy}, wantPools: []string{"demo"}},
	}
	for name, tc := range tests {
		t.Run(name, func(t *testing.T) {
			var out bytes.Buffer
			require.NoError(t, run(context.Background(), tc.args, noEnv, &out, io.Discard))
			require.True(t, json.Valid(out.Bytes()), out.String())
			var sum policy.Summary
			require.NoError(t, json.Unmarshal(out.Bytes(), &sum))
			var pools []string
			for _, p := range sum.Pools {
				pools = append(pools, p.Name)
			}
			assert.Equal(t, tc.wantPools, pools)
			assert.NotEmpty(t, sum.Routes)
		})
	}
}

func TestPolicyDefault(t *testing.T) {
	var out bytes.Buffer
	require.NoError(t, run(context.Background(), []string{"policy", "default"}, noEnv, &out, io.Discard))
	set, err := policy.Compile(policy.Source{Name: "stdout", Data: out.Bytes()})
	require.NoError(t, err)
	assert.Equal(t, policy.Default().Summary().Pools, set.Summary().Pools)
	assert.Contains(t, set.Pools, "gpt-4")
}
