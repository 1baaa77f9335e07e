package admission

import (
	"github.com/prometheus/client_golang/prometheus"

	"github.com/tollgate/tollgate/costing"
	"github.com/tollgate/tollgate/internal/metricset"
	"github.com/tollgate/tollgate/limiter/queue"
	"github.com/tollgate/tollgate/policy"
)

type metrics struct {
	decisions   *prometheus.CounterVec
	storeErrors prometheus.Counter
	expired     prometheus.Counter
	// fallbacks counts store calls made for a call's next alternative on
	// a pool split by reservations.
	fallbacks     *prometheus.CounterVec
	unknownModels *prometheus.CounterVec
	// failOpenBooked counts batches of fail-open spend the store applied.
	failOpenBooked prometheus.Counter

	// settling (ext_proc)
	settled          *prometheus.CounterVec
	settleErrors     *prometheus.CounterVec
	upstreamSignals  *prometheus.CounterVec
	encodedResponses *prometheus.CounterVec
	usageCapped      *prometheus.CounterVec
	estimatedDollars *prometheus.CounterVec
	actualDollars    *prometheus.CounterVec
	estimatedTokens  *prometheus.CounterVec
	actualTokens     *prometheus.CounterVec
	estimateRatio    *prometheus.HistogramVec
	savings          *savingsMetrics
	cache            *cacheMetrics

	// optimizing
	optimized      *prometheus.CounterVec
	optimizeErrors prometheus.Counter
	flexRefused    prometheus.Counter

	// the watch (alerts, gauges)
	upstreamAnswers *prometheus.CounterVec
	// upstreamByClass holds upstreamAnswers' children, resolved once: a
	// settled call's count costs no label lookup.
	upstreamByClass map[string]prometheus.Counter
}

