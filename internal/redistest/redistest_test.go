package redistest_test

import (
	"context"
	"os"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"go.uber.org/goleak"

	"github.com/tollgate/tollgate/internal/redistest"
)

// Every test starts servers of its own; Stop and Close must leave no
// goroutine (the one reaping redis-server) behind.
func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

// start returns a new server, closed when t ends.
func start(t *testing.T) *redistest.Server {
	t.Helper()
	s, err := redistest.Start()
	require.NoError(t, err)
	t.Cleanup(func() { assert.NoError(t, s.Close()) })
	return s
}

// ping reports whether the server answers, on a fresh connection.
func ping(t *testing.T, s *redistest.Server) error {
	t.Helper()
	c := redis.NewClient(&redis.Options{Addr: s.Addr, MaxRetries: -1})
	defer c.Close()
	return c.Ping(context.Background()).Err()
}

func set(t *testing.T, s *redistest.Server, key string) {
	t.Helper()
	require.NoError(t, s.Client(t).Set(context.Background(), key, "v", 0).Err())
}

// keys returns the keys the server holds.
func keys(t *testing.T, s *redistest.Server) []string {
	t.Helper()
	ks, err := s.Client(t).Keys(context.Background(), "*").Result()
	require.NoError(t, err)
	return ks
}

func TestStart(t *testing.T) {
	s := start(t)
	assert.True(t, strings.HasPrefix(s.Addr, "127.0.0.1:"), "listens on loopback: %s", s.Addr)
	require.NoError(t, ping(t, s))
	assert.Empty(t, keys(t, s), "a new server is empty")

	other := start(t)
	assert.NotEqual(t, s.Addr, other.Addr, "each server has a port of its own")
	set(t, s, "only-here")
	assert.Empty(t, keys(t, other), "and data of its own")
}

func TestStopResume(t *testing.T) {
	s := start(t)
	addr := s.Addr
	set(t, s, "k")
	require.NoError(t, s.Stop(false))
	require.Error(t, ping(t, s), "a stopped server does not answer")
	require.NoError(t, s.Stop(false), "stopping a stopped server does nothing")

	require.NoError(t, s.Resume())
	require.NoError(t, ping(t, s))
	assert.Equal(t, addr, s.Addr, "the server comes back on its address")
	assert.Empty(t, keys(t, s), "stopped without saving: the data is gone")

	require.NoError(t, s.Resume(), "resuming a running server does nothing")
	require.NoError(t, ping(t, s))
	set(t, s, "still-the-same-server")
	require.NoError(t, s.Stop(false))
	require.Error(t, ping(t, s), "one Stop stops it: no second server was started")
	require.NoError(t, s.Resume())
}

func TestRestart(t *testing.T) {
	tests := map[string]struct {
		// saves lists the save flag of each restart; want is the keys found
		// after the last one. Before restart i the test sets key "k<i>".
		saves []bool
		want  []string
	}{
		"with a snapshot":                 {saves: []bool{true}, want: []string{"k0"}},
		"without one":                     {saves: []bool{false}, want: nil},
		"a snapshot, then none":           {saves: []bool{true, false}, want: nil},
		"none, then a snapshot":           {saves: []bool{false, true}, want: []string{"k1"}},
		"each snapshot has the last data": {saves: []bool{true, true}, want: []string{"k0", "k1"}},
	}
	for name, tc := range tests {
		t.Run(name, func(t *testing.T) {
			s := start(t)
			for i, save := range tc.saves {
				set(t, s, "k"+string(rune('0'+i)))
				require.NoError(t, s.Restart(save))
				require.NoError(t, ping(t, s))
			}
			assert.ElementsMatch(t, tc.want, keys(t, s))
		})
	}
}

func TestClose(t *testing.T) {
	s, err := redistest.Start()
	require.NoError(t, err)
	dir, err := s.Client(t).ConfigGet(context.Background(), "dir").Result()
	require.NoError(t, err)
	require.NotEmpty(t, dir["dir"])
	require.DirExists(t, dir["dir"])

	require.NoError(t, s.Close())
	require.Error(t, ping(t, s))
	_, err = os.Stat(dir["dir"])
	assert.ErrorIs(t, err, os.ErrNotExist, "Close removes the data directory")
}

func TestClientClosedWithTest(t *testing.T) {
	s := start(t)
	var c *redis.Client
	t.Run("inner", func(t *testing.T) {
		c = s.Client(t)
		require.NoError(t, c.Ping(context.Background()).Err())
	})
	assert.ErrorIs(t, c.Ping(context.Background()).Err(), redis.ErrClosed, "the client closes when its test ends")
}

func TestPrefix(t *testing.T) {
	seen := map[string]bool{}
	for range 100 {
		p := redistest.Prefix(t)
		assert.False(t, seen[p], "prefix %q handed out twice", p)
		seen[p] = true
		assert.True(t, strings.HasPrefix(p, "t:TestPrefix:"), "names the test: %q", p)
	}
	tests := map[string]struct{}{
		"a subtest/with slashes": {},
		"tabs\tand spaces":       {},
		"braces {x}":             {},
		"new\nline":              {},
	}
	for name := range tests {
		t.Run(name, func(t *testing.T) {
			p := redistest.Prefix(t)
			assert.NotContains(t, p, "/")
			assert.NotContains(t, p, " ")
			assert.NotContains(t, p, "{", "a prefix is used inside a hash tag")
			assert.NotContains(t, p, "}")
			assert.NotContains(t, p, "\n")
			assert.True(t, strings.HasPrefix(p, "t:TestPrefix."), "names the parent test: %q", p)
		})
	}
}

// TestResumeAfterCrash: a server that went away on its own (here: a
// SHUTDOWN the Server did not send) is started again by Resume.
func TestResumeAfterCrash(t *testing.T) {
	s := start(t)
	c := redis.NewClient(&redis.Options{Addr: s.Addr, MaxRetries: -1})
	defer c.Close()
	_ = c.Do(context.Background(), "SHUTDOWN", "NOSAVE").Err() // the connection drops: an error is the normal answer
	require.Eventually(t, func() bool {
		return s.Resume() == nil && ping(t, s) == nil
	}, 10*time.Second, 10*time.Millisecond, "Resume notices the process is gone and starts a new one")
}

// TestStartCluster: three masters form one cluster that serves keys of
// every slot, each master owning a third of the slots, and Close stops
// them all.
func TestStartCluster(t *testing.T) {
	c, err := redistest.StartCluster(3)
	require.NoError(t, err)
	cl := c.Client(t)
	ctx := context.Background()
	for i := range 300 {
		require.NoError(t, cl.Set(ctx, "k"+strconv.Itoa(i), i, 0).Err())
	}
	per := map[string]int64{}
	var mu sync.Mutex
	require.NoError(t, cl.ForEachMaster(ctx, func(ctx context.Context, m *redis.Client) error {
		n, err := m.DBSize(ctx).Result()
		mu.Lock()
		per[m.Options().Addr] = n
		mu.Unlock()
		return err
	}))
	require.Len(t, per, 3)
	for addr, n := range per {
		assert.Positive(t, n, "master %s holds keys", addr)
	}
	require.NoError(t, cl.Close())
	require.NoError(t, c.Close())
	for _, s := range c.Masters {
		assert.Error(t, ping(t, s), "stopped")
	}
}
