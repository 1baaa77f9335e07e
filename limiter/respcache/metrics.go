package respcache

import (
	"github.com/prometheus/client_golang/prometheus"

	"github.com/tollgate/tollgate/internal/metricset"
)

// Levels of the cache, as the metrics' level label names them.
const (
	levelL1 = "l1"
	levelL2 = "l2"
)

// Metrics are the cache's collectors, shared by its levels (each counts
// under its own level label), so one set serves a Memory, a Redis and the
// Tiered cache made of them. Every label takes a handful of fixed values.
// A nil *Metrics counts nothing.
type Metrics struct {
	set       metricset.Set
	lookups   *prometheus.CounterVec // kind, level, result
	evictions *prometheus.CounterVec // level, reason
	bytes     *prometheus.GaugeVec   // level
	entries   *prometheus.GaugeVec   // level
	waits     *prometheus.CounterVec // result
	l2Errors  prometheus.Counter
}

// NewMetrics makes the cache's metrics and registers them with reg, all or
// none.
func NewMetrics(reg prometheus.Registerer) (*Metrics, error) {
	var f metricset.Set
	m := &Metrics{
		lookups: f.CounterVec(prometheus.CounterOpts{
			Name: "tollgate_cache_lookups_total",
			Help: "Lookups of the response cache, by kind (response, idempotency), level (l1: in-process, l2: Redis) and result (hit, miss).",
		}, []string{"kind", "level", "result"}),
		evictions: f.CounterVec(prometheus.CounterOpts{
			Name: "tollgate_cache_evictions_total",
			Help: "Entries the in-process cache dropped before they were asked to go, by level (l1) and reason (size: least recently used, to stay within its bytes; ttl: expired).",
		}, []string{"level", "reason"}),
		bytes: f.GaugeVec(prometheus.GaugeOpts{
			Name: "tollgate_cache_bytes",
			Help: "Estimated bytes of the entries the in-process cache holds (body, headers, key and bookkeeping), by level (l1).",
		}, []string{"level"}),
		entries: f.GaugeVec(prometheus.GaugeOpts{
			Name: "tollgate_cache_entries",
			Help: "Entries the in-process cache holds, by level (l1).",
		}, []string{"level"}),
		waits: f.CounterVec(prometheus.CounterOpts{
			Name: "tollgate_cache_flight_waits_total",
			Help: "Calls that waited for an identical call in flight, by result (found: it answered; led: it gave up or lapsed and this call went upstream; busy: the wait ended first).",
		}, []string{"result"}),
		l2Errors: f.Counter(prometheus.CounterOpts{
			Name: "tollgate_cache_l2_errors_total",
			Help: "Redis calls of the response cache that failed; the cache went on without Redis (a miss, or a call that went upstream).",
		}),
	}
	for _, k := range []Kind{Response, Idempotency} {
		for _, lv := range []string{levelL1, levelL2} {
			m.lookups.WithLabelValues(k.String(), lv, "hit")
			m.lookups.WithLabelValues(k.String(), lv, "miss")
		}
	}
	m.evictions.WithLabelValues(levelL1, "size")
	m.evictions.WithLabelValues(levelL1, "ttl")
	m.bytes.WithLabelValues(levelL1)
	m.entries.WithLabelValues(levelL1)
	for _, r := range []string{"found", "led", "busy"} {
		m.waits.WithLabelValues(r)
	}
	m.set = f
	if err := f.Register("respcache", reg); err != nil {
		return nil, err
	}
	return m, nil
}

func (m *Metrics) lookup(k Kind, level string, hit bool) {
	if m == nil || !k.valid() {
		return
	}
	r := "miss"
	if hit {
		r = "hit"
	}
	m.lookups.WithLabelValues(k.String(), level, r).Inc()
}

func (m *Metrics) evicted(reason string, n int) {
	if m == nil || n == 0 {
		return
	}
	m.evictions.WithLabelValues(levelL1, reason).Add(float64(n))
}

// held adds deltas to the L1 gauges: several Memory caches sharing one
// Metrics add up.
func (m *Metrics) held(bytes int64, entries int) {
	if m == nil || (bytes == 0 && entries == 0) {
		return
	}
	m.bytes.WithLabelValues(levelL1).Add(float64(bytes))
	m.entries.WithLabelValues(levelL1).Add(float64(entries))
}

// waited counts the end of a wait on a flight.
func (m *Metrics) waited(s State) {
	if m == nil {
		return
	}
	r := "busy"
	switch s {
	case Found:
		r = "found"
	case Lead:
		r = "led"
	}
	m.waits.WithLabelValues(r).Inc()
}

func (m *Metrics) l2Error() {
	if m != nil {
		m.l2Errors.Inc()
	}
}