// newMetrics makes the service's metrics and the hold queue's, and
// registers them all or none.
func newMetrics(reg prometheus.Registerer, q *queue.Queue[attempt], tok *costing.Tokenizer, fo *failOpenBook, w *watch) (*metrics, *queueMetrics, error) {
	var f metricset.Set
	f.GaugeFunc(prometheus.GaugeOpts{
		Name: "tollgate_authz_fail_open_unbooked_budgets",
		Help: "Budget periods with spend of calls let through fail open (the store away, store_unavailable: allow) not yet booked into the store.",
	}, func() float64 { n, _ := fo.unbooked(); return float64(n) })
	f.GaugeFunc(prometheus.GaugeOpts{
		Name: "tollgate_queue_scheduler_stopped",
		Help: "1 while the scheduler is stopped (POST /admin/scheduler/stop): held calls stay held, none is let go.",
	}, func() float64 {
		if q.Stopped() {
			return 1
		}
		return 0
	})
	if tok != nil {
		f.CounterFunc(prometheus.CounterOpts{
			Name: "tollgate_costing_token_cache_hits_total",
			Help: "Texts whose token count came from the count cache (a repeated system prompt, message or tool definition) instead of the tokenizer.",
		}, func() float64 { return float64(tok.CacheStats().Hits) })
		f.CounterFunc(prometheus.CounterOpts{
			Name: "tollgate_costing_token_cache_misses_total",
			Help: "Texts the tokenizer counted because the count cache did not have them.",
		}, func() float64 { return float64(tok.CacheStats().Misses) })
	}
	m := &metrics{
		decisions: f.CounterVec(prometheus.CounterOpts{
			Name: "tollgate_authz_decisions_total",
			Help: "Admission decisions, by pool (\"none\" when no route matched), client tier, outcome (allowed, denied, shadow_denied, unmatched, invalid, error, fail_open) and reason.",
		}, []string{"pool", "tier", "outcome", "reason"}),
		optimized: f.CounterVec(prometheus.CounterOpts{
			Name: "tollgate_optimize_rewrites_total",
			Help: "Calls an optimize rule rewrote, by strategy (downgrade, flex, token_cap, prompt_cache, compact) and client tier.",
		}, []string{"strategy", "tier"}),
		optimizeErrors: f.Counter(prometheus.CounterOpts{
			Name: "tollgate_optimize_errors_total",
			Help: "Calls an optimize rule matched whose body the rewriters refused (malformed, a duplicate key); they went as they were.",
		}),
		flexRefused: f.Counter(prometheus.CounterOpts{
			Name: "tollgate_optimize_flex_refused_total",
			Help: "Flex calls the provider refused for lack of capacity; flex then pauses for the model a minute.",
		}),
		storeErrors: f.Counter(prometheus.CounterOpts{
			Name: "tollgate_authz_store_errors_total",
			Help: "Checks whose limiter store call failed.",
		}),
		unknownModels: f.CounterVec(prometheus.CounterOpts{
			Name: "tollgate_costing_unknown_models_total",
			Help: "LLM calls whose model the policy does not price by name (priced by its \"*\" entry or the pool), by route.",
		}, []string{"route"}),
		failOpenBooked: f.Counter(prometheus.CounterOpts{
			Name: "tollgate_authz_fail_open_booked_batches_total",
			Help: "Batches of the spend of calls let through fail open booked into the store once it answered (each applied exactly once).",
		}),
		fallbacks: f.CounterVec(prometheus.CounterOpts{
			Name: "tollgate_authz_reserved_fallbacks_total",
			Help: "Store calls made to try a call's next bucket in a pool split by reservations (its own share, the shared part, a share lent while idle), by pool.",
		}, []string{"pool"}),
		expired: f.Counter(prometheus.CounterOpts{
			Name: "tollgate_authz_reservations_expired_total",
			Help: "Reservations never settled, committed at their estimate after their TTL.",
		}),
		settled: f.CounterVec(prometheus.CounterOpts{
			Name: "tollgate_settle_calls_total",
			Help: "Admitted calls settled from their response, by outcome (actual, estimate, released, untracked, failed) and reason (usage, no_usage, incomplete, no_response, upstream_error, free_method, unknown_reservation, none).",
		}, []string{"outcome", "reason"}),
		settleErrors: f.CounterVec(prometheus.CounterOpts{
			Name: "tollgate_settle_store_errors_total",
			Help: "Store calls of settling that failed, by step (ledger, adjust); a failed ledger step leaves the reservation to lapse at its estimate.",
		}, []string{"step"}),
		upstreamSignals: f.CounterVec(prometheus.CounterOpts{
			Name: "tollgate_upstream_signals_total",
			Help: "Upstream rate-limit signals applied to a pool, by pool and kind (remaining: the pool lowered to the upstream's count; pause: held empty for its Retry-After).",
		}, []string{"pool", "kind"}),
		encodedResponses: f.CounterVec(prometheus.CounterOpts{
			Name: "tollgate_settle_encoded_responses_total",
			Help: "Responses of calls Tollgate reads that came compressed although it asked for identity, by encoding (gzip, deflate: inflated and read at the end; other: settled at the estimate).",
		}, []string{"encoding"}),
		usageCapped: f.CounterVec(prometheus.CounterOpts{
			Name: "tollgate_settle_usage_capped_total",
			Help: "Responses whose usage claimed more than one call can use (over 10M tokens per direction, 10,000 segments or $1,000), held to those bounds, by route.",
		}, []string{"route"}),
		estimatedDollars: f.CounterVec(prometheus.CounterOpts{
			Name: "tollgate_costing_estimated_dollars_total",
			Help: "Estimated cost of the calls settled from their usage, by model price entry.",
		}, []string{"model"}),
		actualDollars: f.CounterVec(prometheus.CounterOpts{
			Name: "tollgate_costing_actual_dollars_total",
			Help: "Actual cost of the calls settled from their usage, by model price entry.",
		}, []string{"model"}),
		estimatedTokens: f.CounterVec(prometheus.CounterOpts{
			Name: "tollgate_costing_estimated_tokens_total",
			Help: "Estimated tokens of the LLM calls settled from their usage, by model price entry and direction (input, output).",
		}, []string{"model", "direction"}),
		actualTokens: f.CounterVec(prometheus.CounterOpts{
			Name: "tollgate_costing_actual_tokens_total",
			Help: "Tokens the LLM calls settled from their usage really used, by model price entry and direction (input, output).",
		}, []string{"model", "direction"}),
		estimateRatio: f.HistogramVec(prometheus.HistogramOpts{
			Name:    "tollgate_costing_estimate_error_ratio",
			Help:    "Actual cost over estimated cost of each call settled from its usage, by model price entry (1 is a perfect estimate).",
			Buckets: []float64{.05, .1, .25, .5, .75, .9, 1, 1.1, 1.25, 1.5, 2, 3, 5},
		}, []string{"model"}),
	}
	m.upstreamAnswers = f.CounterVec(prometheus.CounterOpts{
		Name: "tollgate_upstream_responses_total",
		Help: "Calls Tollgate settled, by the upstream's status class (2xx, 3xx, 4xx, 5xx; none: the ext_proc stream ended before any response came: an upstream timeout or reset, or the worker gone).",
	}, []string{"status_class"})
	m.upstreamByClass = map[string]prometheus.Counter{}
	for _, c := range []string{"none", "2xx", "3xx", "4xx", "5xx"} {
		m.upstreamByClass[c] = m.upstreamAnswers.WithLabelValues(c)
	}
	newWatchCollector(&f, w)
	m.savings = newSavingsMetrics(&f)
	m.cache = newCacheMetrics(&f)
	qm := newQueueMetrics(&f)
	qc := newQueueCollector(q)
	metricset.Add(&f, qc,
		metricset.Spec{Name: "tollgate_queue_depth", Type: "gauge", Labels: []string{"pool", "class"}, Help: queueDepthHelp},
		metricset.Spec{Name: "tollgate_queue_oldest_wait_seconds", Type: "gauge", Labels: []string{"pool", "class"}, Help: queueOldestHelp})
	if err := f.Register("admission", reg); err != nil {
		return nil, nil, err
	}
	return m, qm, nil
}

