package e2e

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"os"
	"os/exec"
	"path/filepath"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// TestComposeWorker runs the docker-compose demo's worker
// (deploy/worker/worker.mjs, the official OpenAI SDK configured only by
// OPENAI_BASE_URL) through the stand-in's openai listener to the fake
// provider: each call it reports is one the provider answered and
// Tollgate settled.
func TestComposeWorker(t *testing.T) {
	r := newRig(t)
	// Node resolves "openai" next to the script: run a copy beside a link
	// to the SDKs make e2e-deps installed.
	dir := t.TempDir()
	src, err := os.ReadFile("../deploy/worker/worker.mjs")
	require.NoError(t, err)
	require.NoError(t, os.WriteFile(filepath.Join(dir, "worker.mjs"), src, 0o644))
	modules, err := filepath.Abs("node_modules")
	require.NoError(t, err)
	require.NoError(t, os.Symlink(modules, filepath.Join(dir, "node_modules")))

	const client, calls = "e2e-openai-json", 3
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	cmd := exec.CommandContext(ctx, "node", "worker.mjs")
	cmd.Dir = dir
	cmd.Env = append(os.Environ(), "OPENAI_BASE_URL="+r.openai+"/v1", "OPENAI_API_KEY=sk-e2e-not-a-key",
		"WORKER_CLIENTS="+client, "WORKER_CLASSES=normal", "WORKER_CALLS=3", "WORKER_PAUSE_MS=0")
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	require.NoError(t, cmd.Run(), "node worker.mjs: %s", stderr.String())

	type line struct {
		Client string `json:"client"`
		Class  string `json:"class"`
		Status int    `json:"status"`
		Model  string `json:"model"`
		Tokens int    `json:"tokens"`
		Error  string `json:"error"`
	}
	var lines []line
	sc := bufio.NewScanner(&stdout)
	for sc.Scan() {
		var l line
		require.NoError(t, json.Unmarshal(sc.Bytes(), &l), sc.Text())
		lines = append(lines, l)
	}
	require.Len(t, lines, calls, stdout.String())
	for _, l := range lines {
		assert.Equal(t, client, l.Client)
		assert.Equal(t, "normal", l.Class)
		assert.Equal(t, 200, l.Status, l.Error)
		assert.NotEmpty(t, l.Model)
		assert.Positive(t, l.Tokens)
	}
	assert.Equal(t, calls, r.calls(), "every call reached the provider once")
	assert.Positive(t, r.settled(t, client), "Tollgate booked what the calls cost")
}
