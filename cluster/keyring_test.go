package cluster_test

import (
	"context"
	"encoding/base64"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/tollgate/tollgate/cluster"
	"github.com/tollgate/tollgate/limiter"
)

// keyFile writes keys (the primary first) to path, as an operator's
// rewrite of a mounted Secret would: a new file renamed over the old.
func keyFile(t *testing.T, path string, keys ...[]byte) {
	t.Helper()
	lines := make([]string, len(keys))
	for i, k := range keys {
		lines[i] = base64.StdEncoding.EncodeToString(k)
	}
	tmp := path + ".tmp"
	require.NoError(t, os.WriteFile(tmp, []byte("# gossip keys, primary first\n"+strings.Join(lines, "\n")+"\n"), 0o600))
	require.NoError(t, os.Rename(tmp, path))
}

// TestKeyRotation rotates a fleet of three from one gossip key to another
// by the three rewrites of every member's key file (keyring.go), rolled out
// one member at a time: the fleet stays whole throughout and gossip keeps
// flowing between every pair after each rewrite; once the old key is gone,
// a member that holds only the old key is refused.
func TestKeyRotation(t *testing.T) {
	oldKey, newKey := fleetKey, otherKey
	dir := t.TempDir()
	var files []string
	nodes := startNodesWith(t, 3, func(i int, c *cluster.NodeConfig, _ *recorder) {
		files = append(files, filepath.Join(dir, fmt.Sprintf("node-%d", i), "gossip.key"))
		require.NoError(t, os.MkdirAll(filepath.Dir(files[i]), 0o700))
		keyFile(t, files[i], oldKey)
	})
	ctx, cancel := context.WithCancel(context.Background())
	var wg sync.WaitGroup
	t.Cleanup(func() { cancel(); wg.Wait() })
	for i, nd := range nodes {
		w, err := cluster.WatchKeys(files[i], nd.Node, nil)
		require.NoError(t, err)
		wg.Add(1)
		go func() { defer wg.Done(); _ = w.Run(ctx) }()
	}

	// Watch the fleet's size the whole time: never a member short.
	var fewest atomic.Int64
	fewest.Store(3)
	stop := make(chan struct{})
	var sampler sync.WaitGroup
	sampler.Add(1)
	go func() {
		defer sampler.Done()
		for {
			for _, nd := range nodes {
				if n := int64(nd.Live()); n < fewest.Load() {
					fewest.Store(n)
				}
			}
			select {
			case <-stop:
				return
			case <-time.After(5 * time.Millisecond):
			}
		}
	}()

	round := 0
	// everyoneHears: a spend each member gossips reaches every other one,
	// so every pair still reads what the other sends.
	everyoneHears := func(step string) {
		t.Helper()
		round++
		for i, from := range nodes {
			from.Spend([]limiter.SpendDelta{{Owner: fmt.Sprintf("r%d-from%d", round, i), Period: "2026-01", Spent: 1}})
		}
		require.Eventually(t, func() bool {
			for i, to := range nodes {
				spends, _ := to.rec.heard()
				for j := range nodes {
					want := fmt.Sprintf("node-%d r%d-from%d/2026-01 1", j, round, j)
					if i != j && !slices.Contains(spends, want) {
						return false
					}
				}
			}
			return true
		}, 10*time.Second, 10*time.Millisecond, "%s: every member hears every other", step)
	}
	waitKeys := func(i int, want ...[]byte) {
		t.Helper()
		require.Eventually(t, func() bool { return slices.EqualFunc(nodes[i].Keys(), want, slices.Equal) },
			10*time.Second, 5*time.Millisecond, "node-%d reloads its key file", i)
	}

	everyoneHears("before the rotation")
	steps := []struct {
		name string
		keys [][]byte
	}{
		{"1: install the new key", [][]byte{oldKey, newKey}},
		{"2: send with the new key", [][]byte{newKey, oldKey}},
		{"3: remove the old key", [][]byte{newKey}},
	}
	for _, s := range steps {
		for i := range nodes { // rolled out one member at a time
			keyFile(t, files[i], s.keys...)
			waitKeys(i, s.keys...)
			everyoneHears(fmt.Sprintf("step %s, member %d done", s.name, i))
		}
	}
	close(stop)
	sampler.Wait()
	assert.Equal(t, int64(3), fewest.Load(), "no member ever saw the fleet short")

	rec := &recorder{demand: map[string]float64{}}
	stale, err := cluster.NewNode(nodeConfig("stale", oldKey), rec.mine, rec)
	require.NoError(t, err, "it starts, alone")
	t.Cleanup(func() { _ = stale.Kill() })
	_, err = stale.Join(nodes[0].Addr())
	require.Error(t, err, "a member with only the removed key is refused")
	for _, nd := range nodes {
		assert.Equal(t, 3, nd.Live())
	}
}

