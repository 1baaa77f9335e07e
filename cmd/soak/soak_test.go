package main

import (
	"bytes"
	"context"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// TestSoakSmoke builds tollgate and soaks it for a few seconds on the
// memory store, every kind of call included: the whole run, from the
// first process started to the report, with a policy whose reservations
// lapse in 2 s so that the drain check is quick. About 25 s with the
// build, so -short skips it.
func TestSoakSmoke(t *testing.T) {
	if testing.Short() {
		t.Skip("builds tollgate and runs it for about 20 s")
	}
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	dir := t.TempDir()
	bin := filepath.Join(dir, "tollgate")
	build := exec.CommandContext(ctx, "go", "build", "-o", bin, "../tollgate")
	out, err := build.CombinedOutput()
	require.NoError(t, err, "go build: %s", out)

	pol, err := os.ReadFile("../../testdata/good/soak.yaml")
	require.NoError(t, err)
	fast := strings.Replace(string(pol), "reservation_ttl: 20s", "reservation_ttl: 2s", 1)
	require.NotEqual(t, string(pol), fast, "the soak policy sets reservation_ttl: 20s")
	policy := filepath.Join(dir, "soak.yaml")
	require.NoError(t, os.WriteFile(policy, []byte(fast), 0o600))

	var stdout, stderr bytes.Buffer
	err = run(ctx, []string{"--bin", bin, "--stores", "memory", "--policy", policy, "--envoy-config", "../../envoy/sidecar.yaml",
		"--duration", "4s", "--warmup", "1s", "--sample-every", "500ms", "--rest-quiet", "1s"}, &stdout, &stderr)
	t.Logf("report:\n%s\nprogress:\n%s", stdout.String(), stderr.String())
	require.NoError(t, err)
	report := stdout.String()
	assert.Contains(t, report, "verdict memory: PASS")
	assert.Contains(t, report, "stopped: SIGTERM, exit status 0")
	assert.Contains(t, report, "drained: queue empty")
	for _, k := range append(mixedKinds(), hostileKinds()...) {
		assert.Contains(t, report, "\n"+k.name+" ", "every kind was sent")
	}
}
