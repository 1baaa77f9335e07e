package cluster

import (
	"encoding/json"
	"log/slog"
	"math"
	"sort"
	"sync/atomic"
	"time"

	"github.com/hashicorp/memberlist"

	"github.com/tollgate/tollgate/limiter"
	"github.com/tollgate/tollgate/policy"
)

// Gossip rides on memberlist's broadcasts, which are best effort: a
// message goes to a few random members a few times, and a member may miss
// one when many are queued. So every message states a fact that a later
// one of the same name replaces, and each is said again when its
// transmissions are done, a few times (a pause for as long as it lasts): a
// lost message is made good by the next, a repeated one does nothing.
//
//   - demand: a member's demand per pool (units a second), every round.
//   - spend: a member's total booked spend on one budget period since it
//     began counting it (a generation); peers add what it grew by.
//   - backoff: an upstream's pause of a pool until a time, or the units it
//     said remain, as a member saw it at a time; peers apply each once.

// message is one gossip message; Kind picks its fields.
type message struct {
	Kind   string             `json:"k"`
	From   string             `json:"f"`
	Inst   string             `json:"i,omitempty"` // the sender's instance (identity.go)
	Demand map[string]float64 `json:"d,omitempty"`
	// Weighted is the demand weighted by the calls' priority (priority.go).
	Weighted map[string]float64 `json:"w,omitempty"`
	Owner    string             `json:"o,omitempty"`
	Period   string             `json:"p,omitempty"`
	Gen      int64              `json:"g,omitempty"`
	Seq      uint64             `json:"n,omitempty"` // of the total within its generation
	Total    policy.Money       `json:"t,omitempty"`
	Pool     string             `json:"l,omitempty"`
	Until    int64              `json:"u,omitempty"` // unix ms; 0: no pause
	Cap      int64              `json:"c"`           // units left, or -1
	At       int64              `json:"a,omitempty"` // unix ns the signal was seen
}

const (
	kindDemand  = "demand"
	kindSpend   = "spend"
	kindBackoff = "backoff"
)

// maxMessage bounds one gossip message: it must fit a UDP packet beside
// memberlist's framing and encryption (a larger one is never sent).
const maxMessage = 1000

// maxQueued bounds the messages waiting to be gossiped: a fleet that
// cannot keep up drops the oldest.
const maxQueued = 4096

// repeats is how many more times a spend or remaining-units message is
// queued after its transmissions are done.
const repeats = 5

// forgetAfter is how long totals and what was heard are kept untouched.
const forgetAfter = time.Hour

// gossip is what a Node said and heard. Its fields are guarded by Node.mu.
type gossip struct {
	totals  map[spendKey]*total    // this member's spend, by budget period
	repeat  map[string]*repetition // messages to say again, by name
	spent   map[string]map[spendKey]heardTotal
	signals map[string]int64 // sender and pool → the newest signal applied (At)
	seen    map[string]time.Time
	// lastAt is the stamp of this member's last back-off signal: each is
	// later than the one before, so that peers apply every one even when
	// the clock has not moved (a coarse or a fake clock).
	lastAt int64
}

type spendKey struct{ owner, period string }

type total struct {
	gen     int64
	seq     uint64
	sum     policy.Money
	changed time.Time
}

type heardTotal struct {
	gen int64
	seq uint64
	sum policy.Money
	at  time.Time
}

// repetition is a message said again: left more times, and at least until
// until; done when memberlist finished its last transmission of it.
type repetition struct {
	msg   []byte
	left  int
	until time.Time
	done  atomic.Bool
}

func newGossip() gossip {
	return gossip{totals: map[spendKey]*total{}, repeat: map[string]*repetition{},
		spent: map[string]map[spendKey]heardTotal{}, signals: map[string]int64{}, seen: map[string]time.Time{}}
}

// Spend tells the fleet about spend booked here: one message per budget
// period, carrying this member's running total of it.
func (n *Node) Spend(deltas []limiter.SpendDelta) {
	now := n.now()
	n.mu.Lock()
	defer n.mu.Unlock()
	for _, d := range deltas {
		k := spendKey{d.Owner, d.Period}
		t := n.totals[k]
		if t == nil {
			// The generation names this count, not a time: it comes from
			// the wall clock, which differs from one start of the process
			// to the next, even when the node runs on a fake clock.
			t = &total{gen: time.Now().UnixNano()}
			n.totals[k] = t
		}
		t.sum += d.Spent
		t.seq++
		t.changed = now
		n.sayLocked(message{Kind: kindSpend, Owner: d.Owner, Period: d.Period, Gen: t.gen, Seq: t.seq, Total: t.sum, Cap: -1},
			kindSpend+"/"+d.Owner+"\x00"+d.Period, time.Time{})
	}
}

