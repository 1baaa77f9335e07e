package cluster

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"sort"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	"github.com/hashicorp/memberlist"

	"github.com/tollgate/tollgate/limiter"
)

// Membership: hashicorp/memberlist with its LAN defaults, gossip encrypted
// with a shared key, and three kinds of message on top: each member's
// demand per pool, spend booked locally, and upstream back-off.

// NodeConfig configures a Node.
type NodeConfig struct {
	// Name is the member's name, unique in the fleet. Empty: the host name
	// and the gossip port (a random suffix with port 0), unique on one
	// host. A name a live member at another address holds is refused at
	// start; the default one is replaced by one of its own (identity.go).
	Name string
	// BindAddr and BindPort are where gossip listens (UDP and TCP); port 0
	// picks a free one.
	BindAddr string
	BindPort int
	// AdvertiseAddr and AdvertisePort are what others dial (the pod's IP);
	// empty means the bound address.
	AdvertiseAddr string
	AdvertisePort int
	// Seeds are host:port addresses of members to join; DNS is a name (a
	// Kubernetes headless service) whose addresses are members, on
	// BindPort (or DNS's own :port).
	Seeds []string
	DNS   string
	// Key encrypts and authenticates gossip (16, 24 or 32 bytes): a node
	// without it can neither join nor inject.
	Key []byte
	// Keys are more keys gossip is read with beside Key (a rotation's old or
	// new key, see keyring.go); Key stays the one it is sent with.
	Keys [][]byte
	// Logger receives memberlist's log (at debug) and the node's own.
	Logger *slog.Logger
	// DemandEvery is how often a member broadcasts its demand.
	DemandEvery time.Duration
	// RejoinEvery is how often a member that knows no peer retries its
	// seeds (they may start after it).
	RejoinEvery time.Duration
	// Tune, when set, adjusts memberlist's settings after Tollgate's (tests
	// use it for shorter probes).
	Tune func(*memberlist.Config)
	// Clock is the time the node stamps what it hears and says with: when
	// a peer's demand goes stale, when a pause it hears of ends (nil: the
	// system clock). memberlist keeps its own timers, and the demand and
	// rejoin rounds tick in real time; each round reads this clock.
	Clock limiter.Clock
}

// DefaultNodeConfig returns memberlist's LAN settings on port 7946, named
// by the host and the port (in Kubernetes, the pod's name and 7946).
func DefaultNodeConfig() NodeConfig {
	return NodeConfig{BindAddr: "0.0.0.0", BindPort: 7946, DemandEvery: time.Second, RejoinEvery: 5 * time.Second}
}

// Validate reports a configuration that cannot work.
func (c NodeConfig) Validate() error {
	var errs []error
	if err := memberlist.ValidateKey(c.Key); err != nil || len(c.Key) == 0 {
		errs = append(errs, fmt.Errorf("cluster: the gossip key must be 16, 24 or 32 bytes, got %d", len(c.Key)))
	}
	for _, k := range c.Keys {
		if err := memberlist.ValidateKey(k); err != nil || len(k) == 0 {
			errs = append(errs, fmt.Errorf("cluster: a secondary gossip key must be 16, 24 or 32 bytes, got %d", len(k)))
		}
	}
	if c.BindPort < 0 || c.BindPort > 65535 || c.AdvertisePort < 0 || c.AdvertisePort > 65535 {
		errs = append(errs, fmt.Errorf("cluster: port out of range"))
	}
	if c.DemandEvery <= 0 || c.RejoinEvery <= 0 {
		errs = append(errs, errors.New("cluster: intervals must be positive"))
	}
	return errors.Join(errs...)
}

// Member is one node as this one sees it.
type Member struct {
	Name   string             `json:"name"`
	Addr   string             `json:"addr"`
	State  string             `json:"state"` // alive, suspect, dead, left
	Self   bool               `json:"self,omitempty"`
	Demand map[string]float64 `json:"demand_per_second,omitempty"` // units a second, by pool
	// Weighted is the demand weighted by the calls' priority, by pool
	// (priority.go).
	Weighted map[string]float64 `json:"weighted_demand,omitempty"`
}

