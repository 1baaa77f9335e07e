package authz

import (
	"github.com/prometheus/client_golang/prometheus"

	"github.com/tollgate/tollgate/internal/metricset"
)

// metrics are the transport's own: how long Envoy waits for an answer.
// Decisions and settling are counted by admission.
type metrics struct {
	set            metricset.Set
	checkLatency   *prometheus.HistogramVec
	processLatency *prometheus.HistogramVec
	// apiUnauthorized counts API calls refused for a missing or wrong token.
	apiUnauthorized prometheus.Counter
	// settleRefused counts API settles above what the reservation could cost.
	settleRefused prometheus.Counter
	// backgroundErrors counts failed rounds of the server's own loops.
	backgroundErrors *prometheus.CounterVec
}

func newMetrics(reg prometheus.Registerer) (*metrics, error) {
	var f metricset.Set
	m := &metrics{
		checkLatency: f.HistogramVec(prometheus.HistogramOpts{
			Name:    "tollgate_authz_check_duration_seconds",
			Help:    "Time to answer one check, by service (ext_authz).",
			Buckets: []float64{.00005, .0001, .00025, .0005, .001, .0025, .005, .01, .025, .05, .1, .25, .5, 1, 2.5, 10},
		}, []string{"service"}),
		processLatency: f.HistogramVec(prometheus.HistogramOpts{
			Name:    "tollgate_authz_process_duration_seconds",
			Help:    "Time to answer one ext_proc message, by phase (request_headers, request_body, response_headers, response_body).",
			Buckets: []float64{.00001, .000025, .00005, .0001, .00025, .0005, .001, .0025, .005, .01, .025, .1},
		}, []string{"phase"}),
		apiUnauthorized: f.Counter(prometheus.CounterOpts{
			Name: "tollgate_authz_api_unauthorized_total",
			Help: "API calls refused for a missing or wrong bearer token (401).",
		}),
		settleRefused: f.Counter(prometheus.CounterOpts{
			Name: "tollgate_authz_api_settle_refused_total",
			Help: "API settles refused because the cost exceeds what the reservation could cost (422).",
		}),
		backgroundErrors: f.CounterVec(prometheus.CounterOpts{
			Name: "tollgate_authz_background_errors_total",
			Help: "Rounds of the server's own work that failed, by task (expire: committing lapsed reservations at their estimate; fail_open_book: booking the spend of calls let through fail open; watch: reading the standing the alerts and their gauges show); logged once when a task starts failing and once when it works again.",
		}, []string{"task"}),
	}
	m.set = f
	if err := f.Register("authz", reg); err != nil {
		return nil, err
	}
	return m, nil
}
