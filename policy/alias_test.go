package policy_test

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"runtime/debug"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// These tests feed Compile YAML aliases that a careless decoder follows
// forever. A stack overflow is fatal and cannot be recovered, so each runs
// Compile in a child copy of the test binary and fails, rather than taking
// the whole package down, if the child crashes or hangs.

const childEnv = "POLICY_TEST_CHILD"

// inChild runs fn in a child process when called from the parent, and runs
// fn itself when called in the child.
func inChild(t *testing.T, timeout time.Duration, fn func(t *testing.T)) {
	t.Helper()
	if os.Getenv(childEnv) == t.Name() {
		debug.SetMaxStack(64 << 20) // fail fast rather than at 1 GB
		fn(t)
		return
	}
	ctx, cancel := context.WithTimeout(context.Background(), timeout)
	defer cancel()
	cmd := exec.CommandContext(ctx, os.Args[0], "-test.run=^"+t.Name()+"$", "-test.count=1", "-test.v")
	cmd.Env = append(os.Environ(), childEnv+"="+t.Name())
	out, err := cmd.CombinedOutput()
	require.NoError(t, ctx.Err(), "Compile did not finish within %v", timeout)
	require.NoError(t, err, "Compile crashed the process:\n%s", head(string(out), 15))
}

func head(s string, n int) string {
	ls := strings.SplitN(s, "\n", n+1)
	return strings.Join(ls[:min(n, len(ls))], "\n")
}

func TestCompileSelfMerge(t *testing.T) {
	inChild(t, time.Minute, func(t *testing.T) {
		// The merge key points at the very mapping that holds it.
		s, err := compile(lines("pools: &a", "  <<: *a"))
		assert.Nil(t, s)
		assert.Error(t, err)
	})
}

func TestCompileMergeBomb(t *testing.T) {
	// Each mapping merges the one before it twice, so following every merge
	// costs 2^40 steps on a file of under 2 KB.
	var b strings.Builder
	b.WriteString("pools:\n  m0: &m0 {unit: request}\n")
	for i := 1; i <= 40; i++ {
		fmt.Fprintf(&b, "  m%d: &m%d {<<: *m%d, <<: *m%d}\n", i, i, i-1, i-1)
	}
	src := []byte(b.String())
	inChild(t, 10*time.Second, func(t *testing.T) {
		start := time.Now()
		_, err := compile(src)
		assert.Error(t, err) // the pools have no capacity
		assert.Less(t, time.Since(start), 5*time.Second)
	})
}