// Signals is what a Node hands up when peers speak. Methods are called from
// memberlist's receive loop and must not block.
type Signals interface {
	Spend(from string, deltas []limiter.SpendDelta)
	Backoff(from, pool string, pause time.Duration, remaining int64)
	MembersChanged()
}

// Node is this sidecar's membership of the fleet.
type Node struct {
	cfg  NodeConfig
	log  *slog.Logger
	ml   atomic.Pointer[memberlist.Memberlist] // set once Create returns; its goroutines may ask for Live before
	bq   *memberlist.TransmitLimitedQueue
	sig  Signals
	stop chan struct{}
	wg   sync.WaitGroup

	mine  func() map[string]float64
	known atomic.Int64 // members joined less left, kept by events

	// Identity (identity.go). cmu guards holders and ids; it is taken
	// inside memberlist's lock (by its delegates) and never held while
	// calling memberlist.
	id        identity
	cmu       sync.Mutex
	holders   map[string]*holder // live nodes under members' names, by name and address
	ids       map[string]string  // member name → instance, from its metadata
	extra     atomic.Int64       // holders, counted as live members
	conflicts atomic.Int64       // holders ever found
	yield     atomic.Bool        // another live holder of this name started first: announce no leave

	// ring holds the gossip keys; keyMu orders key changes (keyring.go).
	ring  *memberlist.Keyring
	keyMu sync.Mutex

	mu     sync.Mutex
	demand map[string]peerDemand // by member
	gossip                       // what this member said and heard (gossip.go)

	shutdownOnce sync.Once
	shutdownErr  error
}

type peerDemand struct {
	rates, weighted map[string]float64
	at              time.Time
}

// NewNode starts gossip and tries to join the seeds (or DNS). A node that
// finds no peer keeps trying in the background: it works alone meanwhile.
// A node whose name a live member at another address holds does not start
// (with the default name, it takes one of its own). mine reports this
// node's demand per pool; sig receives what peers say.
func NewNode(cfg NodeConfig, mine func() map[string]float64, sig Signals) (*Node, error) {
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.New(slog.DiscardHandler)
	}
	if cfg.Clock == nil {
		cfg.Clock = limiter.SystemClock{}
	}
	id := newIdentity()
	chosen := cfg.Name == ""
	if chosen {
		cfg.Name = defaultName(cfg.BindPort, id)
	}
	n, err := startNode(cfg, id, mine, sig)
	if err != nil {
		return nil, err
	}
	holder := n.heldBy()
	if holder != "" && chosen {
		// Another host of the same name gossips on the same port: a name
		// of this node's own.
		alt := cfg.Name + "-" + id.Instance[:6]
		n.log.Warn("the default node name is held by a live member; taking another",
			slog.String("node", cfg.Name), slog.String("other", holder), slog.String("name", alt))
		if err := n.ml.Load().Shutdown(); err != nil { // no leave: it would drop the member that holds the name
			return nil, fmt.Errorf("cluster: stop gossip: %w", err)
		}
		cfg.Name = alt
		if n, err = startNode(cfg, id, mine, sig); err != nil {
			return nil, err
		}
		holder = n.heldBy()
	}
	if holder != "" {
		return nil, errors.Join(nameTaken(cfg.Name, holder), n.ml.Load().Shutdown())
	}
	n.wg.Add(1)
	go n.loop()
	return n, nil
}

