package cluster

import (
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"log/slog"
	"net"
	"os"
	"strconv"
	"time"

	"github.com/hashicorp/memberlist"
)

// Identity. memberlist keeps one member per name, so a second process
// under a live member's name (two sidecars of one host, both named after
// it) is no member at all: memberlist ignores what it says of itself, each
// of the two counts one member fewer than there are (two alone each take
// N=1 shares in an outage), its gossip passes for the other's, and its
// leave — a message naming only the name — drops the member that holds
// it. So:
//
//   - the default name is the host name and the gossip port, unique on one
//     host;
//   - a node that finds its name held by a live member at another address
//     when it joins does not start (with the default name, it takes
//     another);
//   - a clash found later (two that joined through different seeds) is
//     logged and counted, the other holder counts as a live member, and
//     of the two the one that started later never announces a leave;
//   - each member states who it is in its metadata (when it started, a
//     random instance id) and in each gossip message: a message under a
//     member's name from another instance is dropped.

// identity is who a node is beyond its name: its metadata in memberlist.
type identity struct {
	Start    int64  `json:"s"` // unix ns the process started the node
	Instance string `json:"i"` // random, one per node
}

func newIdentity() identity {
	var b [8]byte
	_, _ = rand.Read(b[:]) // crypto/rand does not fail on the platforms Go supports
	return identity{Start: time.Now().UnixNano(), Instance: hex.EncodeToString(b[:])}
}

func (id identity) meta() []byte {
	b, _ := json.Marshal(id)
	return b
}

func parseIdentity(meta []byte) identity {
	var id identity
	_ = json.Unmarshal(meta, &id) // none, or not ours: the zero identity
	return id
}

// before reports whether id started before o (the instance breaks a tie,
// so that of two nodes exactly one is first).
func (id identity) before(o identity) bool {
	return id.Start < o.Start || (id.Start == o.Start && id.Instance < o.Instance)
}

// defaultName is the host name and the gossip port (a random suffix for
// port 0, any free port): two processes of one host cannot share both.
func defaultName(port int, id identity) string {
	host, err := os.Hostname()
	if err != nil || host == "" {
		host = "tollgate"
	}
	if port == 0 {
		return host + "-" + id.Instance[:8]
	}
	return host + "-" + strconv.Itoa(port)
}

// holder is a live node heard under a name a member holds (this one's, or
// a peer's): one the member list cannot show.
type holder struct {
	name, addr string
	id         identity
	misses     int // pings in a row it did not answer
}

// holderMisses is how many pings in a row a holder may miss before it is
// taken for gone (a lost packet is not a gone node).
const holderMisses = 3

// conflictDelegate is the Node as memberlist's ConflictDelegate.
type conflictDelegate Node

// NotifyConflict is called, holding memberlist's lock of its members, when
// a node at other's address says it is a member this one holds (existing)
// at another address: this node itself, or a peer.
func (c *conflictDelegate) NotifyConflict(existing, other *memberlist.Node) {
	n := (*Node)(c)
	addr := net.JoinHostPort(other.Addr.String(), strconv.Itoa(int(other.Port)))
	oid := parseIdentity(other.Meta)
	mine := existing.Name == n.cfg.Name
	n.cmu.Lock()
	key := other.Name + "\x00" + addr
	h, known := n.holders[key]
	if !known {
		h = &holder{name: other.Name, addr: addr}
		n.holders[key] = h
		n.extra.Add(1) // never fewer members than there are
		n.conflicts.Add(1)
	}
	h.id, h.misses = oid, 0
	yield := mine && oid.before(n.id)
	if yield {
		n.yield.Store(true)
	}
	n.cmu.Unlock()
	if known {
		return
	}
	held := net.JoinHostPort(existing.Addr.String(), strconv.Itoa(int(existing.Port)))
	switch {
	case yield:
		n.log.Error("another live member has this node's name and started first: counted as a member; this one will not announce a leave (it would drop that member); give each member its own --node-name",
			slog.String("node", other.Name), slog.String("other", addr))
	case mine:
		n.log.Error("another node took this node's name: counted as a member; give each member its own --node-name",
			slog.String("node", other.Name), slog.String("other", addr))
	default:
		n.log.Error("two live nodes share a member's name: the second is counted as a member, and its gossip is not taken for the first's",
			slog.String("node", other.Name), slog.String("member", held), slog.String("other", addr))
	}
}

