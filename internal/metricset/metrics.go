// Package metricset is Tollgate's one way to make and register Prometheus
// collectors: a Set gathers the collectors a component makes, then
// registers them all or none, returning an error instead of panicking, so
// that a component built after its listeners are bound can fail cleanly and
// leave the registry as it found it.
package metricset

import (
	"errors"
	"fmt"
	"slices"
	"strings"
	"sync"

	"github.com/prometheus/client_golang/prometheus"
)

// Set collects collectors to register together. The zero value is ready
// to use; a Set is not safe for concurrent use while it is being filled.
type Set struct {
	all   []prometheus.Collector
	specs []Spec
}

// Spec describes one metric a Set makes: what the operations docs list.
type Spec struct {
	Name   string   `json:"name"`
	Type   string   `json:"type"` // counter, gauge, histogram
	Labels []string `json:"labels"`
	Help   string   `json:"help"`
}

// Add keeps c to be registered with the others and returns it; specs
// describe the metrics of a collector the Set did not make itself.
func Add[C prometheus.Collector](s *Set, c C, specs ...Spec) C {
	s.all = append(s.all, c)
	s.specs = append(s.specs, specs...)
	return c
}

func (s *Set) spec(typ, name, help string, labels []string) {
	s.specs = append(s.specs, Spec{Name: name, Type: typ, Labels: append([]string{}, labels...), Help: help})
}

// Counter makes a counter.
func (s *Set) Counter(o prometheus.CounterOpts) prometheus.Counter {
	s.spec("counter", o.Name, o.Help, nil)
	return Add(s, prometheus.NewCounter(o))
}

// CounterVec makes a counter vector.
func (s *Set) CounterVec(o prometheus.CounterOpts, labels []string) *prometheus.CounterVec {
	s.spec("counter", o.Name, o.Help, labels)
	return Add(s, prometheus.NewCounterVec(o, labels))
}

// Gauge makes a gauge.
func (s *Set) Gauge(o prometheus.GaugeOpts) prometheus.Gauge {
	s.spec("gauge", o.Name, o.Help, nil)
	return Add(s, prometheus.NewGauge(o))
}

// GaugeVec makes a gauge vector.
func (s *Set) GaugeVec(o prometheus.GaugeOpts, labels []string) *prometheus.GaugeVec {
	s.spec("gauge", o.Name, o.Help, labels)
	return Add(s, prometheus.NewGaugeVec(o, labels))
}

// GaugeFunc makes a gauge read from fn at each scrape.
func (s *Set) GaugeFunc(o prometheus.GaugeOpts, fn func() float64) prometheus.GaugeFunc {
	s.spec("gauge", o.Name, o.Help, nil)
	return Add(s, prometheus.NewGaugeFunc(o, fn))
}

// CounterFunc makes a counter read from fn at each scrape.
func (s *Set) CounterFunc(o prometheus.CounterOpts, fn func() float64) prometheus.CounterFunc {
	s.spec("counter", o.Name, o.Help, nil)
	return Add(s, prometheus.NewCounterFunc(o, fn))
}

// Histogram makes a histogram.
func (s *Set) Histogram(o prometheus.HistogramOpts) prometheus.Histogram {
	s.spec("histogram", o.Name, o.Help, nil)
	return Add(s, prometheus.NewHistogram(o))
}

// HistogramVec makes a histogram vector.
func (s *Set) HistogramVec(o prometheus.HistogramOpts, labels []string) *prometheus.HistogramVec {
	s.spec("histogram", o.Name, o.Help, labels)
	return Add(s, prometheus.NewHistogramVec(o, labels))
}

// Register registers every collector of the set with reg, or none: on the
// first failure it unregisters those it had registered and returns the
// error, naming the component.
func (s *Set) Register(component string, reg prometheus.Registerer) error {
	if reg == nil {
		return fmt.Errorf("%s: metrics: nil registerer", component)
	}
	for i, c := range s.all {
		if err := reg.Register(c); err != nil {
			for _, done := range s.all[:i] {
				reg.Unregister(done)
			}
			var are prometheus.AlreadyRegisteredError
			if errors.As(err, &are) {
				return fmt.Errorf("%s: metrics: already registered (is a second instance sharing the registry?): %w", component, err)
			}
			return fmt.Errorf("%s: metrics: %w", component, err)
		}
	}
	if c, ok := reg.(*Registry); ok {
		c.record(s.specs)
	}
	return nil
}

// Registry is a Prometheus registry that also keeps the Spec of every
// metric registered through a Set: the catalog an admin endpoint serves and
// a test checks the operations docs against. It is safe for concurrent use.
type Registry struct {
	*prometheus.Registry
	mu      sync.Mutex
	catalog []Spec
}

// NewRegistry returns an empty Registry.
func NewRegistry() *Registry { return &Registry{Registry: prometheus.NewRegistry()} }

func (r *Registry) record(specs []Spec) {
	r.mu.Lock()
	r.catalog = append(r.catalog, specs...)
	r.mu.Unlock()
}

// Catalog lists the metrics registered through Sets, sorted by name.
func (r *Registry) Catalog() []Spec {
	r.mu.Lock()
	out := slices.Clone(r.catalog)
	r.mu.Unlock()
	slices.SortFunc(out, func(a, b Spec) int { return strings.Compare(a.Name, b.Name) })
	return out
}

// Unregister takes every collector of the set off reg again (for a
// component whose construction failed after it registered).
func (s *Set) Unregister(reg prometheus.Registerer) {
	for _, c := range s.all {
		reg.Unregister(c)
	}
}
