package cluster_test

import (
	"context"
	"net"
	"os"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/tollgate/tollgate/cluster"
	"github.com/tollgate/tollgate/limiter"
)

// startNode starts one node of cfg, killed when t ends.
func startNode(t *testing.T, cfg cluster.NodeConfig, rec *recorder) *cluster.Node {
	t.Helper()
	n, err := cluster.NewNode(cfg, rec.mine, rec)
	require.NoError(t, err)
	t.Cleanup(func() { _ = n.Kill() })
	return n
}

func newRecorder() *recorder { return &recorder{demand: map[string]float64{}} }

// memberAt reports how nd sees the member named name: its state and
// address ("" when it lists none).
func memberAt(nd *cluster.Node, name string) (state, addr string) {
	for _, m := range nd.Members() {
		if m.Name == name {
			return m.State, m.Addr
		}
	}
	return "", ""
}

// freePort is a loopback port free a moment ago, for TCP and UDP.
func freePort(t *testing.T) int {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	require.NoError(t, err)
	port := l.Addr().(*net.TCPAddr).Port
	require.NoError(t, l.Close())
	return port
}

// TestDefaultName: without --node-name a node is named by its host and its
// gossip port, so two of one host never share a name; with port 0, by its
// host and a random suffix.
func TestDefaultName(t *testing.T) {
	host, err := os.Hostname()
	require.NoError(t, err)
	port := freePort(t)
	cfg := nodeConfig("", fleetKey)
	cfg.BindPort = port
	a := startNode(t, cfg, newRecorder())
	assert.Equal(t, host+"-"+strconv.Itoa(port), a.Name())

	b := startNode(t, nodeConfig("", fleetKey, a.Addr()), newRecorder())
	assert.True(t, strings.HasPrefix(b.Name(), host+"-"), b.Name())
	assert.NotEqual(t, a.Name(), b.Name())
	require.Eventually(t, func() bool { return a.Live() == 2 && b.Live() == 2 }, 10*time.Second, 10*time.Millisecond, "two of one host are two members")
}

// TestDefaultNameTaken: a default name a live member holds (another host
// of the same name, on the same port) is replaced by one of the node's
// own, and the node joins.
func TestDefaultNameTaken(t *testing.T) {
	host, err := os.Hostname()
	require.NoError(t, err)
	port := freePort(t)
	taken := host + "-" + strconv.Itoa(port)
	a := startNode(t, nodeConfig(taken, fleetKey), newRecorder())
	cfg := nodeConfig("", fleetKey, a.Addr())
	cfg.BindPort = port
	b := startNode(t, cfg, newRecorder())
	assert.True(t, strings.HasPrefix(b.Name(), taken+"-"), "a name of its own: %s", b.Name())
	require.Eventually(t, func() bool { return a.Live() == 2 && b.Live() == 2 }, 10*time.Second, 10*time.Millisecond)
	assert.Zero(t, b.Conflicts(), "the node that took another name has no clash left")
}

// TestNameTaken: a node given a name a live member holds does not start,
// and says where that member is; the member stays in the fleet throughout.
func TestNameTaken(t *testing.T) {
	nodes := startNodes(t, 2)
	holder := nodes[0]
	_, err := cluster.NewNode(nodeConfig("node-0", fleetKey, nodes[1].Addr()), newRecorder().mine, newRecorder())
	require.Error(t, err)
	assert.ErrorContains(t, err, `"node-0"`)
	assert.ErrorContains(t, err, holder.Addr(), "the error names the other member's address")
	assert.Never(t, func() bool {
		state, addr := memberAt(nodes[1].Node, "node-0")
		return state != "alive" || addr != holder.Addr()
	}, 500*time.Millisecond, 10*time.Millisecond, "the member keeps its name and place")
	require.Eventually(t, func() bool { return nodes[1].Live() == 2 }, 10*time.Second, 10*time.Millisecond,
		"the refused node, counted while it might be live, is counted no more")
}

// TestSameNameNeverAlone: two nodes that share a name and meet after both
// started (through different seeds) each count the other: neither believes
// it is alone. Each clash is counted.
func TestSameNameNeverAlone(t *testing.T) {
	first := startNode(t, nodeConfig("twin", fleetKey), newRecorder())
	second := startNode(t, nodeConfig("twin", fleetKey), newRecorder())
	require.Equal(t, 1, first.Live())
	_, err := second.Join(first.Addr())
	require.NoError(t, err)
	require.Eventually(t, func() bool { return first.Live() == 2 && second.Live() == 2 }, 10*time.Second, 10*time.Millisecond,
		"each counts the other: first %d, second %d", first.Live(), second.Live())
	assert.Equal(t, int64(1), first.Conflicts())
	assert.Equal(t, int64(1), second.Conflicts())

	require.NoError(t, second.Kill())
	require.Eventually(t, func() bool { return first.Live() == 1 }, 10*time.Second, 10*time.Millisecond, "gone: counted no more")
}

// TestImpostorLeave: a node that took a live member's name (it started
// alone, then joined) is counted but never taken for the member: its
// gossip is not the member's, and its leave does not drop the member.
func TestImpostorLeave(t *testing.T) {
	nodes := startNodes(t, 2)
	real, peer := nodes[0], nodes[1]
	rec := newRecorder()
	rec.demand["gpt"] = 1000
	impostor := startNode(t, nodeConfig("node-0", fleetKey), rec)
	_, err := impostor.Join(peer.Addr())
	require.NoError(t, err)
	require.Eventually(t, func() bool { return peer.Live() == 3 && impostor.Live() == 3 }, 10*time.Second, 10*time.Millisecond,
		"three nodes: peer %d, impostor %d", peer.Live(), impostor.Live())

	impostor.Spend([]limiter.SpendDelta{{Owner: "acme", Period: "2026-01", Spent: 1}})
	impostor.Backoff("gpt", time.Minute, 0)
	assert.Never(t, func() bool {
		spends, backoffs := peer.rec.heard()
		for _, m := range peer.Members() {
			if m.Name == "node-0" && m.Demand["gpt"] > 0 {
				return true
			}
		}
		return len(spends) > 0 || len(backoffs) > 0
	}, 500*time.Millisecond, 10*time.Millisecond, "what the impostor says is not the member's word")

	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
	defer cancel()
	require.NoError(t, impostor.Leave(ctx))
	assert.Never(t, func() bool {
		state, addr := memberAt(peer.Node, "node-0")
		return state != "alive" || addr != real.Addr()
	}, time.Second, 5*time.Millisecond, "the impostor's leave does not drop the member")
	require.Eventually(t, func() bool { return peer.Live() == 2 }, 10*time.Second, 10*time.Millisecond, "the impostor is counted no more")
}
