package main

import (
	"context"
	"encoding/base64"
	"encoding/json"
	"io"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"sigs.k8s.io/yaml"

	"github.com/tollgate/tollgate/internal/redistest"
)

var gossipKey = base64.StdEncoding.EncodeToString([]byte("0123456789abcdef0123456789abcdef"))

// keyEnv gives serve the gossip key the way a Secret would: in the
// environment.
func keyEnv(name string) string {
	if name == "TOLLGATE_GOSSIP_KEY" {
		return gossipKey
	}
	return ""
}

// clusterServeArgs is redisServeArgs as a fleet member named name, gossiping
// on 127.0.0.1:gossipPort and joining seeds.
func clusterServeArgs(grpcAddr, httpAddr, policyPath, prefix, name, gossipPort string, seeds ...string) []string {
	args := append(redisServeArgs(grpcAddr, httpAddr, policyPath, redisSrv.Addr, prefix),
		"--cluster", "--node-name", name, "--gossip-addr", "127.0.0.1", "--gossip-port", gossipPort)
	for _, s := range seeds {
		args = append(args, "--cluster-seeds", s)
	}
	return args
}

type clusterReport struct {
	Self    string
	Mode    string
	Live    int
	Members []struct{ Name, State string }
}

func getJSON(t *testing.T, url string, v any) int {
	t.Helper()
	resp, err := httpClient.Get(url)
	require.NoError(t, err)
	defer resp.Body.Close()
	require.NoError(t, json.NewDecoder(resp.Body).Decode(v))
	return resp.StatusCode
}

type readiness struct {
	Ready, Degraded bool
	Components      map[string]string
}

// TestServeCluster: two sidecars with --cluster form a fleet: /api/cluster
// lists both, budgets stay exact across them, and when Redis goes away
// they keep deciding (ready, degraded) and book what they decided when it
// returns.
func TestServeCluster(t *testing.T) {
	prefix := redistest.Prefix(t)
	policyPath := writePolicy(t, spendPolicy(""))
	grpcA, httpA, gossipA := freePort(t), freePort(t), freePort(t)
	grpcB, httpB := freePort(t), freePort(t)
	_, portA, err := net.SplitHostPort(gossipA)
	require.NoError(t, err)
	a := startRun(t, keyEnv, httpA, clusterServeArgs(grpcA, httpA, policyPath, prefix, "pod-a", portA)...)
	b := startRun(t, keyEnv, httpB, clusterServeArgs(grpcB, httpB, policyPath, prefix, "pod-b", "0", gossipA)...)

	var rep clusterReport
	require.Eventually(t, func() bool {
		getJSON(t, "http://"+httpA+"/api/cluster", &rep)
		return rep.Live == 2
	}, 10*time.Second, 20*time.Millisecond)
	assert.Equal(t, "pod-a", rep.Self)
	assert.Equal(t, "normal", rep.Mode)
	require.Len(t, rep.Members, 2)
	assert.Equal(t, "pod-a", rep.Members[0].Name)
	assert.Equal(t, "pod-b", rep.Members[1].Name)
	assert.Equal(t, "alive", rep.Members[1].State)
	var ready readiness
	assert.Equal(t, http.StatusOK, getJSON(t, "http://"+httpA+"/readyz", &ready))
	assert.Equal(t, readiness{Ready: true, Components: map[string]string{"policy": "ok", "server": "ok", "redis": "ok", "cluster": "ok"}}, ready)

	// acme's budget holds three calls, wherever they are admitted.
	var ids []string
	for i, grpcAddr := range []string{grpcA, grpcB, grpcA} {
		out, err := probeHold(grpcAddr)
		require.NoError(t, err, "call %d: %s", i+1, out)
		m := reservationLine.FindStringSubmatch(out)
		require.NotNil(t, m, out)
		ids = append(ids, m[1])
	}
	out, err := probeHold(grpcB)
	require.Error(t, err, out)
	assert.Contains(t, out, "x-tollgate-reason: budget_exceeded")

	// Redis goes away: both keep deciding, each on its share, and say so.
	require.NoError(t, redisSrv.Stop(true))
	resumed := false
	defer func() {
		if !resumed {
			_ = redisSrv.Resume()
		}
	}()
	require.Eventually(t, func() bool { // a second without an answer: Redis is down, not slow
		getJSON(t, "http://"+httpA+"/readyz", &ready)
		return ready.Degraded
	}, 10*time.Second, 20*time.Millisecond, "A finds Redis down")
	out, err = probeTour(grpcA, "--client", "acme-group")
	require.NoError(t, err, out)
	assert.Contains(t, out, "decision: ALLOWED", "decided on A's share of the pool")
	getJSON(t, "http://"+httpA+"/readyz", &ready)
	assert.True(t, ready.Ready, "a member in outage mode still decides: degraded, not unready")
	assert.Regexp(t, `^outage since \S+: Redis unreachable, deciding on this member's 1/2 share$`, ready.Components["cluster"])
	require.Eventually(t, func() bool {
		getJSON(t, "http://"+httpA+"/readyz", &ready)
		return ready.Components["redis"] != "ok"
	}, 10*time.Second, 20*time.Millisecond, "the probe notices")
	assert.True(t, ready.Ready)
	assert.Regexp(t, `^unreachable since \S+ \(\d+ failed probes\): .+; this member decides on its share of each pool and budget$`, ready.Components["redis"])
	getJSON(t, "http://"+httpA+"/api/cluster", &rep)
	assert.Equal(t, "outage", rep.Mode)

	// The three holds settle while Redis is away (through the API, as a
	// worker without ext_proc would); Redis hears of it when it is back.
	for _, id := range ids {
		resp, err := httpClient.Post("http://"+httpA+"/api/reservations/"+id+"/settle", "application/json",
			strings.NewReader(`{"actual_cost_usd":"0.004"}`))
		require.NoError(t, err)
		require.NoError(t, resp.Body.Close())
		require.Equal(t, http.StatusOK, resp.StatusCode)
	}
	require.NoError(t, redisSrv.Resume())
	resumed = true
	require.Eventually(t, func() bool {
		getJSON(t, "http://"+httpA+"/readyz", &ready)
		return !ready.Degraded
	}, 10*time.Second, 20*time.Millisecond, "back to normal once Redis answers")
	for _, addr := range []string{httpA, httpB} {
		require.Eventually(t, func() bool {
			out, err := runUsage("acme", "--addr", addr)
			return err == nil && regexp.MustCompile(`(?m)^acme\s+\$0\.036\s+\$0\.012\s+\$0\s+\$0\.024$`).MatchString(out)
		}, 5*time.Second, 20*time.Millisecond, "%s: the settles made during the outage are booked", addr)
	}

	require.NoError(t, b.stop(t))
	require.Eventually(t, func() bool {
		getJSON(t, "http://"+httpA+"/api/cluster", &rep)
		return rep.Live == 1
	}, 10*time.Second, 20*time.Millisecond, "a member that stops leaves the fleet")
	require.NoError(t, a.stop(t))
	assert.Contains(t, a.stderr.String(), "joined the fleet")
	assert.Contains(t, a.stderr.String(), "shared store unreachable: deciding locally")
	assert.Contains(t, a.stderr.String(), "outage mode over")
}

