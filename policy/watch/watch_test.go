package watch_test

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"sync/atomic"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"go.uber.org/goleak"

	"github.com/tollgate/tollgate/policy/watch"
)

func TestMain(m *testing.M) {
	goleak.VerifyTestMain(m)
}

const (
	debounce = 20 * time.Millisecond
	// waitFor bounds how long a reload may take to show; polling ends as
	// soon as it does.
	waitFor = 10 * time.Second
	tick    = 5 * time.Millisecond
)

// tour is the README tour policy with the pool's capacity as a parameter.
func tour(capacity int) []byte {
	return fmt.Appendf(nil, `pools:
  demo:
    unit: request
    capacity: %d
    refill_per_second: 1
routes:
  demo:
    host: api.openai.com
    path_prefix: /v1/
    provider: openai
    pools: [demo]
tiers:
  basic:
    priority: 10
    max_concurrent: 5
    monthly_budget: "100"
defaults:
  unknown_client: basic
`, capacity)
}

// invalid fails to compile: the route names a pool that does not exist.
var invalid = []byte(`pools:
  demo:
    unit: request
    capacity: 3
    refill_per_second: 1
routes:
  demo:
    host: api.openai.com
    pools: [missing]
`)

func writeFile(t *testing.T, path string, data []byte) {
	t.Helper()
	require.NoError(t, os.WriteFile(path, data, 0o600))
}

// replaceFile writes data beside path and renames it into place, as editors
// and ConfigMap updates do.
func replaceFile(t *testing.T, path string, data []byte) {
	t.Helper()
	tmp := filepath.Join(filepath.Dir(path), "."+filepath.Base(path)+".tmp")
	writeFile(t, tmp, data)
	require.NoError(t, os.Rename(tmp, path))
}

// reloads reads tollgate_policy_reloads_total{result=result} from reg.
func reloads(t *testing.T, reg *prometheus.Registry, result string) float64 {
	t.Helper()
	mfs, err := reg.Gather()
	require.NoError(t, err)
	for _, mf := range mfs {
		if mf.GetName() != "tollgate_policy_reloads_total" {
			continue
		}
		for _, m := range mf.GetMetric() {
			for _, l := range m.GetLabel() {
				if l.GetName() == "result" && l.GetValue() == result {
					return m.GetCounter().GetValue()
				}
			}
		}
	}
	t.Fatalf("no tollgate_policy_reloads_total{result=%q}", result)
	return 0
}

func capacity(w *watch.Watcher) int64 { return w.Policy().Pools["demo"].Limit.Capacity }

// startWatcher creates a Watcher on path with a fresh registry and runs it
// until the test ends.
func startWatcher(t *testing.T, path string) (*watch.Watcher, *prometheus.Registry) {
	t.Helper()
	return startWatcherConfig(t, watch.Config{Path: path, Debounce: debounce})
}

func startWatcherConfig(t *testing.T, cfg watch.Config) (*watch.Watcher, *prometheus.Registry) {
	t.Helper()
	reg := prometheus.NewRegistry()
	w, err := watch.New(cfg, reg, nil)
	require.NoError(t, err)
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- w.Run(ctx) }()
	t.Cleanup(func() {
		cancel()
		require.NoError(t, <-done)
	})
	return w, reg
}

func TestNew(t *testing.T) {
	path := filepath.Join(t.TempDir(), "policy.yaml")
	writeFile(t, path, tour(3))
	w, reg := startWatcher(t, path)

	set := w.Policy()
	require.NotNil(t, set)
	assert.Equal(t, []string{path}, set.Files)
	assert.Equal(t, int64(3), capacity(w))
	assert.Same(t, set, w.Policy(), "no change, no new Set")

	// Both results are exported from the start, at zero.
	assert.Equal(t, 2, testutil.CollectAndCount(reg, "tollgate_policy_reloads_total"))
	assert.Zero(t, reloads(t, reg, "success"))
	assert.Zero(t, reloads(t, reg, "failure"))
	assert.Equal(t, 1, testutil.CollectAndCount(reg, "tollgate_policy_last_reload_success_timestamp_seconds"))
}

