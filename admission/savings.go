package admission

import (
	"context"
	"log/slog"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/tollgate/tollgate/internal/metricset"
	"github.com/tollgate/tollgate/limiter"
)

// Savings: what the rewrites of a call (a cheaper model, the flex tier,
// prompt caching, compaction) saved it, per strategy, booked with its
// settlement in the same store step (limiter.Ending.Savings), once, and
// reported by Usage. The optimizer computes them; SetSavings hands them to
// the call before it ends.

// SetSavings gives the call what its rewrites saved it, per strategy, in
// nano-dollars (negative when a strategy cost more than it saved): booked
// to its client for the period when the call settles (at its usage or its
// estimate), not when it is released or was settled before. A later call
// replaces the savings given before. Savings limiter.ValidateSavings
// refuses (more than limiter.MaxSavings, a name not [a-z_]{1,32}, an
// amount beyond 2^53) are logged and dropped when the call settles: the
// settlement itself goes ahead. Like the rest of Call, not safe for
// concurrent use.
func (c *Call) SetSavings(s []limiter.Saving) { c.savings = append([]limiter.Saving(nil), s...) }

// withSavings puts the call's savings into e, when they may be booked.
func (c *Call) withSavings(ctx context.Context, e *limiter.Ending) {
	if len(c.savings) == 0 || e.Outcome != limiter.OutcomeSettled {
		return
	}
	if err := limiter.ValidateSavings(c.savings); err != nil {
		c.s.log.LogAttrs(ctx, slog.LevelWarn, "savings refused; the call settles without them",
			slog.String("reservation", c.reservation), slog.Any("error", err))
		return
	}
	e.Savings = c.savings
}

// savingsMetrics count booked savings by strategy and tier. A counter
// never decreases, so negative savings (a strategy that cost more than it
// saved) count in their own series, as a positive amount: net savings are
// the first less the second; the store's ledger keeps the signed truth.
type savingsMetrics struct {
	saved *prometheus.CounterVec
	lost  *prometheus.CounterVec
}

func newSavingsMetrics(f *metricset.Set) *savingsMetrics {
	return &savingsMetrics{
		saved: f.CounterVec(prometheus.CounterOpts{
			Name: "tollgate_optimize_savings_dollars_total",
			Help: "What the optimizer's rewrites saved settled calls, by strategy and client tier: the positive savings only, counted once per booked settlement (see tollgate_optimize_savings_lost_dollars_total).",
		}, []string{"strategy", "tier"}),
		lost: f.CounterVec(prometheus.CounterOpts{
			Name: "tollgate_optimize_savings_lost_dollars_total",
			Help: "What rewrites cost settled calls beyond what they saved (negative savings, as a positive amount), by strategy and client tier; net savings are tollgate_optimize_savings_dollars_total less this.",
		}, []string{"strategy", "tier"}),
	}
}

// booked counts the savings a settlement booked.
func (m *savingsMetrics) booked(tier string, savings []limiter.Saving) {
	for _, s := range savings {
		switch {
		case s.Amount > 0:
			m.saved.WithLabelValues(s.Strategy, tier).Add(dollars(s.Amount))
		case s.Amount < 0:
			m.lost.WithLabelValues(s.Strategy, tier).Add(dollars(-s.Amount))
		}
	}
}