// startNode creates a node's memberlist under cfg.Name and joins the seeds.
func startNode(cfg NodeConfig, id identity, mine func() map[string]float64, sig Signals) (*Node, error) {
	n := &Node{cfg: cfg, log: cfg.Logger.With(slog.String("component", "cluster")), sig: sig, mine: mine,
		demand: map[string]peerDemand{}, gossip: newGossip(), stop: make(chan struct{}),
		id: id, holders: map[string]*holder{}, ids: map[string]string{}}
	mc := memberlist.DefaultLANConfig()
	mc.Name = cfg.Name
	mc.BindAddr, mc.BindPort = cfg.BindAddr, cfg.BindPort
	mc.AdvertiseAddr, mc.AdvertisePort = cfg.AdvertiseAddr, cfg.AdvertisePort
	if mc.AdvertisePort == 0 {
		mc.AdvertisePort = cfg.BindPort
	}
	mc.SecretKey = append([]byte(nil), cfg.Key...)
	ring, err := memberlist.NewKeyring(cfg.Keys, mc.SecretKey)
	if err != nil {
		return nil, fmt.Errorf("cluster: gossip keys: %w", err)
	}
	mc.Keyring, n.ring = ring, ring
	mc.GossipVerifyIncoming, mc.GossipVerifyOutgoing = true, true
	mc.Logger = slog.NewLogLogger(n.log.Handler(), slog.LevelDebug)
	mc.Delegate = (*delegate)(n)
	mc.Events = (*events)(n)
	mc.Conflict = (*conflictDelegate)(n)
	if cfg.Tune != nil {
		cfg.Tune(mc)
	}
	// The queue asks for the count holding its lock, which Node.mu callers
	// also take: the count must not wait on memberlist's own lock.
	n.known.Store(1)
	n.bq = &memberlist.TransmitLimitedQueue{NumNodes: func() int { return int(max(n.known.Load(), 1)) }, RetransmitMult: mc.RetransmitMult}
	ml, err := memberlist.Create(mc)
	if err != nil {
		return nil, fmt.Errorf("cluster: start gossip on %s:%d: %w", cfg.BindAddr, cfg.BindPort, err)
	}
	n.ml.Store(ml)
	if _, err := n.Join(); err != nil {
		n.log.Warn("no peer reached yet; retrying in the background", slog.Any("error", err))
	}
	return n, nil
}

// now reads the node's clock (the system clock for a Node built without
// NewNode, as the fuzz test builds one).
func (n *Node) now() time.Time {
	if n.cfg.Clock == nil {
		return time.Now()
	}
	return n.cfg.Clock.Now()
}

// Addr is where this node gossips.
func (n *Node) Addr() string {
	ln := n.ml.Load().LocalNode()
	return net.JoinHostPort(ln.Addr.String(), strconv.Itoa(int(ln.Port)))
}

// Name is this node's name.
func (n *Node) Name() string { return n.cfg.Name }

// Join joins the seeds, the DNS name's addresses and addrs, and reports how
// many it reached.
func (n *Node) Join(addrs ...string) (int, error) {
	addrs = append(append([]string(nil), addrs...), n.cfg.Seeds...)
	if n.cfg.DNS != "" {
		host, port := n.cfg.DNS, strconv.Itoa(n.cfg.BindPort)
		if h, p, err := net.SplitHostPort(n.cfg.DNS); err == nil {
			host, port = h, p
		}
		ips, err := net.LookupHost(host)
		if err != nil {
			return 0, fmt.Errorf("cluster: look up %s: %w", host, err)
		}
		for _, ip := range ips {
			addrs = append(addrs, net.JoinHostPort(ip, port))
		}
	}
	self := n.Addr()
	var others []string
	for _, a := range addrs {
		if a != self {
			others = append(others, a)
		}
	}
	if len(others) == 0 {
		return 0, nil
	}
	return n.ml.Load().Join(others)
}

// loop broadcasts demand, checks the nodes heard under members' names,
// and retries joining while alone.
func (n *Node) loop() {
	defer n.wg.Done()
	demand := time.NewTicker(n.cfg.DemandEvery) // and says again what peers may have missed
	defer demand.Stop()
	rejoin := time.NewTicker(n.cfg.RejoinEvery)
	defer rejoin.Stop()
	for {
		select {
		case <-n.stop:
			return
		case <-demand.C:
			n.tick(n.now())
			if n.extra.Load() > 0 {
				n.checkHolders() // a node under a member's name is counted until it is gone
			}
		case <-rejoin.C:
			if n.Live() <= 1 && (len(n.cfg.Seeds) > 0 || n.cfg.DNS != "") {
				if joined, err := n.Join(); err == nil && joined > 0 {
					n.log.Info("joined the fleet", slog.Int("members", n.Live()))
				}
			}
		}
	}
}

// Live is the number of alive members, this one included, and of the
// live nodes heard under a member's name (identity.go): never fewer than
// there are.
func (n *Node) Live() int {
	ml := n.ml.Load()
	if ml == nil {
		return 1
	}
	return max(ml.NumMembers(), 1) + int(max(n.extra.Load(), 0))
}

