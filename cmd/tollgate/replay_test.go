package main

import (
	"bytes"
	"context"
	"encoding/json"
	"io"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// TestServeDecisionLogAndReplay: a real server with --decision-log records
// four probes by acme (its $0.036 budget takes three calls at $0.01, the
// fourth is refused); `tollgate replay` with a policy that gives acme
// $0.10 lets the fourth through, and the same log against the recorded
// policy changes nothing.
func TestServeDecisionLogAndReplay(t *testing.T) {
	policyA := writePolicy(t, spendPolicy(""))
	policyB := writePolicy(t, strings.Replace(spendPolicy(""), `monthly_budget: "0.036"`, `monthly_budget: "0.1"`, 1))
	logPath := filepath.Join(t.TempDir(), "decisions.jsonl")
	grpcAddr, httpAddr := freePort(t), freePort(t)
	r := startRun(t, noEnv, httpAddr, serveArgs(grpcAddr, httpAddr, "--policy", policyA, "--decision-log", logPath)...)
	for i := range 4 {
		out, err := probeTour(grpcAddr, "--method", "POST")
		if i < 3 {
			require.NoError(t, err, out)
		}
	}
	require.NoError(t, r.stop(t))
	raw, err := os.ReadFile(logPath)
	require.NoError(t, err)
	assert.Equal(t, 1+4+3, bytes.Count(raw, []byte("\n")), "a start line, four decisions, three settles:\n%s", raw)

	replay := func(args ...string) string {
		var out bytes.Buffer
		require.NoError(t, run(context.Background(), append([]string{"replay", "--log", logPath}, args...), noEnv, &out, io.Discard))
		return out.String()
	}
	var rep struct {
		Clients []struct {
			Key  string `json:"key"`
			Base struct {
				Admitted, Refused int64
				Spend             string
			} `json:"base"`
			New struct {
				Admitted, Refused int64
				Spend             string
			} `json:"new"`
			Changed bool `json:"changed"`
		} `json:"clients"`
	}
	require.NoError(t, json.Unmarshal([]byte(replay("--policy", policyB, "--json")), &rep))
	require.Len(t, rep.Clients, 1)
	c := rep.Clients[0]
	assert.Equal(t, "acme", c.Key)
	assert.Equal(t, int64(3), c.Base.Admitted)
	assert.Equal(t, int64(1), c.Base.Refused)
	assert.Equal(t, "0.03", c.Base.Spend)
	assert.Equal(t, int64(4), c.New.Admitted)
	assert.Equal(t, "0.04", c.New.Spend, "the fourth call, never settled, lapses at its estimate")

	same := replay("--policy", policyA) // --base defaults to the policy the log names
	assert.Contains(t, same, "no change")
	assert.Equal(t, same, replay("--policy", policyA, "--base", policyA))

	err = run(context.Background(), []string{"replay", "--policy", policyA}, noEnv, io.Discard, io.Discard)
	assert.ErrorContains(t, err, "--log")
	bad := filepath.Join(t.TempDir(), "bad.jsonl")
	require.NoError(t, os.WriteFile(bad, []byte("{}\n"), 0o600))
	err = run(context.Background(), []string{"replay", "--policy", policyA, "--log", bad}, noEnv, io.Discard, io.Discard)
	assert.ErrorContains(t, err, "line 1")
}
