package cluster_test

import (
	"context"
	"fmt"
	"net"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/hashicorp/memberlist"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/tollgate/tollgate/cluster"
	"github.com/tollgate/tollgate/limiter"
	"github.com/tollgate/tollgate/policy"
)

var (
	fleetKey = []byte("0123456789abcdef0123456789abcdef")
	otherKey = []byte("fedcba9876543210fedcba9876543210")
)

// fastProbes shortens memberlist's failure detection for tests on
// loopback: a silent member is dead within about a second.
func fastProbes(c *memberlist.Config) {
	c.ProbeInterval, c.ProbeTimeout = 100*time.Millisecond, 50*time.Millisecond
	c.GossipInterval, c.SuspicionMult = 20*time.Millisecond, 2
	c.PushPullInterval, c.TCPTimeout = time.Second, time.Second
	c.GossipToTheDeadTime = time.Second
}

func nodeConfig(name string, key []byte, seeds ...string) cluster.NodeConfig {
	return cluster.NodeConfig{Name: name, BindAddr: "127.0.0.1", BindPort: 0, Seeds: seeds, Key: key,
		DemandEvery: 50 * time.Millisecond, RejoinEvery: 200 * time.Millisecond, Tune: fastProbes}
}

// recorder is the layer above a Node in these tests: it keeps what peers
// said.
type recorder struct {
	mu       sync.Mutex
	spends   []string // "from owner/period spent"
	backoffs []string // "from pool pause remaining"
	refills  []string // "from pool units"
	demand   map[string]float64
}

func (r *recorder) Spend(from string, deltas []limiter.SpendDelta) {
	r.mu.Lock()
	defer r.mu.Unlock()
	for _, d := range deltas {
		r.spends = append(r.spends, fmt.Sprintf("%s %s/%s %d", from, d.Owner, d.Period, d.Spent))
	}
}

func (r *recorder) Backoff(from, pool string, pause time.Duration, remaining int64) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.backoffs = append(r.backoffs, fmt.Sprintf("%s %s %v %d", from, pool, pause.Round(time.Second), remaining)) // the pause is until a time: less the time in transit
}

func (r *recorder) MembersChanged() {}

func (r *recorder) Refill(from, pool string, units int64) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.refills = append(r.refills, fmt.Sprintf("%s %s %d", from, pool, units))
}

func (r *recorder) mine() map[string]float64 {
	r.mu.Lock()
	defer r.mu.Unlock()
	out := make(map[string]float64, len(r.demand))
	for k, v := range r.demand {
		out[k] = v
	}
	return out
}

func (r *recorder) heard() (spends, backoffs []string) {
	r.mu.Lock()
	defer r.mu.Unlock()
	return append([]string(nil), r.spends...), append([]string(nil), r.backoffs...)
}

type testNode struct {
	*cluster.Node
	rec *recorder
}

// startNodes starts n nodes on loopback, each joining the first, and waits
// until every one sees all of them.
func startNodes(t *testing.T, n int) []testNode {
	t.Helper()
	return startNodesWith(t, n, nil)
}

// startNodesWith is startNodes with node i's config and recorder set up by
// tune (nil: as they are) before it starts.
func startNodesWith(t *testing.T, n int, tune func(i int, c *cluster.NodeConfig, r *recorder)) []testNode {
	t.Helper()
	var nodes []testNode
	for i := range n {
		rec := &recorder{demand: map[string]float64{}}
		var seeds []string
		if i > 0 {
			seeds = []string{nodes[0].Addr()}
		}
		cfg := nodeConfig(fmt.Sprintf("node-%d", i), fleetKey, seeds...)
		if tune != nil {
			tune(i, &cfg, rec)
		}
		node, err := cluster.NewNode(cfg, rec.mine, rec)
		require.NoError(t, err)
		t.Cleanup(func() { _ = node.Kill() })
		nodes = append(nodes, testNode{node, rec})
	}
	require.Eventually(t, func() bool {
		for _, nd := range nodes {
			if nd.Live() != n {
				return false
			}
		}
		return true
	}, 10*time.Second, 10*time.Millisecond, "every node sees %d members", n)
	return nodes
}

