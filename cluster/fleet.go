package cluster

import (
	"context"
	"errors"
	"sync/atomic"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/tollgate/tollgate/limiter"
)

// Fleet is this sidecar's part in the fleet: its membership (Node) and its
// store (Store), wired to each other.
type Fleet struct {
	Node  *Node
	Store *Store
}

// Join starts gossip, joins the fleet and wraps shared in a Store that
// decides with leases.
func Join(ncfg NodeConfig, scfg Config, shared Shared, reg prometheus.Registerer) (*Fleet, error) {
	fwd := &forward{}
	if ncfg.Clock == nil {
		ncfg.Clock = scfg.Clock // one member, one clock
	}
	node, err := NewNode(ncfg, fwd.demand, fwd)
	if err != nil {
		return nil, err
	}
	if scfg.Logger == nil {
		scfg.Logger = ncfg.Logger
	}
	store, err := NewStore(scfg, shared, node, reg)
	if err != nil {
		return nil, errors.Join(err, node.Kill())
	}
	fwd.s.Store(store)
	return &Fleet{Node: node, Store: store}, nil
}

// Close hands back what this member holds, books its journal, and leaves
// the fleet (ctx bounds the leave). It is idempotent.
func (f *Fleet) Close(ctx context.Context) error {
	return errors.Join(f.Store.Close(), f.Node.Leave(ctx))
}

// Kill stops this member as a crash would: no leave, nothing handed back
// or booked (for tests and fault drills).
func (f *Fleet) Kill() error {
	f.Store.Kill()
	return f.Node.Kill()
}

// Status is what /api/cluster reports.
type Status struct {
	Self    string    `json:"self"`
	Mode    string    `json:"mode"` // normal or outage
	Since   time.Time `json:"outage_since,omitzero"`
	Live    int       `json:"live"`
	Members []Member  `json:"members"`
}

// Status reports the fleet as this member sees it.
func (f *Fleet) Status() Status {
	mode, since := f.Store.Mode()
	return Status{Self: f.Node.Name(), Mode: mode, Since: since, Live: f.Node.Live(), Members: f.Node.Members()}
}

// forward hands the Node's signals to the Store once it exists.
type forward struct{ s atomic.Pointer[Store] }

func (f *forward) demand() map[string]float64 {
	if s := f.s.Load(); s != nil {
		return s.Demand()
	}
	return nil
}

func (f *forward) Spend(from string, d []limiter.SpendDelta) {
	if s := f.s.Load(); s != nil {
		s.Spend(from, d)
	}
}

func (f *forward) Backoff(from, pool string, pause time.Duration, remaining int64) {
	if s := f.s.Load(); s != nil {
		s.Backoff(from, pool, pause, remaining)
	}
}

func (f *forward) MembersChanged() {
	if s := f.s.Load(); s != nil {
		s.MembersChanged()
	}
}
