package admission

import (
	"cmp"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/tollgate/tollgate/policy"
)

// Alert is one alert firing: the same names, labels and thresholds as the
// Prometheus rules of deploy/alerts.yml, for operators without Prometheus
// (GET /admin/alerts). Value and Threshold are for display: a ratio, a
// count of calls or seconds; money is never kept in them.
type Alert struct {
	Name      string            `json:"name"`
	Severity  string            `json:"severity"`
	Labels    map[string]string `json:"labels"`
	Value     float64           `json:"value"`
	Threshold float64           `json:"threshold"`
	// Since is the first refresh that found the condition, still true at
	// every refresh since.
	Since   time.Time `json:"since"`
	Summary string    `json:"summary"`
}

// The alerts' names, shared with deploy/alerts.yml.
const (
	AlertPoolLow         = "TollgatePoolLow"
	AlertBudgetHigh      = "TollgateBudgetHigh"
	AlertBudgetForecast  = "TollgateBudgetForecast"
	AlertQueueBacklog    = "TollgateQueueBacklog"
	AlertQueueStarvation = "TollgateQueueStarvation"
	AlertUpstreamErrors  = "TollgateUpstreamErrors"
)

// Evaluate returns the alerts snap fires, sorted by name and labels, and
// when each began: since maps an alert's key to when an earlier evaluation
// first found it; the returned map holds the keys firing now (those that
// stopped are forgotten, so a relapse starts afresh). A pure function of
// its arguments.
func Evaluate(snap Snapshot, since map[string]time.Time) ([]Alert, map[string]time.Time) {
	th := snap.Thresholds.WithDefaults()
	var out []Alert
	fire := func(a Alert) { out = append(out, a) }
	for _, p := range snap.Pools {
		if p.Capacity > 0 && p.Remaining*100 < th.PoolBelow*p.Capacity {
			fire(Alert{Name: AlertPoolLow, Severity: "warning", Labels: map[string]string{"pool": p.Pool},
				Value: ratio(p.Remaining, p.Capacity), Threshold: float64(th.PoolBelow) / 100,
				Summary: "pool " + p.Pool + " has less than " + percent(th.PoolBelow) + " of its capacity left"})
		}
	}
	for _, b := range snap.Budgets {
		if b.Limit <= 0 {
			continue
		}
		used := b.Used()
		if used*100 > policy.Money(th.BudgetAbove)*b.Limit {
			fire(Alert{Name: AlertBudgetHigh, Severity: "warning", Labels: map[string]string{"client": b.Client},
				Value: ratio(int64(used), int64(b.Limit)), Threshold: float64(th.BudgetAbove) / 100,
				Summary: "client " + b.Client + " has used more than " + percent(th.BudgetAbove) + " of its monthly budget (" + b.Limit.String() + ")"})
		}
		if b.Forecast.Exceeds && used < b.Limit {
			fire(Alert{Name: AlertBudgetForecast, Severity: "warning", Labels: map[string]string{"client": b.Client},
				Value: ratio(int64(b.Forecast.Spend), int64(b.Limit)), Threshold: 1,
				Summary: "at its rate over the last " + b.Forecast.Window.Round(time.Second).String() + ", client " + b.Client +
					" spends " + b.Forecast.Spend.String() + " by the period's end, over its budget of " + b.Limit.String()})
		}
	}
	if int64(snap.Held) > th.QueueAbove {
		fire(Alert{Name: AlertQueueBacklog, Severity: "warning", Labels: map[string]string{},
			Value: float64(snap.Held), Threshold: float64(th.QueueAbove), Summary: "more calls are held than alerts.queue_above"})
	}
	if snap.StarvationAlert > 0 {
		for _, q := range snap.Queue {
			if q.Depth > 0 && q.Oldest >= snap.StarvationAlert {
				fire(Alert{Name: AlertQueueStarvation, Severity: "warning", Labels: map[string]string{"pool": q.Pool, "class": q.Class},
					Value: q.Oldest.Seconds(), Threshold: snap.StarvationAlert.Seconds(),
					Summary: "a " + q.Class + " call held for " + q.Pool + " has waited past queue.starvation_alert"})
			}
		}
	}
	if u := snap.Upstream; u.Responses > 0 && u.Errors*100 > th.UpstreamErrorsAbove*u.Responses {
		fire(Alert{Name: AlertUpstreamErrors, Severity: "warning", Labels: map[string]string{},
			Value: ratio(u.Errors, u.Responses), Threshold: float64(th.UpstreamErrorsAbove) / 100,
			Summary: "more than " + percent(th.UpstreamErrorsAbove) + " of the calls settled lately got a 5xx or no answer"})
	}
	slices.SortFunc(out, func(a, b Alert) int {
		return cmp.Or(cmp.Compare(a.Name, b.Name), cmp.Compare(alertKey(a), alertKey(b)))
	})
	next := make(map[string]time.Time, len(out))
	for i := range out {
		k := alertKey(out[i])
		at, ok := since[k]
		if !ok {
			at = snap.At
		}
		out[i].Since, next[k] = at, at
	}
	return out, next
}

// alertKey names an alert and its labels, in label order.
func alertKey(a Alert) string {
	keys := make([]string, 0, len(a.Labels))
	for k := range a.Labels {
		keys = append(keys, k)
	}
	slices.Sort(keys)
	var b strings.Builder
	b.WriteString(a.Name)
	for _, k := range keys {
		b.WriteString("\x00" + k + "=" + a.Labels[k])
	}
	return b.String()
}

func ratio(a, b int64) float64 { return float64(a) / float64(b) }

func percent(p int64) string { return strconv.FormatInt(p, 10) + "%" }