// TestKeyReloadRefusesBadFile: a key file that does not parse leaves the
// keys in force; the next good one is applied.
func TestKeyReloadRefusesBadFile(t *testing.T) {
	nodes := startNodes(t, 1)
	path := filepath.Join(t.TempDir(), "gossip.key")
	keyFile(t, path, fleetKey)
	w, err := cluster.WatchKeys(path, nodes[0].Node, nil)
	require.NoError(t, err)
	t.Cleanup(func() { assert.NoError(t, w.Close()) })
	for _, bad := range []string{"", "# none\n", "not base64!\n", base64.StdEncoding.EncodeToString([]byte("short")) + "\n"} {
		require.NoError(t, os.WriteFile(path, []byte(bad), 0o600))
		require.Error(t, w.Reload(), "%q", bad)
		assert.Equal(t, [][]byte{fleetKey}, nodes[0].Keys())
	}
	keyFile(t, path, otherKey, fleetKey)
	require.NoError(t, w.Reload())
	assert.Equal(t, [][]byte{otherKey, fleetKey}, nodes[0].Keys())
}

func TestParseKeys(t *testing.T) {
	a, b := base64.StdEncoding.EncodeToString(fleetKey), base64.StdEncoding.EncodeToString(otherKey)
	tests := map[string]struct {
		text string
		want [][]byte
		err  string
	}{
		"one":             {text: a, want: [][]byte{fleetKey}},
		"two, comments":   {text: "# rotation\n\n " + b + " \n" + a + "\n", want: [][]byte{otherKey, fleetKey}},
		"empty":           {text: "\n#\n", err: "no key"},
		"twice":           {text: a + "\n" + a, err: "named twice"},
		"not base64":      {text: "secret!", err: "line 1: not base64"},
		"wrong size":      {text: base64.StdEncoding.EncodeToString([]byte("0123456789")), err: "10 bytes"},
		"too many":        {text: a + "\n" + manyKeys(cluster.MaxKeys), err: "at most"},
		"no key is shown": {text: "c2VjcmV0LXZhbHVl!", err: "not base64"},
	}
	for name, tc := range tests {
		t.Run(name, func(t *testing.T) {
			got, err := cluster.ParseKeys([]byte(tc.text))
			if tc.err != "" {
				require.ErrorContains(t, err, tc.err)
				assert.NotContains(t, err.Error(), "c2VjcmV0", "a key is never echoed")
				return
			}
			require.NoError(t, err)
			assert.Equal(t, tc.want, got)
		})
	}
}

// manyKeys is n distinct keys, one a line.
func manyKeys(n int) string {
	var b strings.Builder
	for i := range n {
		b.WriteString(base64.StdEncoding.EncodeToString(fmt.Appendf(nil, "key-%012d", i)) + "\n")
	}
	return b.String()
}

func FuzzParseKeys(f *testing.F) {
	f.Add([]byte(base64.StdEncoding.EncodeToString(fleetKey)))
	f.Add([]byte("# c\n" + base64.StdEncoding.EncodeToString(otherKey) + "\n" + base64.StdEncoding.EncodeToString(fleetKey)))
	f.Add([]byte("====\n\x00"))
	f.Fuzz(func(t *testing.T, text []byte) {
		keys, err := cluster.ParseKeys(text)
		if err != nil {
			return
		}
		require.NotEmpty(t, keys)
		require.LessOrEqual(t, len(keys), cluster.MaxKeys)
		for i, k := range keys {
			require.Contains(t, []int{16, 24, 32}, len(k))
			for _, o := range keys[:i] {
				require.NotEqual(t, o, k)
			}
		}
	})
}

// TestSetKeysDropsEveryAbsentKey: a reload that drops several keys at once
// removes each of them (a walk over the keyring's own slice, shifted by
// each removal, skipped the key after a removed one and left it accepted).
func TestSetKeysDropsEveryAbsentKey(t *testing.T) {
	nodes := startNodes(t, 1)
	k := func(b byte) []byte { return []byte(strings.Repeat(string(rune('a'+b)), 32)) }
	require.NoError(t, nodes[0].SetKeys([][]byte{k(1), k(2), k(3)}))
	require.Len(t, nodes[0].Keys(), 3)
	require.NoError(t, nodes[0].SetKeys([][]byte{k(4)}))
	assert.Equal(t, [][]byte{k(4)}, nodes[0].Keys(), "every key the list does not name is gone")
}
