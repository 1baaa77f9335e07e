package admission

import (
	"cmp"
	"context"
	"fmt"
	"math"
	"slices"
	"time"

	"github.com/tollgate/tollgate/limiter"
	"github.com/tollgate/tollgate/policy"
)

// The status page's view of one sidecar: pools, budgets, the hold queue,
// alerts and the last refusals, read once per page view. Admission fills
// what it knows (Status); what it does not (alerts, a spend forecast) comes
// from a StatusExtras the transport is given, so the page needs no import
// of the packages that compute them.

// maxStatusBudgets bounds the budgets one snapshot reads: one store round
// trip each.
const maxStatusBudgets = 200

// StatusSnapshot is what the status page shows.
type StatusSnapshot struct {
	At         time.Time
	Period     string // the budget period ("2026-12")
	PeriodEnds time.Time

	Pools []StatusPool
	// PoolsError, when set, says why pool levels could not be read (the
	// store failed); Pools then have Known false.
	PoolsError string

	Budgets []StatusBudget
	// BudgetsOmitted counts clients past maxStatusBudgets, not shown.
	BudgetsOmitted int
	BudgetsError   string

	// Queue has one row per class, most urgent first, summed over every
	// line (pool or client) of the hold queue.
	Queue       []StatusClass
	QueueTotal  int
	QueueParked int // deferred calls waiting for the off-peak window

	// Refusals are the last refused calls, newest first.
	Refusals []Refusal

	// Alerts and AlertsEvaluated are set by a StatusExtras; while no
	// evaluator is wired, AlertsEvaluated is false and the page says so.
	Alerts          []StatusAlert
	AlertsEvaluated bool
}

// StatusPool is one pool's bucket.
type StatusPool struct {
	Name     string
	Unit     policy.Unit
	Capacity int64
	// Remaining is the whole units left now; Known is false when the store
	// could not say.
	Remaining int64
	Known     bool
	Shadow    bool
	// Refill is how many units come back each RefillPer (a second when
	// the policy says refill_per_second).
	Refill    int64
	RefillPer time.Duration
}

// FillPercent is the share of the pool left, 0–100, in whole percent.
func (p StatusPool) FillPercent() int64 {
	if p.Capacity <= 0 || !p.Known {
		return 0
	}
	return min(max(p.Remaining, 0), p.Capacity) * 100 / p.Capacity
}

// StatusBudget is one client's budget this period.
type StatusBudget struct {
	Owner  string
	Parent string // "" at the top
	Tier   string
	// Limit is the budget; Unlimited when the client has none.
	Limit     policy.Money
	Unlimited bool
	Spent     policy.Money
	// Held is reserved for calls admitted but not settled yet.
	Held     policy.Money
	InFlight int64
	// Forecast is the spend expected by the period's end, set by a
	// StatusExtras (HasForecast); without one the page shows "—".
	Forecast    policy.Money
	HasForecast bool
}

// UsedPercent is the share of the budget spent or held, 0–100.
func (b StatusBudget) UsedPercent() int64 {
	if b.Unlimited || b.Limit <= 0 {
		return 0
	}
	used := min(max(b.Spent+b.Held, 0), b.Limit)
	if b.Limit > math.MaxInt64/100 { // used·100 could overflow: divide first
		return min(int64(used/(b.Limit/100)), 100)
	}
	return int64(used * 100 / b.Limit)
}

// StatusClass is one priority class of the hold queue.
type StatusClass struct {
	Class      string
	Depth      int
	OldestWait time.Duration
}

// StatusAlert is an alert firing now, as an alert evaluator reports it.
type StatusAlert struct {
	Name     string
	Severity string // "warning", "critical", …
	Summary  string
	Since    time.Time
}

// StatusExtras adds to a snapshot what admission does not compute: the
// alerts firing (set Alerts and AlertsEvaluated) and each budget's
// forecast (set Forecast and HasForecast). It is called once per page view
// after Status, must honour ctx and be safe for concurrent use, and may
// leave anything it does not know alone.
type StatusExtras func(ctx context.Context, snap *StatusSnapshot)