func TestNewOnDirectory(t *testing.T) {
	dir := t.TempDir()
	writeFile(t, filepath.Join(dir, "policy.yaml"), tour(3))
	w, reg := startWatcher(t, dir)
	require.Equal(t, int64(3), capacity(w))

	writeFile(t, filepath.Join(dir, "policy.yaml"), tour(5))
	require.Eventually(t, func() bool { return capacity(w) == 5 }, waitFor, tick)
	assert.Equal(t, 1.0, reloads(t, reg, "success"))
}

// TestReload walks one watcher through a good change, a broken one and a
// rename into place.
func TestReload(t *testing.T) {
	path := filepath.Join(t.TempDir(), "policy.yaml")
	writeFile(t, path, tour(3))
	w, reg := startWatcher(t, path)
	first := w.Policy()

	// A valid change is put in force.
	writeFile(t, path, tour(7))
	require.Eventually(t, func() bool {
		return capacity(w) == 7 && reloads(t, reg, "success") == 1
	}, waitFor, tick)
	assert.Zero(t, reloads(t, reg, "failure"))
	good := w.Policy()
	assert.NotSame(t, first, good)

	// A broken change is counted, and the policy in force stays.
	writeFile(t, path, invalid)
	require.Eventually(t, func() bool { return reloads(t, reg, "failure") == 1 }, waitFor, tick)
	assert.Same(t, good, w.Policy())
	assert.Equal(t, 1.0, reloads(t, reg, "success"))

	// A file renamed into place is picked up, and mends the broken one.
	replaceFile(t, path, tour(9))
	require.Eventually(t, func() bool {
		return capacity(w) == 9 && reloads(t, reg, "success") == 2
	}, waitFor, tick)
	assert.Equal(t, 1.0, reloads(t, reg, "failure"))
}

func TestIgnoresOtherFiles(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, "policy.yaml")
	writeFile(t, path, tour(3))
	w, reg := startWatcher(t, path)
	first := w.Policy()

	// Noise beside the policy (another file, a chmod) does not get in the
	// way of the change after it. (That the noise alone starts no reload is
	// tested on relevant itself.)
	writeFile(t, filepath.Join(dir, "notes.txt"), []byte("hello"))
	require.NoError(t, os.Chmod(path, 0o644))
	writeFile(t, path, tour(4))
	require.Eventually(t, func() bool {
		return capacity(w) == 4 && reloads(t, reg, "success") == 1
	}, waitFor, tick)
	assert.NotSame(t, first, w.Policy())
	assert.Zero(t, reloads(t, reg, "failure"))
}

// TestConfigMapUpdate mimics a Kubernetes ConfigMap volume: policy.yaml is a
// symlink through "..data" to a timestamped directory, and an update
// renames a new "..data" symlink into place; the file itself never changes.
func TestConfigMapUpdate(t *testing.T) {
	dir := t.TempDir()
	version := func(name string, capacity int) {
		require.NoError(t, os.Mkdir(filepath.Join(dir, name), 0o700))
		writeFile(t, filepath.Join(dir, name, "policy.yaml"), tour(capacity))
		require.NoError(t, os.Symlink(name, filepath.Join(dir, "..data_tmp")))
		require.NoError(t, os.Rename(filepath.Join(dir, "..data_tmp"), filepath.Join(dir, "..data")))
	}
	version("..2026_01_01_00_00_00.1", 3)
	require.NoError(t, os.Symlink(filepath.Join("..data", "policy.yaml"), filepath.Join(dir, "policy.yaml")))

	for name, path := range map[string]string{"file": filepath.Join(dir, "policy.yaml"), "directory": dir} {
		t.Run(name, func(t *testing.T) {
			w, reg := startWatcher(t, path)
			start := capacity(w)
			next := int(start) + 1
			version(fmt.Sprintf("..2026_01_01_00_00_00.%d", next), next)
			require.Eventually(t, func() bool { return capacity(w) == int64(next) }, waitFor, tick)
			assert.Zero(t, reloads(t, reg, "failure"))
		})
	}
}

