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

	// settling (ext_proc)
	processLatency   *prometheus.HistogramVec
	settled          *prometheus.CounterVec
	settleErrors     *prometheus.CounterVec
	upstreamSignals  *prometheus.CounterVec
	estimatedDollars *prometheus.CounterVec
	actualDollars    *prometheus.CounterVec
	estimatedTokens  *prometheus.CounterVec
	actualTokens     *prometheus.CounterVec
	estimateRatio    *prometheus.HistogramVec
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
		processLatency: f.NewHistogramVec(prometheus.HistogramOpts{
			Name:    "tollgate_authz_process_duration_seconds",
			Help:    "Time to answer one ext_proc message, by phase (request_headers, request_body, response_headers, response_body).",
			Buckets: []float64{.00001, .000025, .00005, .0001, .00025, .0005, .001, .0025, .005, .01, .025, .1},
		}, []string{"phase"}),
		settled: f.NewCounterVec(prometheus.CounterOpts{
			Name: "tollgate_settle_calls_total",
			Help: "Admitted calls settled from their response, by outcome (actual, estimate, released, untracked, failed) and reason (usage, no_usage, incomplete, no_response, upstream_error, free_method, unknown_reservation, none).",
		}, []string{"outcome", "reason"}),
		settleErrors: f.NewCounterVec(prometheus.CounterOpts{
			Name: "tollgate_settle_store_errors_total",
			Help: "Store calls of settling that failed, by step (ledger, adjust); a failed ledger step leaves the reservation to lapse at its estimate.",
		}, []string{"step"}),
		upstreamSignals: f.NewCounterVec(prometheus.CounterOpts{
			Name: "tollgate_upstream_signals_total",
			Help: "Upstream rate-limit signals applied to a pool, by pool and kind (remaining: the pool lowered to the upstream's count; pause: held empty for its Retry-After).",
		}, []string{"pool", "kind"}),
		estimatedDollars: f.NewCounterVec(prometheus.CounterOpts{
			Name: "tollgate_costing_estimated_dollars_total",
			Help: "Estimated cost of the calls settled from their usage, by model price entry.",
		}, []string{"model"}),
		actualDollars: f.NewCounterVec(prometheus.CounterOpts{
			Name: "tollgate_costing_actual_dollars_total",
			Help: "Actual cost of the calls settled from their usage, by model price entry.",
		}, []string{"model"}),
		estimatedTokens: f.NewCounterVec(prometheus.CounterOpts{
			Name: "tollgate_costing_estimated_tokens_total",
			Help: "Estimated tokens of the LLM calls settled from their usage, by model price entry and direction (input, output).",
		}, []string{"model", "direction"}),
		actualTokens: f.NewCounterVec(prometheus.CounterOpts{
			Name: "tollgate_costing_actual_tokens_total",
			Help: "Tokens the LLM calls settled from their usage really used, by model price entry and direction (input, output).",
		}, []string{"model", "direction"}),
		estimateRatio: f.NewHistogramVec(prometheus.HistogramOpts{
			Name:    "tollgate_costing_estimate_error_ratio",
			Help:    "Actual cost over estimated cost of each call settled from its usage, by model price entry (1 is a perfect estimate).",
			Buckets: []float64{.05, .1, .25, .5, .75, .9, 1, 1.1, 1.25, 1.5, 2, 3, 5},
		}, []string{"model"}),
	}
}