// TestServeClusterFlagErrors: a fleet that cannot work stops serve at once
// with an error that names the problem.
func TestServeClusterFlagErrors(t *testing.T) {
	keyFile := filepath.Join(t.TempDir(), "key")
	require.NoError(t, os.WriteFile(keyFile, []byte(gossipKey+"\n"), 0o600))
	short := base64.StdEncoding.EncodeToString([]byte("short"))
	badKeys := filepath.Join(t.TempDir(), "keys")
	require.NoError(t, os.WriteFile(badKeys, []byte(gossipKey+"\nnot base64!\n"), 0o600))
	tests := map[string]struct {
		args []string
		env  func(string) string
		want string
	}{
		"on the memory store": {args: []string{"--cluster"}, env: keyEnv, want: "--cluster needs --store redis"},
		"without a key": {
			args: []string{"--cluster", "--store", "redis", "--redis-addr", "127.0.0.1:1"},
			env:  noEnv, want: "a gossip key is needed",
		},
		"a key that is not base64": {
			args: []string{"--cluster", "--store", "redis", "--redis-addr", "127.0.0.1:1", "--gossip-key", "not base64!"},
			env:  noEnv, want: "not base64",
		},
		"a key of the wrong length": {
			args: []string{"--cluster", "--store", "redis", "--redis-addr", "127.0.0.1:1", "--gossip-key", short},
			env:  noEnv, want: "must be 16, 24 or 32 bytes, got 5",
		},
		"a missing key file": {
			args: []string{"--cluster", "--store", "redis", "--redis-addr", "127.0.0.1:1", "--gossip-key-file", filepath.Join(t.TempDir(), "none")},
			env:  noEnv, want: "no such file",
		},
		"a key file with a bad second key": {
			args: []string{"--cluster", "--store", "redis", "--redis-addr", "127.0.0.1:1", "--gossip-key-file", badKeys},
			env:  noEnv, want: "gossip key file: line 2: not base64",
		},
		"a key twice": {
			args: []string{"--cluster", "--store", "redis", "--redis-addr", "127.0.0.1:1", "--gossip-key-file", keyFile},
			env:  keyEnv, want: "not both",
		},
		"a gossip port in use": {
			args: []string{"--cluster", "--store", "redis", "--redis-addr", "127.0.0.1:1", "--gossip-key-file", keyFile,
				"--gossip-addr", "127.0.0.1", "--gossip-port", "PORT"},
			env: noEnv, want: "start gossip on 127.0.0.1",
		},
	}
	for name, tc := range tests {
		t.Run(name, func(t *testing.T) {
			for i, a := range tc.args {
				if a == "PORT" {
					l, err := (&net.ListenConfig{}).Listen(context.Background(), "tcp", "127.0.0.1:0")
					require.NoError(t, err)
					defer l.Close()
					_, p, _ := net.SplitHostPort(l.Addr().String())
					tc.args[i] = p
				}
			}
			args := append(serveArgs(freePort(t), freePort(t), "--policy", tourPolicy), tc.args...)
			err := run(context.Background(), args, tc.env, io.Discard, io.Discard)
			require.ErrorContains(t, err, tc.want)
		})
	}
}