// queueMetrics counts what the queue does.
type queueMetrics struct {
	exits    *prometheus.CounterVec
	wait     *prometheus.HistogramVec
	starving *prometheus.CounterVec
}

func newQueueMetrics(f *metricset.Set) *queueMetrics {
	m := &queueMetrics{
		exits: f.CounterVec(prometheus.CounterOpts{
			Name: "tollgate_queue_exits_total",
			Help: "Calls that left the hold queue, by class and outcome (granted, denied, timeout, cancelled, removed, full, closed).",
		}, []string{"class", "outcome"}),
		wait: f.HistogramVec(prometheus.HistogramOpts{
			Name:    "tollgate_queue_wait_seconds",
			Help:    "How long calls were held, by class and outcome.",
			Buckets: []float64{.001, .01, .05, .1, .25, .5, 1, 2, 5, 10, 30, 60, 120, 300, 600},
		}, []string{"class", "outcome"}),
		starving: f.CounterVec(prometheus.CounterOpts{
			Name: "tollgate_queue_starvation_alerts_total",
			Help: "Calls that waited longer than the policy's queue.starvation_alert, by class.",
		}, []string{"class"}),
	}
	return m
}

const (
	queueDepthHelp  = "Calls held, by pool (or concurrency) and class; deferred calls waiting for the off-peak window are under pool \"off_peak\"."
	queueOldestHelp = "How long the oldest call held has waited, by pool (or concurrency) and class."
)

// queueCollector reports depth and oldest wait per line and class when
// scraped.
type queueCollector struct {
	q      *queue.Queue[attempt]
	depth  *prometheus.Desc
	oldest *prometheus.Desc
}

func newQueueCollector(q *queue.Queue[attempt]) *queueCollector {
	return &queueCollector{q: q,
		depth:  prometheus.NewDesc("tollgate_queue_depth", queueDepthHelp, []string{"pool", "class"}, nil),
		oldest: prometheus.NewDesc("tollgate_queue_oldest_wait_seconds", queueOldestHelp, []string{"pool", "class"}, nil),
	}
}

func (c *queueCollector) Describe(ch chan<- *prometheus.Desc) { ch <- c.depth; ch <- c.oldest }

func (c *queueCollector) Collect(ch chan<- prometheus.Metric) {
	st := c.q.Status()
	type k struct{ pool, class string }
	depth, oldest := map[k]int{}, map[k]float64{}
	for _, l := range st.Lines {
		pool, _ := LineLabel(l.Key)
		for class, cs := range l.Classes {
			depth[k{pool, class}] += cs.Depth
			oldest[k{pool, class}] = max(oldest[k{pool, class}], cs.Oldest)
		}
	}
	if st.Parked > 0 {
		depth[k{"off_peak", policy.Deferred.String()}] += st.Parked
	}
	for key, n := range depth {
		ch <- prometheus.MustNewConstMetric(c.depth, prometheus.GaugeValue, float64(n), key.pool, key.class)
		ch <- prometheus.MustNewConstMetric(c.oldest, prometheus.GaugeValue, oldest[key], key.pool, key.class)
	}
}