// Status reads the snapshot the status page shows. A store failure does
// not fail it: the part it concerns says why it is missing.
func (s *Service) Status(ctx context.Context) StatusSnapshot {
	set := s.policies.Policy()
	now := s.clock.Now()
	snap := StatusSnapshot{At: now, Period: set.Defaults.Period(now), PeriodEnds: set.Defaults.PeriodEnd(now)}
	snap.Pools, snap.PoolsError = s.poolLevels(ctx, set)
	snap.Budgets, snap.BudgetsOmitted, snap.BudgetsError = s.budgets(ctx, set, snap.Period)
	snap.Queue, snap.QueueTotal, snap.QueueParked = s.queueByClass()
	snap.Refusals = s.refusals.list()
	return snap
}

// poolLevels reads every pool's bucket with a zero refund: the store
// advances the bucket to now and changes nothing else, so it is a read.
// (In a fleet the store answers with this member's lease of the pool while
// it holds one.)
func (s *Service) poolLevels(ctx context.Context, set *policy.Set) ([]StatusPool, string) {
	names := make([]string, 0, len(set.Pools))
	for n := range set.Pools {
		names = append(names, n)
	}
	slices.Sort(names)
	pools := make([]StatusPool, len(names))
	for i, n := range names {
		p := set.Pools[n]
		pools[i] = StatusPool{Name: n, Unit: p.Unit, Capacity: p.Limit.Capacity, Refill: p.Limit.Refill, RefillPer: cmp.Or(p.Limit.Per, time.Second), Shadow: p.Shadow}
	}
	// A pool split by reservations is read part by part (each its own
	// bucket, with its own shape) and shown as their sum.
	var reads []limiter.Refund
	var owner []int // the pool of each read
	for i, n := range names {
		p := set.Pools[n]
		reads = append(reads, limiter.Refund{Key: limiter.Key{Pool: n}, Limit: limiter.Limit(p.SharedLimit())})
		owner = append(owner, i)
		for _, r := range p.Reserved {
			for _, pt := range []*policy.Part{&r.Kept, r.Lent} {
				if pt != nil {
					reads = append(reads, limiter.Refund{Key: limiter.Key{Pool: n, Client: pt.Key}, Limit: limiter.Limit(pt.Limit)})
					owner = append(owner, i)
				}
			}
		}
	}
	for start := 0; start < len(reads); start += limiter.MaxCharges {
		end := min(start+limiter.MaxCharges, len(reads))
		states, err := s.store.Refund(ctx, reads[start:end], time.Time{})
		if err != nil {
			return pools, fmt.Sprintf("reading pool levels: %v", err)
		}
		for j, st := range states {
			if start+j < len(owner) {
				p := &pools[owner[start+j]]
				p.Remaining, p.Known = p.Remaining+st.Remaining, true
			}
		}
	}
	return pools, ""
}

// budgets reads each client's own budget this period, clients sorted by
// id, at most maxStatusBudgets of them.
func (s *Service) budgets(ctx context.Context, set *policy.Set, period string) ([]StatusBudget, int, string) {
	ids := make([]string, 0, len(set.Clients))
	for id := range set.Clients {
		ids = append(ids, id)
	}
	slices.Sort(ids)
	omitted := max(len(ids)-maxStatusBudgets, 0)
	ids = ids[:len(ids)-omitted]
	out := make([]StatusBudget, 0, len(ids))
	for _, id := range ids {
		c := set.Clients[id]
		own := Chain(c)[:1]
		u, err := s.store.Usage(ctx, period, own, time.Time{})
		if err != nil {
			return out, omitted, fmt.Sprintf("reading budgets: %v", err)
		}
		b := StatusBudget{Owner: id, Tier: c.Tier.Name, Limit: own[0].Limit, Unlimited: own[0].Limit < 0, InFlight: u.InFlight}
		if c.Parent != nil {
			b.Parent = c.Parent.ID
		}
		if len(u.Budgets) > 0 {
			b.Spent, b.Held = u.Budgets[0].Spent, u.Budgets[0].Reserved
		}
		out = append(out, b)
	}
	return out, omitted, ""
}

// queueByClass sums the hold queue's lines per class.
func (s *Service) queueByClass() ([]StatusClass, int, int) {
	st := s.queue.Status()
	out := make([]StatusClass, len(policy.Classes))
	for i, c := range policy.Classes {
		out[i].Class = c.String()
		for _, l := range st.Lines {
			cs := l.Classes[c.String()]
			out[i].Depth += cs.Depth
			out[i].OldestWait = max(out[i].OldestWait, cs.OldestWait)
		}
	}
	return out, st.Total, st.Parked
}
