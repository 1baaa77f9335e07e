package admission_test

import (
	"testing"
	"time"

	"github.com/stretchr/testify/assert"

	"github.com/tollgate/tollgate/admission"
	"github.com/tollgate/tollgate/policy"
)

func TestEvaluate(t *testing.T) {
	now := time.Date(2026, 12, 6, 12, 0, 0, 0, time.UTC)
	usd := func(d int64) policy.Money { return policy.Money(d) * policy.NanosPerDollar }
	base := admission.Snapshot{At: now, StarvationAlert: 4 * time.Minute, Thresholds: policy.DefaultAlerts()}
	with := func(edit func(s *admission.Snapshot)) admission.Snapshot { s := base; edit(&s); return s }
	type fired struct {
		name   string
		labels map[string]string
		value  float64
	}
	tests := map[string]struct {
		snap admission.Snapshot
		want []fired
	}{
		"all quiet": {with(func(s *admission.Snapshot) {
			s.Pools = []admission.PoolLevel{{Pool: "gpt", Remaining: 10, Capacity: 100}}                             // exactly 10% left
			s.Budgets = []admission.BudgetLevel{{Client: "acme", Limit: usd(100), Spent: usd(90), Reserved: usd(5)}} // exactly 95%
			s.Held = 1000
			s.Queue = []admission.QueueLevel{{Pool: "gpt", Class: "deferred", Depth: 3, Oldest: 4*time.Minute - time.Millisecond}}
			s.Upstream = admission.UpstreamLevel{Window: 10 * time.Minute, Responses: 100, Errors: 10}
		}), nil},
		"the zero snapshot": {admission.Snapshot{}, nil},
		"pool low": {with(func(s *admission.Snapshot) {
			s.Pools = []admission.PoolLevel{{Pool: "gpt", Remaining: 9, Capacity: 100}, {Pool: "sms", Remaining: 50, Capacity: 100}}
		}), []fired{{admission.AlertPoolLow, map[string]string{"pool": "gpt"}, 0.09}}},
		"budget high, counting reserved": {with(func(s *admission.Snapshot) {
			s.Budgets = []admission.BudgetLevel{{Client: "acme", Limit: usd(100), Spent: usd(90), Reserved: usd(6)},
				{Client: "zeta", Limit: usd(0), Spent: usd(1)}} // a zero budget is never reported as a share
		}), []fired{{admission.AlertBudgetHigh, map[string]string{"client": "acme"}, 0.96}}},
		"forecast crosses before the budget does": {with(func(s *admission.Snapshot) {
			s.Budgets = []admission.BudgetLevel{
				{Client: "acme", Limit: usd(100), Spent: usd(50), Forecast: admission.Forecast{Spend: usd(150), Window: time.Hour, Exceeds: true}},
				{Client: "over", Limit: usd(100), Spent: usd(101), Forecast: admission.Forecast{Spend: usd(150), Window: time.Hour, Exceeds: true}}}
		}), []fired{{admission.AlertBudgetForecast, map[string]string{"client": "acme"}, 1.5},
			{admission.AlertBudgetHigh, map[string]string{"client": "over"}, 1.01}}},
		"queue backlog": {with(func(s *admission.Snapshot) { s.Held = 1001 }),
			[]fired{{admission.AlertQueueBacklog, map[string]string{}, 1001}}},
		"starvation": {with(func(s *admission.Snapshot) {
			s.Queue = []admission.QueueLevel{{Pool: "gpt", Class: "deferred", Depth: 1, Oldest: 4 * time.Minute},
				{Pool: "gpt", Class: "batch", Depth: 0, Oldest: time.Hour}}
		}), []fired{{admission.AlertQueueStarvation, map[string]string{"pool": "gpt", "class": "deferred"}, 240}}},
		"starvation off": {with(func(s *admission.Snapshot) {
			s.StarvationAlert = 0
			s.Queue = []admission.QueueLevel{{Pool: "gpt", Class: "deferred", Depth: 1, Oldest: time.Hour}}
		}), nil},
		"upstream errors": {with(func(s *admission.Snapshot) {
			s.Upstream = admission.UpstreamLevel{Window: 10 * time.Minute, Responses: 100, Errors: 11}
		}), []fired{{admission.AlertUpstreamErrors, map[string]string{}, 0.11}}},
		"thresholds from the policy": {with(func(s *admission.Snapshot) {
			s.Thresholds.PoolBelow, s.Thresholds.QueueAbove = 60, 5
			s.Pools = []admission.PoolLevel{{Pool: "gpt", Remaining: 50, Capacity: 100}}
			s.Held = 6
		}), []fired{{admission.AlertPoolLow, map[string]string{"pool": "gpt"}, 0.5}, {admission.AlertQueueBacklog, map[string]string{}, 6}}},
	}
	for name, tc := range tests {
		t.Run(name, func(t *testing.T) {
			got, since := admission.Evaluate(tc.snap, nil)
			var names []fired
			for _, a := range got {
				names = append(names, fired{a.Name, a.Labels, a.Value})
				assert.Equal(t, "warning", a.Severity)
				assert.Equal(t, tc.snap.At, a.Since, "first seen now")
				assert.NotEmpty(t, a.Summary)
			}
			if assert.Len(t, names, len(tc.want)) {
				for i, w := range tc.want {
					assert.Equal(t, w.name, names[i].name)
					assert.Equal(t, w.labels, names[i].labels)
					assert.InDelta(t, w.value, names[i].value, 1e-9)
				}
			}
			assert.Len(t, since, len(got))
		})
	}
}

// TestEvaluateSince: an alert keeps the time it began while it fires, and
// starts afresh after it stopped.
func TestEvaluateSince(t *testing.T) {
	t0 := time.Date(2026, 12, 6, 12, 0, 0, 0, time.UTC)
	low := func(at time.Time, remaining int64) admission.Snapshot {
		return admission.Snapshot{At: at, Pools: []admission.PoolLevel{{Pool: "gpt", Remaining: remaining, Capacity: 100}}}
	}
	got, since := admission.Evaluate(low(t0, 5), nil)
	assert.Equal(t, t0, got[0].Since)
	got, since = admission.Evaluate(low(t0.Add(time.Minute), 3), since)
	assert.Equal(t, t0, got[0].Since, "still firing: since the first refresh that saw it")
	assert.Equal(t, 0.10, got[0].Threshold)
	got, since = admission.Evaluate(low(t0.Add(2*time.Minute), 50), since)
	assert.Empty(t, got)
	assert.Empty(t, since)
	got, _ = admission.Evaluate(low(t0.Add(3*time.Minute), 1), since)
	assert.Equal(t, t0.Add(3*time.Minute), got[0].Since, "a relapse starts afresh")
}