func TestReloadReturnsError(t *testing.T) {
	path := filepath.Join(t.TempDir(), "policy.yaml")
	writeFile(t, path, tour(3))
	// Run never reloads by itself within the test: only Reload does.
	w, reg := startWatcherConfig(t, watch.Config{Path: path, Debounce: time.Hour})
	first := w.Policy()

	tests := map[string]struct {
		data    []byte // nil removes the file
		wantErr string
	}{
		"invalid policy": {data: invalid, wantErr: `pool "missing"`},
		"missing file":   {data: nil, wantErr: "no such file"},
	}
	for name, tc := range tests {
		t.Run(name, func(t *testing.T) {
			if tc.data == nil {
				require.NoError(t, os.Remove(path))
			} else {
				writeFile(t, path, tc.data)
			}
			before := reloads(t, reg, "failure")
			err := w.Reload()
			require.Error(t, err)
			assert.ErrorContains(t, err, tc.wantErr)
			assert.Same(t, first, w.Policy())
			assert.Equal(t, before+1, reloads(t, reg, "failure"))
		})
	}

	writeFile(t, path, tour(6))
	require.NoError(t, w.Reload())
	assert.Equal(t, int64(6), capacity(w))
	assert.Equal(t, 1.0, reloads(t, reg, "success"))
}

func TestNewFails(t *testing.T) {
	dir := t.TempDir()
	bad := filepath.Join(dir, "bad.yaml")
	writeFile(t, bad, invalid)
	empty := filepath.Join(dir, "empty")
	require.NoError(t, os.Mkdir(empty, 0o700))

	tests := map[string]struct {
		cfg     watch.Config
		wantErr string
	}{
		"invalid policy":     {cfg: watch.Config{Path: bad, Debounce: debounce}, wantErr: bad + ":"},
		"missing path":       {cfg: watch.Config{Path: filepath.Join(dir, "missing.yaml"), Debounce: debounce}, wantErr: "missing.yaml"},
		"directory no files": {cfg: watch.Config{Path: empty, Debounce: debounce}, wantErr: "no .yaml or .yml files"},
		"empty path":         {cfg: watch.Config{Debounce: debounce}, wantErr: "path is empty"},
		"negative debounce":  {cfg: watch.Config{Path: bad, Debounce: -time.Second}, wantErr: "negative"},
	}
	for name, tc := range tests {
		t.Run(name, func(t *testing.T) {
			w, err := watch.New(tc.cfg, prometheus.NewRegistry(), nil)
			require.Error(t, err)
			assert.ErrorContains(t, err, tc.wantErr)
			assert.Nil(t, w)
		})
	}
}

func TestDefaultConfig(t *testing.T) {
	cfg := watch.DefaultConfig("/etc/tollgate")
	assert.Equal(t, "/etc/tollgate", cfg.Path)
	assert.Positive(t, cfg.Debounce)
	assert.NoError(t, cfg.Validate())
}

func TestRunStopsOnCancel(t *testing.T) {
	defer goleak.VerifyNone(t)

	path := filepath.Join(t.TempDir(), "policy.yaml")
	writeFile(t, path, tour(3))
	w, err := watch.New(watch.Config{Path: path, Debounce: debounce}, prometheus.NewRegistry(), nil)
	require.NoError(t, err)

	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- w.Run(ctx) }()
	// A change in flight (the debounce timer running) does not hold Run up.
	writeFile(t, path, tour(4))
	cancel()
	select {
	case err := <-done:
		require.NoError(t, err)
	case <-time.After(waitFor):
		t.Fatal("Run did not return after cancel")
	}
	// The policy in force is still readable after Run has returned.
	assert.NotNil(t, w.Policy())
}

// The Watcher is a policy source for authz: Policy is safe to call while
// reloads happen.
func TestPolicyConcurrentWithReload(t *testing.T) {
	path := filepath.Join(t.TempDir(), "policy.yaml")
	writeFile(t, path, tour(3))
	w, _ := startWatcherConfig(t, watch.Config{Path: path, Debounce: time.Hour})

	stop := make(chan struct{})
	readerDone := make(chan struct{})
	var missing atomic.Bool
	go func() {
		defer close(readerDone)
		for {
			select {
			case <-stop:
				return
			default:
				if s := w.Policy(); s == nil || s.Pools["demo"] == nil {
					missing.Store(true)
				}
			}
		}
	}()
	for c := 10; c < 20; c++ {
		writeFile(t, path, tour(c))
		require.NoError(t, w.Reload())
		require.Equal(t, int64(c), capacity(w))
	}
	close(stop)
	<-readerDone
	assert.False(t, missing.Load(), "a reader saw no policy in force")
}
