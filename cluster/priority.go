package cluster

import (
	"encoding/json"
	"math"
	"time"

	"github.com/tollgate/tollgate/limiter"
)

// Priorities across the fleet. Each member's lease of a pool is its share
// of the fleet's demand for it (Node.Share); counted in units alone, a
// member holding batch calls takes as much of a scarce pool as one holding
// enterprise calls. So each member also measures its demand weighted by
// the score of each call that asks for the pool (admitted or not: what it
// holds) — 2^(points/10), points being the queue's score, the tier's
// priority plus the class's urgency (limiter.Request.Priority, 0–70), so
// ten points double a call's weight — and gossips it beside its demand.
// Shares are of the weighted demand when every member with demand reports
// it, so that a member holding enterprise calls leases a larger slice,
// and, when the pool is over-subscribed, takes most of each round's
// refill (leases.go) before one holding batch calls.

// priorityWeight is a call's weight in the weighted demand.
func priorityWeight(points int) float64 {
	return math.Exp2(float64(min(max(points, 0), maxPoints)) / 10)
}

const maxPoints = 70 // tier priority 0–40 plus class urgency 0–30

// recordAsked notes the weighted demand of req's pool-wide takes. s.mu
// need not be held.
func (s *Store) recordAsked(req limiter.Request, now time.Time) {
	w := priorityWeight(req.Priority)
	s.demandMu.Lock()
	defer s.demandMu.Unlock()
	for _, t := range req.Takes {
		if t.Key.Client != "" || t.Shadow || t.Cost <= 0 {
			continue
		}
		r := s.weighted[t.Key.Pool]
		if r == nil {
			r = &rate{window: s.cfg.DemandWindow, start: now}
			s.weighted[t.Key.Pool] = r
		}
		r.add(now, w*float64(t.Cost))
	}
}

// WeightedDemand is this member's priority-weighted demand per pool (what
// the Node gossips beside Demand).
func (s *Store) WeightedDemand() map[string]float64 {
	now := s.cfg.Clock.Now()
	s.demandMu.Lock()
	defer s.demandMu.Unlock()
	out := make(map[string]float64, len(s.weighted))
	for p, r := range s.weighted {
		if v := r.perSecond(now); v > 0 {
			out[p] = math.Round(v*100) / 100
		}
	}
	return out
}

// weigher is what a Node's Signals may also report: the member's weighted
// demand (a Fleet's forward does).
type weigher interface {
	WeightedDemand() map[string]float64
}

func (f *forward) WeightedDemand() map[string]float64 {
	if s := f.s.Load(); s != nil {
		return s.WeightedDemand()
	}
	return nil
}

// weightedMine is this node's weighted demand, nil when its Signals do not
// weigh.
func (n *Node) weightedMine() map[string]float64 {
	if w, ok := n.sig.(weigher); ok {
		return w.WeightedDemand()
	}
	return nil
}

// demandMessage is this node's demand report: its demand per pool and,
// beside it, its weighted demand, each kept to half a message.
func (n *Node) demandMessage() ([]byte, error) {
	return json.Marshal(message{Kind: kindDemand, From: n.cfg.Name, Inst: n.id.Instance,
		Demand: fitTo(n.mine(), (maxMessage-200)/2), Weighted: fitTo(n.weightedMine(), (maxMessage-200)/2), Cap: -1})
}

// holdToShare keeps a member to its share of a hot pool's refill: a
// member granted more than its share over the last second (a burst, or a
// moment when it asked first) asks again only once its average is back to
// its share. The bucket in Redis is first come, first served; without
// this, a member holding few calls of low priority that asks as often as
// one holding many of high priority would take as much. What it leaves is
// there for the others (whose shares sum to at least one, so no unit is
// left unasked for). Pool-wide buckets of a fleet only. s.mu is held.
func (s *Store) holdToShare(l *lease, a limiter.LeaseAsk, granted int64, now time.Time) {
	if a.Key.Client != "" || s.peers.Live() < 2 || a.Limit.Refill <= 0 {
		return
	}
	if l.got == nil {
		l.got = &rate{window: 2 * time.Second, start: now}
	}
	l.got.add(now, float64(granted))
	fair := s.peers.Share(a.Key.Pool) * float64(a.Limit.Refill) / float64(a.Limit.Den()) // units a second
	if got := l.got.perSecond(now); got > fair && fair > 0 {
		pause := time.Duration((got - fair) / fair * float64(time.Second))
		if until := now.Add(min(pause, s.cfg.LeaseTTL)); until.After(l.shortUntil) {
			l.shortUntil, l.shortNeed = until, 1
			l.shareUntil = until // a refill notice does not end this wait (refill.go)
		}
	}
}
