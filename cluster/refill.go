package cluster

import "encoding/json"

// Refill notices: a member that gives units of a pool back to its shared
// bucket (a lapsed lease, a leave) says so over gossip, so that members
// refusing that pool's calls here, on a bucket they found empty, ask it
// again at once rather than at their next round (prefetch.go). A lost
// notice costs only that wait; a notice is one message, not repeated, and
// one whose sender's bucket is no longer short changes nothing.

const kindRefill = "refill"

// refiller is what a Store's Peers may also do: tell the others of units
// given back (a *Node does).
type refiller interface {
	Refilled(pool string, units int64)
}

// refillHearer is what a Node's Signals may also do: hear of units a peer
// gave back (a Fleet's forward does).
type refillHearer interface {
	Refill(from, pool string, units int64)
}

// Refilled tells the fleet that this member gave units of pool back.
func (n *Node) Refilled(pool string, units int64) {
	b, err := json.Marshal(message{Kind: kindRefill, From: n.cfg.Name, Inst: n.id.Instance, Pool: pool, Cap: units, At: n.now().UnixNano()})
	if err != nil || len(b) > maxMessage {
		return
	}
	n.bq.QueueBroadcast(&broadcast{msg: b, name: kindRefill + "/" + pool})
}

// heardRefill hands a peer's refill notice to the Signals.
func (n *Node) heardRefill(m message) {
	if h, ok := n.sig.(refillHearer); ok && m.Pool != "" && m.Cap > 0 {
		h.Refill(m.From, m.Pool, m.Cap)
	}
}

func (f *forward) Refill(from, pool string, units int64) {
	if s := f.s.Load(); s != nil {
		s.Refill(from, pool, units)
	}
}

// Refill applies a peer's notice that it gave units of pool back: this
// member's calls refused here on the pool's empty bucket may ask again.
func (s *Store) Refill(_, pool string, units int64) {
	now := s.cfg.Clock.Now()
	s.mu.Lock()
	defer s.mu.Unlock()
	for k, l := range s.leases {
		// A hot bucket's round and a member held to its priority share keep
		// their wait: a notice speaks of a bucket found empty, not of them.
		if k.Pool == pool && k.Client == "" && now.Before(l.shortUntil) && l.possible && !now.Before(l.pausedUntil) &&
			!now.Before(l.hotUntil) && !now.Before(l.shareUntil) && units >= l.shortNeed {
			l.shortUntil = now
		}
	}
}

// announceRefills tells the fleet of pool-wide units given back. It runs
// after the give-back was answered, outside s.mu.
func (s *Store) announceRefills(back map[string]int64) {
	r, ok := s.peers.(refiller)
	if !ok {
		return
	}
	for pool, units := range back {
		if units > 0 {
			r.Refilled(pool, units)
		}
	}
}