// Backoff tells the fleet that the upstream behind pool asked to pause, or
// said how many units remain (remaining < 0: not said).
func (n *Node) Backoff(pool string, pause time.Duration, remaining int64) {
	now := n.now()
	m := message{Kind: kindBackoff, Pool: pool, Cap: max(remaining, -1)}
	var until time.Time
	if pause > 0 {
		m.Until = now.Add(pause).UnixMilli()
		until = now.Add(pause)
	}
	n.mu.Lock()
	defer n.mu.Unlock()
	m.At = max(now.UnixNano(), n.lastAt+1)
	n.lastAt = m.At
	n.sayLocked(m, kindBackoff+"/"+pool, until)
}

// sayLocked queues m under name, replacing an older message of that name,
// to be said again (see repetition). n.mu is held.
func (n *Node) sayLocked(m message, name string, until time.Time) {
	m.From, m.Inst = n.cfg.Name, n.id.Instance
	b, err := json.Marshal(m)
	if err != nil || len(b) > maxMessage {
		n.log.Warn("gossip message too large; not sent", slog.String("kind", m.Kind), slog.Int("bytes", len(b)))
		return
	}
	r := &repetition{msg: b, left: repeats, until: until}
	n.repeat[name] = r
	n.bq.QueueBroadcast(&broadcast{msg: b, name: name, rep: r})
}

// tick is one round: this member's demand, the messages peers may have
// missed, and forgetting what is old.
func (n *Node) tick(now time.Time) {
	b, err := n.demandMessage()
	if err == nil {
		n.bq.QueueBroadcast(&broadcast{msg: b, name: kindDemand})
	}
	n.mu.Lock()
	defer n.mu.Unlock()
	for name, r := range n.repeat {
		if !r.done.Load() {
			continue // still being sent
		}
		if r.left <= 0 && !now.Before(r.until) {
			delete(n.repeat, name)
			continue
		}
		r.left--
		r.done.Store(false)
		n.bq.QueueBroadcast(&broadcast{msg: r.msg, name: name, rep: r})
	}
	old := now.Add(-forgetAfter)
	for k, t := range n.totals {
		if t.changed.Before(old) {
			delete(n.totals, k) // a later spend starts a new generation
		}
	}
	for from, m := range n.spent {
		for k, h := range m {
			if h.at.Before(old) {
				delete(m, k)
			}
		}
		if len(m) == 0 {
			delete(n.spent, from)
		}
	}
	for k, at := range n.seen {
		if at.Before(old) {
			delete(n.seen, k)
			delete(n.signals, k)
		}
	}
	n.bq.Prune(maxQueued)
}

// fit keeps the busiest pools of a demand report that would not fit one
// message beside its envelope (kind, name, instance: at most 200 bytes);
// the others count as idle at the peers: they get the smallest share until
// the report shrinks.
func fit(d map[string]float64) map[string]float64 { return fitTo(d, maxMessage-200) }

// fitTo keeps the busiest pools of d that fit limit bytes.
func fitTo(d map[string]float64, limit int) map[string]float64 {
	if d == nil {
		return nil
	}
	if b, _ := json.Marshal(d); len(b) <= limit {
		return d
	}
	pools := make([]string, 0, len(d))
	for p := range d {
		pools = append(pools, p)
	}
	sort.Slice(pools, func(i, j int) bool { return d[pools[i]] > d[pools[j]] })
	out := map[string]float64{}
	size := 2
	for _, p := range pools {
		b, _ := json.Marshal(map[string]float64{p: d[p]})
		if size+len(b) > limit {
			break
		}
		out[p], size = d[p], size+len(b)
	}
	return out
}

// sane drops the rates of a peer's message that no member sends (negative,
// NaN, infinite): a peer's bug must not shrink the fleet's totals so that
// another member's share passes one.
func sane(d map[string]float64) map[string]float64 {
	for p, v := range d {
		if !(v >= 0) || math.IsInf(v, 0) {
			delete(d, p)
		}
	}
	return d
}

