package admission

import (
	"github.com/prometheus/client_golang/prometheus"

	"github.com/tollgate/tollgate/internal/metricset"
)

// The watch's gauges are read from the last Snapshot when scraped: a
// scrape never reads the store. Their label sets are bounded by the
// policy: pools are few and named there, and only the clients it names
// with a budget are watched, at most alerts.budget_clients of them.
const (
	poolRemainingHelp  = "Whole units left in each pool's bucket at the last refresh (the fleet's, in a fleet)."
	poolCapacityHelp   = "Each pool's capacity, in its unit."
	poolRatioHelp      = "The share of each pool's capacity left at the last refresh, 0 to 1."
	budgetUsedHelp     = "The share of each watched client's monthly budget used (spent and reserved) at the last refresh; the clients the policy names with a budget, at most alerts.budget_clients."
	budgetForecastHelp = "Each watched client's projected use at the budget period's end, from its use so far and its rate over alerts.forecast_window, over its budget (above 1: it runs out)."
	budgetDollarsHelp  = "Each watched client's projected use at the budget period's end, in dollars."
	alertsFiringHelp   = "In-process alerts firing at the last refresh (GET /admin/alerts), by alert name."
)

// watchCollector reports the watch's gauges from its snapshot.
type watchCollector struct {
	w                                   *watch
	remaining, capacity, ratio          *prometheus.Desc
	used, forecastRatio, forecastDollar *prometheus.Desc
	firing                              *prometheus.Desc
}

func newWatchCollector(f *metricset.Set, w *watch) {
	c := &watchCollector{w: w,
		remaining:      prometheus.NewDesc("tollgate_pool_remaining", poolRemainingHelp, []string{"pool"}, nil),
		capacity:       prometheus.NewDesc("tollgate_pool_capacity", poolCapacityHelp, []string{"pool"}, nil),
		ratio:          prometheus.NewDesc("tollgate_pool_remaining_ratio", poolRatioHelp, []string{"pool"}, nil),
		used:           prometheus.NewDesc("tollgate_budget_used_ratio", budgetUsedHelp, []string{"client"}, nil),
		forecastRatio:  prometheus.NewDesc("tollgate_budget_forecast_ratio", budgetForecastHelp, []string{"client"}, nil),
		forecastDollar: prometheus.NewDesc("tollgate_budget_forecast_dollars", budgetDollarsHelp, []string{"client"}, nil),
		firing:         prometheus.NewDesc("tollgate_alerts_firing", alertsFiringHelp, []string{"alert"}, nil),
	}
	metricset.Add(f, c,
		metricset.Spec{Name: "tollgate_pool_remaining", Type: "gauge", Labels: []string{"pool"}, Help: poolRemainingHelp},
		metricset.Spec{Name: "tollgate_pool_capacity", Type: "gauge", Labels: []string{"pool"}, Help: poolCapacityHelp},
		metricset.Spec{Name: "tollgate_pool_remaining_ratio", Type: "gauge", Labels: []string{"pool"}, Help: poolRatioHelp},
		metricset.Spec{Name: "tollgate_budget_used_ratio", Type: "gauge", Labels: []string{"client"}, Help: budgetUsedHelp},
		metricset.Spec{Name: "tollgate_budget_forecast_ratio", Type: "gauge", Labels: []string{"client"}, Help: budgetForecastHelp},
		metricset.Spec{Name: "tollgate_budget_forecast_dollars", Type: "gauge", Labels: []string{"client"}, Help: budgetDollarsHelp},
		metricset.Spec{Name: "tollgate_alerts_firing", Type: "gauge", Labels: []string{"alert"}, Help: alertsFiringHelp})
}

func (c *watchCollector) Describe(ch chan<- *prometheus.Desc) {
	for _, d := range []*prometheus.Desc{c.remaining, c.capacity, c.ratio, c.used, c.forecastRatio, c.forecastDollar, c.firing} {
		ch <- d
	}
}

func (c *watchCollector) Collect(ch chan<- prometheus.Metric) {
	c.w.mu.Lock()
	snap, alerts := c.w.snap, c.w.alerts
	c.w.mu.Unlock()
	gauge := func(d *prometheus.Desc, v float64, label string) {
		ch <- prometheus.MustNewConstMetric(d, prometheus.GaugeValue, v, label)
	}
	for _, p := range snap.Pools {
		gauge(c.remaining, float64(p.Remaining), p.Pool)
		gauge(c.capacity, float64(p.Capacity), p.Pool)
		if p.Capacity > 0 {
			gauge(c.ratio, ratio(p.Remaining, p.Capacity), p.Pool)
		}
	}
	for _, b := range snap.Budgets {
		gauge(c.forecastDollar, dollars(b.Forecast.Spend), b.Client)
		if b.Limit > 0 {
			gauge(c.used, ratio(int64(b.Used()), int64(b.Limit)), b.Client)
			gauge(c.forecastRatio, ratio(int64(b.Forecast.Spend), int64(b.Limit)), b.Client)
		}
	}
	firing := map[string]int{}
	for _, a := range alerts {
		firing[a.Name]++
	}
	for _, name := range []string{AlertPoolLow, AlertBudgetHigh, AlertBudgetForecast, AlertQueueBacklog, AlertQueueStarvation, AlertUpstreamErrors} {
		gauge(c.firing, float64(firing[name]), name)
	}
}
