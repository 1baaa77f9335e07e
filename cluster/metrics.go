package cluster

import (
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/promauto"
)

type metrics struct {
	decisions *prometheus.CounterVec
	leases    prometheus.Counter
	booked    prometheus.Counter
	replayed  prometheus.Counter
}

func newMetrics(reg prometheus.Registerer, s *Store) *metrics {
	f := promauto.With(reg)
	m := &metrics{
		decisions: f.NewCounterVec(prometheus.CounterOpts{
			Name: "tollgate_cluster_decisions_total",
			Help: "Admissions by how they were decided: local (from leases, no round trip), lease (after refreshing a lease or slots), shared (by the shared store), outage (on this member's share while the shared store is unreachable).",
		}, []string{"path"}),
		leases: f.NewCounter(prometheus.CounterOpts{
			Name: "tollgate_cluster_leases_total",
			Help: "Bucket leases asked of the shared store.",
		}),
		booked: f.NewCounter(prometheus.CounterOpts{
			Name: "tollgate_cluster_booked_batches_total",
			Help: "Batches of locally decided spend booked into the shared store.",
		}),
		replayed: f.NewCounter(prometheus.CounterOpts{
			Name: "tollgate_cluster_replayed_ends_total",
			Help: "Settles and releases of shared reservations told to the shared store after an outage.",
		}),
	}
	f.NewGaugeFunc(prometheus.GaugeOpts{
		Name: "tollgate_cluster_outage",
		Help: "1 while the shared store is unreachable and this member decides on its own share, else 0.",
	}, func() float64 {
		if mode, _ := s.Mode(); mode == "outage" {
			return 1
		}
		return 0
	})
	f.NewGaugeFunc(prometheus.GaugeOpts{
		Name: "tollgate_cluster_members",
		Help: "Live members of the fleet this member sees, itself included.",
	}, func() float64 { return float64(s.peers.Live()) })
	f.NewGaugeFunc(prometheus.GaugeOpts{
		Name: "tollgate_cluster_unbooked_deltas",
		Help: "Spend deltas decided here and not yet booked into the shared store.",
	}, func() float64 {
		s.mu.Lock()
		defer s.mu.Unlock()
		n := len(s.journal)
		if s.inflight != nil {
			n += len(s.inflight.deltas)
		}
		return float64(n)
	})
	return m
}
