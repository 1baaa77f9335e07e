package policy

import (
	"time"
)

// Alerts are the thresholds of Tollgate's alerts: GET /admin/alerts
// evaluates them in the process, and deploy/alerts.yml ships Prometheus
// rules whose numbers are these defaults (deploy/rules_test.go checks that
// they agree). The starvation alert's threshold is queue.starvation_alert.
type Alerts struct {
	// PoolBelow fires for a pool with less than this percent of its
	// capacity left (1–100).
	PoolBelow int64
	// BudgetAbove fires for a client that has used (spent and reserved)
	// more than this percent of its monthly budget (1–100).
	BudgetAbove int64
	// QueueAbove fires when more than this many calls are held at once.
	QueueAbove int64
	// UpstreamErrorsAbove fires when more than this percent of the
	// responses of calls Tollgate settles are 5xx or never came (the
	// ext_proc stream ended first), over UpstreamWindow (1–100).
	UpstreamErrorsAbove int64
	UpstreamWindow      time.Duration
	// BudgetClients bounds the clients whose budgets are watched (gauges,
	// alerts, forecasts): the clients the policy names, in name order, up
	// to this many. Clients the policy does not name are never watched.
	BudgetClients int
	// ForecastWindow is how far back the spend rate of a forecast looks.
	ForecastWindow time.Duration
}

// DefaultAlerts are the thresholds of the rules deploy/alerts.yml ships.
func DefaultAlerts() Alerts {
	return Alerts{PoolBelow: 10, BudgetAbove: 95, QueueAbove: 1000, UpstreamErrorsAbove: 10,
		UpstreamWindow: 10 * time.Minute, BudgetClients: 50, ForecastWindow: time.Hour}
}

// WithDefaults returns DefaultAlerts for the zero Alerts of a Set built
// by hand rather than compiled (a compiled Set always has every threshold).
func (a Alerts) WithDefaults() Alerts {
	if a == (Alerts{}) {
		return DefaultAlerts()
	}
	return a
}

// alertsDoc is the alerts: block as written.
type alertsDoc struct {
	fileName                               string
	line                                   int
	poolBelow, budgetAbove, upstreamErrors at[string]
	upstreamWindow, forecastWindow         at[string]
	queueAbove, budgetClients              at[int64]
}

func readAlerts(m *mapNode, line int) alertsDoc {
	return alertsDoc{fileName: m.d.file, line: line, poolBelow: m.str("pool_below"), budgetAbove: m.str("budget_above"),
		queueAbove: m.int("queue_above"), upstreamErrors: m.str("upstream_errors_above"),
		upstreamWindow: m.str("upstream_window"), budgetClients: m.int("budget_clients"), forecastWindow: m.str("forecast_window")}
}

// alerts reads the alerts blocks over DefaultAlerts; each setting may be
// given once across the files.
func (c *compiler) alerts(ds []alertsDoc) {
	out := DefaultAlerts()
	once := newOnceOnly(&c.errList, "alerts")
	for _, d := range ds {
		f := d.fileName
		for _, p := range []struct {
			key string
			v   at[string]
			dst *int64
		}{{"pool_below", d.poolBelow, &out.PoolBelow}, {"budget_above", d.budgetAbove, &out.BudgetAbove},
			{"upstream_errors_above", d.upstreamErrors, &out.UpstreamErrorsAbove}} {
			if setOnce(once, f, p.key, p.v) {
				if n := c.percent(f, "alerts."+p.key, p.v); n > 0 {
					*p.dst = n
				}
			}
		}
		if setOnce(once, f, "queue_above", d.queueAbove) {
			if d.queueAbove.v < 1 || d.queueAbove.v > 10_000_000 {
				c.add(f, d.queueAbove.line, "alerts.queue_above", "must be between 1 and 10000000 calls, got %d", d.queueAbove.v)
			} else {
				out.QueueAbove = d.queueAbove.v
			}
		}
		if setOnce(once, f, "budget_clients", d.budgetClients) {
			if d.budgetClients.v < 0 || d.budgetClients.v > MaxBudgetClients {
				c.add(f, d.budgetClients.line, "alerts.budget_clients", "must be between 0 and %d clients, got %d", MaxBudgetClients, d.budgetClients.v)
			} else {
				out.BudgetClients = int(d.budgetClients.v)
			}
		}
		c.alertDuration(once, f, "upstream_window", d.upstreamWindow, time.Minute, 24*time.Hour, &out.UpstreamWindow)
		c.alertDuration(once, f, "forecast_window", d.forecastWindow, 5*time.Minute, 7*24*time.Hour, &out.ForecastWindow)
	}
	c.set.Alerts = out
}

// MaxBudgetClients bounds alerts.budget_clients: each watched client is a
// store read per refresh and a labelled series per gauge.
const MaxBudgetClients = 1000

func (c *compiler) alertDuration(once *onceOnly, file, key string, v at[string], lo, hi time.Duration, dst *time.Duration) {
	if !setOnce(once, file, key, v) {
		return
	}
	d, err := time.ParseDuration(v.v)
	switch {
	case err != nil:
		c.add(file, v.line, "alerts."+key, "must be a duration such as 10m or 1h, got %q", v.v)
	case d < lo || d > hi:
		c.add(file, v.line, "alerts."+key, "must be between %v and %v, got %v", lo, hi, d)
	default:
		*dst = d
	}
}