// receive handles one message from a peer.
func (n *Node) receive(b []byte) {
	var m message
	if err := json.Unmarshal(b, &m); err != nil || m.From == "" || m.From == n.cfg.Name {
		return // not ours, or garbled: gossip is authenticated, so a peer's bug
	}
	if !n.sameInstance(m.From, m.Inst) {
		return // another node under a member's name (identity.go): not that member's word
	}
	now := n.now()
	switch m.Kind {
	case kindDemand:
		n.mu.Lock()
		n.demand[m.From] = peerDemand{rates: sane(m.Demand), weighted: sane(m.Weighted), at: now}
		n.mu.Unlock()
	case kindSpend:
		k := spendKey{m.Owner, m.Period}
		n.mu.Lock()
		heard := n.spent[m.From]
		if heard == nil {
			heard = map[spendKey]heardTotal{}
			n.spent[m.From] = heard
		}
		grew := m.Total
		if h, ok := heard[k]; ok && h.gen == m.Gen {
			if m.Seq <= h.seq { // said again, or overtaken by a later one
				n.mu.Unlock()
				return
			}
			grew = m.Total - h.sum
		}
		heard[k] = heardTotal{gen: m.Gen, seq: m.Seq, sum: m.Total, at: now}
		n.mu.Unlock()
		if grew != 0 && n.sig != nil {
			n.sig.Spend(m.From, []limiter.SpendDelta{{Owner: m.Owner, Period: m.Period, Spent: grew}})
		}
	case kindRefill:
		n.heardRefill(m)
	case kindBackoff:
		key := m.From + "\x00" + m.Pool
		n.mu.Lock()
		fresh := m.At > n.signals[key]
		if fresh {
			n.signals[key], n.seen[key] = m.At, now
		}
		n.mu.Unlock()
		if !fresh || n.sig == nil {
			return
		}
		var pause time.Duration
		if m.Until > 0 {
			if pause = time.UnixMilli(m.Until).Sub(now); pause <= 0 {
				return // over already
			}
		}
		n.sig.Backoff(m.From, m.Pool, pause, max(m.Cap, -1))
	}
}

// broadcast is one queued message; a newer one of the same name replaces
// it.
type broadcast struct {
	msg  []byte
	name string
	rep  *repetition
}

func (b *broadcast) Invalidates(o memberlist.Broadcast) bool {
	nb, ok := o.(memberlist.NamedBroadcast)
	return ok && nb.Name() == b.name
}
func (b *broadcast) Name() string    { return b.name }
func (b *broadcast) Message() []byte { return b.msg }

// Finished is called holding the queue's lock: it only marks the message
// for the next round to queue again.
func (b *broadcast) Finished() {
	if b.rep != nil {
		b.rep.done.Store(true)
	}
}

// delegate is the Node seen by memberlist.
type delegate Node

func (d *delegate) NodeMeta(int) []byte { return d.id.meta() }
func (d *delegate) NotifyMsg(b []byte)  { (*Node)(d).receive(b) }
func (d *delegate) GetBroadcasts(overhead, limit int) [][]byte {
	return d.bq.GetBroadcasts(overhead, limit)
}

// LocalState hands a joining or syncing peer this node's demand.
func (d *delegate) LocalState(bool) []byte {
	n := (*Node)(d)
	b, _ := n.demandMessage()
	return b
}

func (d *delegate) MergeRemoteState(b []byte, _ bool) { (*Node)(d).receive(b) }

// events tells the layer above when membership changes.
type events Node

func (e *events) NotifyJoin(m *memberlist.Node) {
	n := (*Node)(e)
	if m.Name != n.cfg.Name {
		n.known.Add(1)
	}
	n.heard(m)
	e.changed()
}

// NotifyLeave is called holding memberlist's lock of its members.
func (e *events) NotifyLeave(m *memberlist.Node) {
	n := (*Node)(e)
	n.known.Add(-1)
	n.forget(m.Name)
	n.mu.Lock()
	delete(n.demand, m.Name) // what it said of spend is kept: it may come back, counting on from there
	n.mu.Unlock()
	e.changed()
}
func (e *events) NotifyUpdate(m *memberlist.Node) { (*Node)(e).heard(m) }
func (e *events) changed() {
	if n := (*Node)(e); n.sig != nil {
		n.sig.MembersChanged()
	}
}
