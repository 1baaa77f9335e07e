package main

import (
	"encoding/json"
	"io"
	"os/exec"
	"path/filepath"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/tollgate/tollgate/admission"
)

// TestStateDirSurvivesKill: a real `tollgate serve --state-dir` spends,
// holds one call in flight, and is killed with SIGKILL; restarted on the
// same directory, its budgets' spend is exact: the settled calls as they
// were settled, and the call in flight committed at its reservation, as
// its TTL would have done. Without --state-dir the spend is gone.
func TestStateDirSurvivesKill(t *testing.T) {
	if testing.Short() {
		t.Skip("builds the binary")
	}
	bin := filepath.Join(t.TempDir(), "tollgate")
	out, err := exec.Command("go", "build", "-o", bin, ".").CombinedOutput()
	require.NoError(t, err, "go build: %s", out)
	policyPath := writePolicy(t, spendPolicy(""))

	usageOf := func(t *testing.T, p *process) admission.UsageReport {
		t.Helper()
		out, err := runUsage("acme", "--addr", p.http, "--json")
		require.NoError(t, err, out)
		var rep admission.UsageReport
		require.NoError(t, json.Unmarshal([]byte(out), &rep), out)
		return rep
	}
	tests := map[string]struct {
		keep      bool
		wantSpent string
	}{
		"with --state-dir": {keep: true, wantSpent: "0.032"}, // 0.01 + 0.01 settled, 0.012 held
		"without":          {keep: false, wantSpent: "0"},
	}
	for name, tc := range tests {
		t.Run(name, func(t *testing.T) {
			args := []string{"--policy", policyPath, "--settle", "deferred"}
			if tc.keep {
				args = append(args, "--state-dir", filepath.Join(t.TempDir(), "state"))
			}
			p := startBinaryArgs(t, bin, args...)
			for range 2 {
				out, err := probeTour(p.grpc, "--method", "POST") // admitted, settled at its $0.01 through ext_proc
				require.NoError(t, err, out)
			}
			out, err := probeHold(p.grpc) // admitted, left in flight
			require.NoError(t, err, out)
			before := usageOf(t, p)
			require.Equal(t, "0.02", before.Budgets[0].Spent)
			require.Equal(t, "0.012", before.Budgets[0].Reserved)
			require.Equal(t, int64(1), before.InFlight)

			require.NoError(t, p.cmd.Process.Kill()) // SIGKILL: no shutdown at all
			require.Error(t, p.wait(t))

			q := startBinaryArgs(t, bin, args...)
			after := usageOf(t, q)
			assert.Equal(t, tc.wantSpent, after.Budgets[0].Spent, "acme")
			assert.Equal(t, tc.wantSpent, after.Budgets[1].Spent, "its parent")
			assert.Equal(t, "0", after.Budgets[0].Reserved)
			assert.Zero(t, after.InFlight)
			if tc.keep {
				assert.Contains(t, q.stderr.String(), "committed_in_flight=1")
				// $0.032 of $0.036 spent: the next $0.012 hold does not fit.
				_, err := probeTour(q.grpc, "--method", "POST")
				require.Error(t, err)
				assert.Equal(t, exitDenied, exitCode(err, io.Discard))
			}
		})
	}
}
