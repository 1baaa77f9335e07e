package main

import (
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// TestSIGTERM runs the built binary, because only a real process shows that
// main wires SIGTERM to a clean, draining shutdown and exit status 0.
func TestSIGTERM(t *testing.T) {
	if testing.Short() {
		t.Skip("builds the binary")
	}
	bin := filepath.Join(t.TempDir(), "tollgate")
	build := exec.Command("go", "build", "-o", bin, ".")
	out, err := build.CombinedOutput()
	require.NoError(t, err, "go build: %s", out)

	t.Run("stops cleanly", func(t *testing.T) {
		p := startBinary(t, bin, "0")
		require.NoError(t, p.cmd.Process.Signal(syscall.SIGTERM))
		require.NoError(t, p.wait(t), "stderr:\n%s", p.stderr)
		assert.Equal(t, 0, p.cmd.ProcessState.ExitCode())
		assert.Contains(t, p.stderr.String(), "shutting down")
		assert.Contains(t, p.stderr.String(), "stopped")
	})

	t.Run("reports not ready while it drains", func(t *testing.T) {
		p := startBinary(t, bin, "500ms")
		require.NoError(t, p.cmd.Process.Signal(syscall.SIGTERM))
		// A 503 is an answer, so the process is still up when it comes.
		require.Eventually(t, func() bool {
			return httpStatus(p.readyz) == http.StatusServiceUnavailable
		}, 10*time.Second, 5*time.Millisecond, "/readyz never turned 503; stderr:\n%s", p.stderr)
		require.NoError(t, p.wait(t), "stderr:\n%s", p.stderr)
		assert.Equal(t, 0, p.cmd.ProcessState.ExitCode())
		assert.Contains(t, p.stderr.String(), "drain_delay=500ms")
		assert.Contains(t, p.stderr.String(), "stopped")
	})
}

type process struct {
	grpc   string // its --grpc-addr
	http   string // its --http-addr
	cmd    *exec.Cmd
	stderr *syncBuffer
	readyz string
	exited chan error
}

// startBinary starts `bin serve` with the tour policy on free ports and
// waits until it is ready. The process is killed if the test leaves it
// running.
func startBinary(t *testing.T, bin, drainDelay string) *process {
	t.Helper()
	return startBinaryArgs(t, bin, "--drain-delay", drainDelay, "--policy", tourPolicy)
}

// startBinaryArgs starts `bin serve` on free ports with more flags and
// waits until it is ready.
func startBinaryArgs(t *testing.T, bin string, args ...string) *process {
	t.Helper()
	grpcAddr, httpAddr, apiAddr := freePort(t), freePort(t), freePort(t)
	p := &process{
		grpc:   grpcAddr,
		http:   httpAddr,
		cmd:    exec.Command(bin, append([]string{"serve", "--grpc-addr", grpcAddr, "--http-addr", httpAddr, "--api-addr", apiAddr}, args...)...),
		stderr: &syncBuffer{},
		readyz: "http://" + httpAddr + "/readyz",
		exited: make(chan error, 1),
	}
	// The API answers the test's token; CLI calls naming the health
	// address reach it (cliArgs).
	apiAddrs.Store(httpAddr, apiAddr)
	t.Cleanup(func() { apiAddrs.Delete(httpAddr) })
	p.cmd.Env = append(os.Environ(), apiTokenEnv+"="+testAPIToken)
	p.cmd.Stderr = p.stderr
	require.NoError(t, p.cmd.Start())
	go func() { p.exited <- p.cmd.Wait() }()
	t.Cleanup(func() {
		select {
		case <-p.exited:
		default:
			_ = p.cmd.Process.Kill()
			<-p.exited
		}
	})

	require.Eventually(t, func() bool {
		select {
		case err := <-p.exited:
			p.exited <- err // keep it for wait and the cleanup
			return true
		default:
		}
		return httpStatus(p.readyz) == http.StatusOK
	}, 30*time.Second, 10*time.Millisecond, "never ready; stderr:\n%s", p.stderr)
	select {
	case err := <-p.exited:
		p.exited <- err
		t.Fatalf("exited before it was ready: %v; stderr:\n%s", err, p.stderr)
	default:
	}
	return p
}

// wait returns how the process ended: nil for exit status 0.
func (p *process) wait(t *testing.T) error {
	t.Helper()
	select {
	case err := <-p.exited:
		p.exited <- err
		return err
	case <-time.After(30 * time.Second):
		t.Fatalf("process did not exit; stderr:\n%s", p.stderr)
		return nil
	}
}

// TestSIGHUP sends SIGHUP to a real `tollgate serve`: the policy is reloaded
// (or, with the bundled policy, there is nothing to reload), it is logged,
// and the process keeps serving; SIGTERM then stops it cleanly.
func TestSIGHUP(t *testing.T) {
	if testing.Short() {
		t.Skip("builds the binary")
	}
	bin := filepath.Join(t.TempDir(), "tollgate")
	out, err := exec.Command("go", "build", "-o", bin, ".").CombinedOutput()
	require.NoError(t, err, "go build: %s", out)

	tests := map[string]struct {
		args []string
		want string
	}{
		"policy file is reloaded":       {args: []string{"--policy", tourPolicy}, want: "policy reloaded"},
		"bundled policy: nothing to do": {want: "nothing to reload"},
	}
	for name, tc := range tests {
		t.Run(name, func(t *testing.T) {
			p := startBinaryArgs(t, bin, tc.args...)
			for i := 1; i <= 2; i++ { // one at a time: pending signals coalesce
				require.NoError(t, p.cmd.Process.Signal(syscall.SIGHUP))
				require.Eventually(t, func() bool {
					return strings.Count(p.stderr.String(), "SIGHUP") >= i
				}, 10*time.Second, 5*time.Millisecond, "stderr:\n%s", p.stderr)
			}
			require.Eventually(t, func() bool { return strings.Contains(p.stderr.String(), tc.want) },
				10*time.Second, 5*time.Millisecond, "stderr:\n%s", p.stderr)
			assert.Equal(t, http.StatusOK, httpStatus(p.readyz), "still serving after SIGHUP")
			select {
			case err := <-p.exited:
				t.Fatalf("exited on SIGHUP: %v; stderr:\n%s", err, p.stderr)
			default:
			}
			require.NoError(t, p.cmd.Process.Signal(syscall.SIGTERM))
			require.NoError(t, p.wait(t), "stderr:\n%s", p.stderr)
			assert.Equal(t, 0, p.cmd.ProcessState.ExitCode())
		})
	}
}