// Members lists the members and their last demand.
func (n *Node) Members() []Member {
	mine, wmine := n.mine(), n.weightedMine()
	ms := n.ml.Load().Members() // before n.mu (see Share)
	n.mu.Lock()
	defer n.mu.Unlock()
	var out []Member
	for _, m := range ms {
		mm := Member{Name: m.Name, Addr: net.JoinHostPort(m.Addr.String(), strconv.Itoa(int(m.Port))), State: stateName(m.State), Self: m.Name == n.cfg.Name}
		if mm.Self {
			mm.Demand, mm.Weighted = mine, wmine
		} else if d, ok := n.demand[m.Name]; ok {
			mm.Demand, mm.Weighted = d.rates, d.weighted
		}
		out = append(out, mm)
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Name < out[j].Name })
	return out
}

func stateName(s memberlist.NodeStateType) string {
	switch s {
	case memberlist.StateAlive:
		return "alive"
	case memberlist.StateSuspect:
		return "suspect"
	case memberlist.StateLeft:
		return "left"
	}
	return "dead"
}

// Share is this node's share of the fleet's demand for pool, in (0, 1]:
// its own over everyone's (peers' reports older than three intervals
// count as none). With no demand known anywhere it is 1/Live.
//
// It is the share of the priority-weighted demand (priority.go) when this
// member and every peer with demand for the pool report one.
func (n *Node) Share(pool string) float64 {
	mine := n.mine()[pool]
	total := mine
	wmine := n.weightedMine()
	weighted, wtotal := wmine != nil && (wmine[pool] > 0 || mine == 0), wmine[pool]
	alive := n.aliveNames() // before n.mu: memberlist calls NotifyLeave holding its own lock
	n.mu.Lock()
	stale := n.now().Add(-3 * n.cfg.DemandEvery)
	for name, d := range n.demand {
		if d.at.Before(stale) || !alive[name] {
			continue
		}
		total += d.rates[pool]
		if d.rates[pool] > 0 && d.weighted[pool] <= 0 {
			weighted = false // a member that does not weigh: shares by units alone
		}
		wtotal += d.weighted[pool]
	}
	n.mu.Unlock()
	if weighted && wtotal > 0 {
		mine, total = wmine[pool], wtotal
	}
	if total <= 0 {
		return 1 / float64(n.Live())
	}
	return max(mine/total, 1/float64(4*n.Live())) // never starve a member whose demand is just starting
}

// aliveNames is the set of members memberlist holds alive.
func (n *Node) aliveNames() map[string]bool {
	ml := n.ml.Load()
	if ml == nil {
		return nil
	}
	out := map[string]bool{}
	for _, m := range ml.Members() {
		if m.State == memberlist.StateAlive {
			out[m.Name] = true
		}
	}
	return out
}

// Leave announces the departure and stops gossip; ctx bounds the wait for
// the announcement to spread. A node that yields its name to a live member
// that started first only stops: a leave names only the name, and would
// drop that member. It is idempotent.
func (n *Node) Leave(ctx context.Context) error {
	n.shutdownOnce.Do(func() {
		close(n.stop)
		n.wg.Wait()
		timeout := 2 * time.Second
		if dl, ok := ctx.Deadline(); ok {
			timeout = max(time.Until(dl), 0) // a context's deadline is wall-clock time, whatever the node's clock
		}
		var errs []error
		if n.yield.Load() {
			n.log.Warn("leaving without a word: another live member holds this node's name", slog.String("node", n.cfg.Name))
		} else if err := n.ml.Load().Leave(timeout); err != nil {
			errs = append(errs, fmt.Errorf("cluster: leave: %w", err))
		}
		if err := n.ml.Load().Shutdown(); err != nil {
			errs = append(errs, fmt.Errorf("cluster: stop gossip: %w", err))
		}
		n.shutdownErr = errors.Join(errs...)
	})
	return n.shutdownErr
}

// Kill stops gossip without a word, as a crashed pod would (for tests and
// for a process that cannot leave).
func (n *Node) Kill() error {
	n.shutdownOnce.Do(func() {
		close(n.stop)
		n.wg.Wait()
		n.shutdownErr = n.ml.Load().Shutdown()
	})
	return n.shutdownErr
}
