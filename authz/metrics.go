package authz

import (
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/promauto"
)

type metrics struct {
	decisions     *prometheus.CounterVec
	checkLatency  *prometheus.HistogramVec
	storeErrors   prometheus.Counter
	expired       prometheus.Counter
	unknownModels *prometheus.CounterVec
}

func newMetrics(reg prometheus.Registerer) *metrics {
	f := promauto.With(reg)
	return &metrics{
		decisions: f.NewCounterVec(prometheus.CounterOpts{
			Name: "tollgate_authz_decisions_total",
			Help: "Admission decisions, by pool (\"none\" when no route matched), client tier, outcome (allowed, denied, shadow_denied, unmatched, invalid, error, fail_open) and reason.",
		}, []string{"pool", "tier", "outcome", "reason"}),
		checkLatency: f.NewHistogramVec(prometheus.HistogramOpts{
			Name:    "tollgate_authz_check_duration_seconds",
			Help:    "Time to answer one check, by service (ext_authz).",
			Buckets: []float64{.00005, .0001, .00025, .0005, .001, .0025, .005, .01, .025, .05, .1, .25, .5, 1, 2.5, 10},
		}, []string{"service"}),
		storeErrors: f.NewCounter(prometheus.CounterOpts{
			Name: "tollgate_authz_store_errors_total",
			Help: "Checks whose limiter store call failed.",
		}),
		unknownModels: f.NewCounterVec(prometheus.CounterOpts{
			Name: "tollgate_costing_unknown_models_total",
			Help: "LLM calls whose model the policy does not price by name (priced by its \"*\" entry or the pool), by route.",
		}, []string{"route"}),
		expired: f.NewCounter(prometheus.CounterOpts{
			Name: "tollgate_authz_reservations_expired_total",
			Help: "Reservations never settled, committed at their estimate after their TTL.",
		}),
	}
}
