package cluster

import (
	"github.com/prometheus/client_golang/prometheus"

	"github.com/tollgate/tollgate/internal/metricset"
	"github.com/tollgate/tollgate/limiter"
)

// Paths a decision takes.
const (
	pathLocal = iota
	pathLease
	pathShared
	pathOutage
	pathSlow
	numPaths
)

var pathNames = [numPaths]string{"local", "lease", "shared", "outage", "slow"}

type metrics struct {
	decisions [numPaths][2]prometheus.Counter // by path, denied/admitted
	leases    prometheus.Counter
	slices    prometheus.Counter
	booked    prometheus.Counter
	replayed  prometheus.Counter
	outages   prometheus.Counter
}

// newMetrics registers the Store's metrics with reg; a registry that has
// them already (a second Store on it) is an error, not a panic.
func newMetrics(reg prometheus.Registerer, s *Store) (*metrics, error) {
	var f metricset.Set
	decisions := f.CounterVec(prometheus.CounterOpts{
		Name: "tollgate_cluster_decisions_total",
		Help: "Decisions by how they were taken: local (from leases, no round trip), lease (after refreshing a lease or slots), shared (by the shared store), outage (on this member's share while the shared store is down), slow (on what this member holds, when the shared store did not answer in time but is not down); and by result (admitted, denied).",
	}, []string{"path", "result"})
	m := &metrics{
		leases: f.Counter(prometheus.CounterOpts{
			Name: "tollgate_cluster_leases_total",
			Help: "Bucket leases asked of the shared store.",
		}),
		slices: f.Counter(prometheus.CounterOpts{
			Name: "tollgate_cluster_budget_slices_total",
			Help: "Slices of budget chains asked of the shared store.",
		}),
		booked: f.Counter(prometheus.CounterOpts{
			Name: "tollgate_cluster_booked_batches_total",
			Help: "Batches of locally decided spend booked into the shared store.",
		}),
		replayed: f.Counter(prometheus.CounterOpts{
			Name: "tollgate_cluster_queued_ends_total",
			Help: "Settles told to the shared store by the sync loop: budget slices at what they spent, and the settles and releases of shared reservations that an outage held back.",
		}),
		outages: f.Counter(prometheus.CounterOpts{
			Name: "tollgate_cluster_outages_total",
			Help: "Times this member found the shared store down (no answer to any call for DownAfter, not merely slow) and entered outage mode.",
		}),
	}
	for p, name := range pathNames {
		m.decisions[p][0] = decisions.WithLabelValues(name, "denied")
		m.decisions[p][1] = decisions.WithLabelValues(name, "admitted")
	}
	f.GaugeFunc(prometheus.GaugeOpts{
		Name: "tollgate_cluster_outage",
		Help: "1 while the shared store is down and this member decides on its own share, else 0.",
	}, func() float64 {
		if mode, _ := s.Mode(); mode == "outage" {
			return 1
		}
		return 0
	})
	f.CounterFunc(prometheus.CounterOpts{
		Name: "tollgate_cluster_name_conflicts_total",
		Help: "Live nodes found under a member's name at another address (two sidecars with one --node-name): each is counted as a member and logged.",
	}, func() float64 {
		if c, ok := s.peers.(interface{ Conflicts() int64 }); ok {
			return float64(c.Conflicts())
		}
		return 0
	})
	f.GaugeFunc(prometheus.GaugeOpts{
		Name: "tollgate_cluster_members",
		Help: "Live members of the fleet this member sees, itself included.",
	}, func() float64 { return float64(s.peers.Live()) })
	f.GaugeFunc(prometheus.GaugeOpts{
		Name: "tollgate_cluster_unbooked_deltas",
		Help: "Budget periods with spend decided here and not yet booked into the shared store.",
	}, func() float64 {
		s.mu.Lock()
		defer s.mu.Unlock()
		n := len(s.journal)
		if s.inflight != nil {
			n += len(s.inflight.deltas)
		}
		return float64(n)
	})
	if err := f.Register("cluster", reg); err != nil {
		return nil, err
	}
	return m, nil
}

// count counts a decision taken on path and hands it on.
func (m *metrics) count(path int, d limiter.Decision, err error) (limiter.Decision, error) {
	if err == nil {
		r := 0
		if d.Allowed {
			r = 1
		}
		m.decisions[path][r].Inc()
	}
	return d, err
}