// heldBy returns the address of a live node that holds this node's name —
// heard of while joining, and answering a ping — or "".
func (n *Node) heldBy() string {
	n.cmu.Lock()
	var mine []holder
	for _, h := range n.holders {
		if h.name == n.cfg.Name {
			mine = append(mine, *h)
		}
	}
	n.cmu.Unlock()
	for _, h := range mine {
		for range 2 {
			if n.answers(h) {
				return h.addr
			}
		}
	}
	return ""
}

// answers pings h (a UDP round trip within memberlist's probe timeout).
func (n *Node) answers(h holder) bool {
	addr, err := net.ResolveUDPAddr("udp", h.addr)
	if err != nil {
		return false
	}
	_, err = n.ml.Load().Ping(h.name, addr)
	return err == nil
}

// checkHolders forgets the holders that are members now (the member list
// shows them) or have stopped answering, and works out again whether this
// node yields its name. It pings, so it runs in the node's loop.
func (n *Node) checkHolders() {
	members := map[string]string{}
	for _, m := range n.ml.Load().Members() {
		members[m.Name] = net.JoinHostPort(m.Addr.String(), strconv.Itoa(int(m.Port)))
	}
	n.cmu.Lock()
	var todo []holder
	for _, h := range n.holders {
		todo = append(todo, *h)
	}
	n.cmu.Unlock()
	for _, h := range todo {
		gone := members[h.name] == h.addr
		if !gone && !n.answers(h) {
			h.misses++
			gone = h.misses >= holderMisses
		} else if !gone {
			h.misses = 0
		}
		n.cmu.Lock()
		key := h.name + "\x00" + h.addr
		if cur := n.holders[key]; cur != nil {
			if gone {
				delete(n.holders, key)
				n.extra.Add(-1)
			} else {
				cur.misses = h.misses
			}
		}
		n.cmu.Unlock()
		if gone {
			n.log.Info("a node that shared a member's name is gone, or a member now", slog.String("node", h.name), slog.String("addr", h.addr))
		}
	}
	n.cmu.Lock()
	yield := false
	for _, h := range n.holders {
		yield = yield || (h.name == n.cfg.Name && h.id.before(n.id))
	}
	n.yield.Store(yield)
	n.cmu.Unlock()
}

// Conflicts is how many nodes were found sharing a member's name, this
// node's or a peer's.
func (n *Node) Conflicts() int64 { return n.conflicts.Load() }

// sameInstance reports whether a message under from's name comes from the
// member this node holds by that name (a node unknown yet, or one that
// says no instance, is taken at its word).
func (n *Node) sameInstance(from, instance string) bool {
	if instance == "" {
		return true
	}
	n.cmu.Lock()
	held := n.ids[from]
	n.cmu.Unlock()
	return held == "" || held == instance
}

// heard records who a member is, from its metadata.
func (n *Node) heard(m *memberlist.Node) {
	id := parseIdentity(m.Meta)
	n.cmu.Lock()
	if n.ids != nil {
		n.ids[m.Name] = id.Instance
	}
	n.cmu.Unlock()
}

// forget drops what was known of who a member is.
func (n *Node) forget(name string) {
	n.cmu.Lock()
	delete(n.ids, name)
	n.cmu.Unlock()
}

// nameTaken is the error of a node whose name a live member holds.
func nameTaken(name, addr string) error {
	return fmt.Errorf("cluster: the node name %q is held by a live member at %s: give each member its own --node-name", name, addr)
}