func TestNodeConfig(t *testing.T) {
	good := nodeConfig("a", fleetKey)
	require.NoError(t, good.Validate())
	for name, c := range map[string]func(*cluster.NodeConfig){
		"no key":         func(c *cluster.NodeConfig) { c.Key = nil },
		"short key":      func(c *cluster.NodeConfig) { c.Key = []byte("short") },
		"port too large": func(c *cluster.NodeConfig) { c.BindPort = 70000 },
		"no interval":    func(c *cluster.NodeConfig) { c.DemandEvery = 0 },
	} {
		t.Run(name, func(t *testing.T) {
			cfg := good
			c(&cfg)
			_, err := cluster.NewNode(cfg, func() map[string]float64 { return nil }, nil)
			require.Error(t, err)
		})
	}
	d := cluster.DefaultNodeConfig()
	assert.Equal(t, 7946, d.BindPort, "memberlist's port")
	assert.Empty(t, d.Name, "named when it starts, by the host and the port (TestDefaultName)")
}

// TestMembership: three nodes join through one seed and list each other
// alive; one that leaves is gone from the others' count at once.
func TestMembership(t *testing.T) {
	nodes := startNodes(t, 3)
	ms := nodes[1].Members()
	require.Len(t, ms, 3)
	for i, m := range ms {
		assert.Equal(t, fmt.Sprintf("node-%d", i), m.Name)
		assert.Equal(t, "alive", m.State)
		assert.Equal(t, i == 1, m.Self)
		assert.True(t, strings.HasPrefix(m.Addr, "127.0.0.1:"), m.Addr)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
	defer cancel()
	require.NoError(t, nodes[2].Leave(ctx))
	require.NoError(t, nodes[2].Leave(ctx), "idempotent")
	for _, nd := range nodes[:2] {
		require.Eventually(t, func() bool { return nd.Live() == 2 }, 5*time.Second, 10*time.Millisecond)
	}
	assert.Len(t, nodes[0].Members(), 2)
}

// TestWrongKey: a node with another key can neither join nor be heard.
func TestWrongKey(t *testing.T) {
	nodes := startNodes(t, 2)
	rec := &recorder{demand: map[string]float64{"gpt": 1000}}
	intruder, err := cluster.NewNode(nodeConfig("intruder", otherKey, nodes[0].Addr()), rec.mine, rec)
	require.NoError(t, err, "it starts, alone")
	t.Cleanup(func() { _ = intruder.Kill() })
	_, err = intruder.Join(nodes[1].Addr())
	require.Error(t, err, "the push/pull handshake fails without the key")

	keyless := nodeConfig("keyless", nil, nodes[0].Addr())
	_, err = cluster.NewNode(keyless, rec.mine, rec)
	require.Error(t, err, "gossip without a key is refused outright")

	intruder.Spend([]limiter.SpendDelta{{Owner: "acme", Period: "2026-01", Spent: 1}})
	intruder.Backoff("gpt", time.Minute, 0)
	heardAny := func() bool {
		for _, nd := range nodes {
			spends, backoffs := nd.rec.heard()
			if nd.Live() != 2 || len(spends) > 0 || len(backoffs) > 0 {
				return true
			}
		}
		return intruder.Live() != 1
	}
	assert.Never(t, heardAny, 500*time.Millisecond, 10*time.Millisecond, "many gossip rounds and a rejoin attempt: nothing gets through")
	for _, nd := range nodes {
		assert.Equal(t, 2, nd.Live())
		for _, m := range nd.Members() {
			assert.NotEqual(t, "intruder", m.Name)
		}
		spends, backoffs := nd.rec.heard()
		assert.Empty(t, spends)
		assert.Empty(t, backoffs)
		assert.InDelta(t, 0.5, nd.Share("gpt"), 1e-9, "the intruder's demand is not counted")
	}
	assert.Equal(t, 1, intruder.Live())
}

// TestSignals: spend and back-off reach every other member once; demand
// sets each member's share.
func TestSignals(t *testing.T) {
	nodes := startNodes(t, 3)
	deltas := []limiter.SpendDelta{{Owner: "acme", Period: "2026-01", Spent: 1500}, {Owner: "globex", Period: "2026-01", Spent: -20}}
	nodes[0].Spend(deltas)
	nodes[0].Backoff("gpt", 30*time.Second, 0)
	// Enough deltas to need several messages.
	var many []limiter.SpendDelta
	for i := range 60 {
		many = append(many, limiter.SpendDelta{Owner: fmt.Sprintf("tenant-with-a-long-name-%02d", i), Period: "2026-01", Spent: policy.Money(i + 1)})
	}
	nodes[1].Spend(many)
	for i, nd := range nodes {
		want := 62
		if i == 1 {
			want = 2
		}
		if i == 0 {
			want = 60
		}
		require.Eventually(t, func() bool { s, _ := nd.rec.heard(); return len(s) >= want }, 5*time.Second, 10*time.Millisecond, "node %d: %v", i, func() []string { s, _ := nd.rec.heard(); return s }())
	}
	tooMany := func() bool { // retransmissions arrive, and are dropped
		for i, nd := range nodes {
			if s, _ := nd.rec.heard(); len(s) > []int{60, 2, 62}[i] {
				return true
			}
		}
		return false
	}
	assert.Never(t, tooMany, 300*time.Millisecond, 10*time.Millisecond, "each delta is handed up once")
	for i, nd := range nodes {
		spends, backoffs := nd.rec.heard()
		switch i {
		case 0:
			assert.Len(t, spends, 60)
			assert.Empty(t, backoffs, "a member does not hear itself")
		default:
			assert.Contains(t, spends, "node-0 acme/2026-01 1500")
			assert.Contains(t, spends, "node-0 globex/2026-01 -20")
			assert.Equal(t, []string{"node-0 gpt 30s 0"}, backoffs)
			if i == 1 {
				assert.Len(t, spends, 2)
			} else {
				assert.Len(t, spends, 62, "each delta once")
				assert.Contains(t, spends, "node-1 tenant-with-a-long-name-59/2026-01 60")
			}
		}
	}

	nodes[0].rec.mu.Lock()
	nodes[0].rec.demand["gpt"] = 30
	nodes[0].rec.mu.Unlock()
	nodes[1].rec.mu.Lock()
	nodes[1].rec.demand["gpt"] = 10
	nodes[1].rec.mu.Unlock()
	peerDemand := func() map[string]float64 {
		for _, m := range nodes[2].Members() {
			if m.Name == "node-0" {
				return m.Demand
			}
		}
		return nil
	}
	require.Eventually(t, func() bool {
		return nodes[0].Share("gpt") == 0.75 && nodes[1].Share("gpt") == 0.25 && nodes[2].Share("gpt") == 1.0/12 &&
			peerDemand()["gpt"] == 30
	}, 5*time.Second, 10*time.Millisecond, "shares follow demand; an idle member keeps a floor of a quarter of an equal share; members list their peers' demand")
	assert.InDelta(t, 1.0/3, nodes[2].Share("claude"), 1e-9, "no demand anywhere: equal shares")
}

// TestJoinByDNS: a node given a name (as a Kubernetes headless service
// would be) joins the members its addresses lead to.
func TestJoinByDNS(t *testing.T) {
	nodes := startNodes(t, 1)
	_, port, err := net.SplitHostPort(nodes[0].Addr())
	require.NoError(t, err)
	rec := &recorder{demand: map[string]float64{}}
	cfg := nodeConfig("by-dns", fleetKey)
	cfg.DNS = net.JoinHostPort("localhost", port) // /etc/hosts: 127.0.0.1 (and ::1, where nothing listens)
	n, err := cluster.NewNode(cfg, rec.mine, rec)
	require.NoError(t, err)
	t.Cleanup(func() { _ = n.Kill() })
	require.Eventually(t, func() bool { return n.Live() == 2 && nodes[0].Live() == 2 }, 10*time.Second, 10*time.Millisecond)

	cfg = nodeConfig("nowhere", fleetKey)
	cfg.DNS = "no-such-host.invalid"
	lone, err := cluster.NewNode(cfg, rec.mine, rec)
	require.NoError(t, err, "a name that does not resolve yet is retried, not fatal")
	t.Cleanup(func() { _ = lone.Kill() })
	_, err = lone.Join()
	require.ErrorContains(t, err, "no-such-host.invalid")
	assert.Equal(t, 1, lone.Live())
}