// TestServeClusterNameTaken: serve given the name of a live member does
// not start, and says where that member is; without --node-name, two
// members of one host are two.
func TestServeClusterNameTaken(t *testing.T) {
	prefix := redistest.Prefix(t)
	policyPath := writePolicy(t, spendPolicy(""))
	grpcA, httpA, gossipA := freePort(t), freePort(t), freePort(t)
	_, portA, err := net.SplitHostPort(gossipA)
	require.NoError(t, err)
	a := startRun(t, keyEnv, httpA, clusterServeArgs(grpcA, httpA, policyPath, prefix, "pod-a", portA)...)

	err = run(context.Background(), clusterServeArgs(freePort(t), freePort(t), policyPath, prefix, "pod-a", "0", gossipA), keyEnv, io.Discard, io.Discard)
	require.ErrorContains(t, err, `the node name "pod-a" is held by a live member at `+gossipA)

	httpB := freePort(t)
	b := startRun(t, keyEnv, httpB, append(redisServeArgs(freePort(t), httpB, policyPath, redisSrv.Addr, prefix),
		"--cluster", "--gossip-addr", "127.0.0.1", "--gossip-port", "0", "--cluster-seeds", gossipA)...)
	var rep clusterReport
	require.Eventually(t, func() bool {
		getJSON(t, "http://"+httpB+"/api/cluster", &rep)
		return rep.Live == 2
	}, 10*time.Second, 20*time.Millisecond)
	host, err := os.Hostname()
	require.NoError(t, err)
	assert.True(t, strings.HasPrefix(rep.Self, host+"-"), "named by the host: %s", rep.Self)

	require.NoError(t, b.stop(t))
	require.Eventually(t, func() bool { // then A stops with no one left to probe
		getJSON(t, "http://"+httpA+"/api/cluster", &rep)
		return rep.Live == 1
	}, 10*time.Second, 20*time.Millisecond)
	require.NoError(t, a.stop(t))
}

// TestComposeCommandsAreServeFlags: every Tollgate command in the compose
// files is one serve accepts (envoy/compose_test.go checks what they mean).
func TestComposeCommandsAreServeFlags(t *testing.T) {
	for _, file := range []string{"../../deploy/docker-compose.yaml", "../../deploy/docker-compose.fleet.yaml"} {
		raw, err := os.ReadFile(file)
		require.NoError(t, err)
		var c struct {
			Services map[string]struct {
				Build *struct {
					Dockerfile string `json:"dockerfile"`
					Target     string `json:"target"`
				} `json:"build"`
				Command []string `json:"command"`
			} `json:"services"`
		}
		require.NoError(t, yaml.Unmarshal(raw, &c))
		n := 0
		for name, s := range c.Services {
			// The Tollgate image: the Dockerfile's default target (or the
			// base file's tollgate service, which the override extends).
			tollgate := s.Build != nil && s.Build.Dockerfile == "deploy/Dockerfile" && s.Build.Target == ""
			if !tollgate && (name != "tollgate" || s.Build != nil) {
				continue
			}
			n++
			cmd := serveCmd(noEnv)
			require.NoError(t, cmd.ParseFlags(s.Command), "%s: %s", file, name)
			assert.Empty(t, cmd.Flags().Args(), "%s: %s: stray arguments", file, name)
		}
		assert.NotZero(t, n, file)
	}
}
