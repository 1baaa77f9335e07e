package admission

import (
	"cmp"
	"context"
	"fmt"
	"math"
	"math/bits"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/tollgate/tollgate/limiter"
	"github.com/tollgate/tollgate/policy"
)

// The optimize API's reports: what the optimizer saved a client this
// period (OptimizeStats) and what it could save (Recommendations). Money
// is a decimal string of dollars; every figure is integer arithmetic on
// nano-dollars, seconds and counts.

// OptimizeStats answers GET /api/optimize/stats/{client}.
type OptimizeStats struct {
	Client string `json:"client"`
	Period string `json:"period"`
	// Savings are what the rewrites saved the client this period, by
	// strategy (as the store booked them at settle; a negative amount is
	// a strategy that cost more than it saved), and their total.
	Savings      map[string]string `json:"savings_usd"`
	SavingsTotal string            `json:"savings_total_usd"`
	// Spent is the client's own spend this period; WouldHaveCost that
	// plus the savings: what its calls would have cost as sent.
	Spent         string `json:"spent_usd"`
	WouldHaveCost string `json:"would_have_cost_usd"`
	// SavedBasisPoints is SavingsTotal ÷ WouldHaveCost in hundredths of a
	// percent, rounded toward zero; SavedPercent the same as a decimal.
	SavedBasisPoints int64  `json:"saved_bps"`
	SavedPercent     string `json:"saved_percent"`
	// Rewrites counts the client's calls each strategy rewrote, and
	// ObservedCalls its calls, settled from their usage this period by
	// this process (the observation book).
	Rewrites      map[string]int64 `json:"rewrites"`
	ObservedCalls int64            `json:"observed_calls"`
}

// OptimizeStats reports what the optimizer saved a client this period.
func (s *Service) OptimizeStats(ctx context.Context, clientID string) (OptimizeStats, error) {
	set := s.policies.Policy()
	c, ok := set.Client(clientID)
	if !ok {
		return OptimizeStats{}, ErrUnknownClient
	}
	period := set.Defaults.Period(s.clock.Now())
	u, err := s.store.Usage(ctx, period, Chain(c), time.Time{})
	if err != nil {
		return OptimizeStats{}, err
	}
	var spent policy.Money
	if len(u.Budgets) > 0 {
		spent = u.Budgets[0].Spent
	}
	total := limiter.SavingsTotal(u.Savings)
	would := sumSat(spent, total)
	st := OptimizeStats{Client: clientID, Period: period, Savings: make(map[string]string, len(u.Savings)),
		SavingsTotal: total.String(), Spent: spent.String(), WouldHaveCost: would.String()}
	for _, sv := range u.Savings {
		st.Savings[sv.Strategy] = sv.Amount.String()
	}
	if would > 0 {
		st.SavedBasisPoints = mulDiv(abs(total), 10_000, would)
		if total < 0 {
			st.SavedBasisPoints = -st.SavedBasisPoints
		}
	}
	st.SavedPercent = hundredths(st.SavedBasisPoints)
	_, st.ObservedCalls, st.Rewrites = s.book.client(period, clientID)
	return st, nil
}

// Recommendation kinds.
const (
	RecommendDowngrade = "downgrade"
	RecommendFlex      = "flex"
	RecommendBudget    = "budget_forecast"
)

// Recommendation is one change that would have cut a client's bill this
// period, with the policy rule that makes it.
type Recommendation struct {
	Kind    string `json:"kind"`
	Message string `json:"message"`
	// Saving is what the change would have saved this period (for a
	// budget forecast: what the month would cost over the budget at the
	// current rate, the cut that makes the budget last). Each figure is
	// on its own: two recommendations on the same calls do not add up.
	Saving string `json:"saving_usd"`
	// Rule is the policy YAML that does it.
	Rule string `json:"rule"`

	saving policy.Money
}

// ObservedCalls is one line of the observation book: a client's calls on
// one route, model (the one that ran) and class this period.
type ObservedCalls struct {
	Route             string           `json:"route"`
	Model             string           `json:"model"`
	Class             string           `json:"class"`
	Calls             int64            `json:"calls"`
	ShortOutputCalls  int64            `json:"short_output_calls"` // under 300 output tokens
	InputTokens       int64            `json:"input_tokens"`
	CachedInputTokens int64            `json:"cached_input_tokens"`
	OutputTokens      int64            `json:"output_tokens"`
	Spent             string           `json:"spent_usd"`
	Rewritten         map[string]int64 `json:"rewritten"` // calls, by strategy
}

// RecommendationsReport answers GET /api/optimize/recommendations/{client}.
type RecommendationsReport struct {
	Client string `json:"client"`
	Period string `json:"period"`
	// Observed are the calls the recommendations come from: this
	// process's, settled from their usage this period, the largest spend
	// first.
	Observed []ObservedCalls `json:"observed"`
	// Recommendations, the largest saving first.
	Recommendations []Recommendation `json:"recommendations"`
}

// Recommendations computes, from the calls of a client this process
// observed this period and its spend, what would have cut its bill: a
// cheaper model for the short calls of a model with one, flex for batch
// and deferred calls that went at the standard tier, and when the spend
// rate runs out a budget before the month ends.
func (s *Service) Recommendations(ctx context.Context, clientID string) (RecommendationsReport, error) {
	set := s.policies.Policy()
	c, ok := set.Client(clientID)
	if !ok {
		return RecommendationsReport{}, ErrUnknownClient
	}
	now := s.clock.Now()
	period := set.Defaults.Period(now)
	u, err := s.store.Usage(ctx, period, Chain(c), time.Time{})
	if err != nil {
		return RecommendationsReport{}, err
	}
	rep := RecommendationsReport{Client: clientID, Period: period, Observed: []ObservedCalls{}, Recommendations: []Recommendation{}}
	entries, _, _ := s.book.client(period, clientID)
	slices.SortFunc(entries, func(a, b obsEntry) int {
		return cmp.Or(cmp.Compare(b.line.spent, a.line.spent), cmp.Compare(a.key.route, b.key.route),
			cmp.Compare(a.key.model, b.key.model), cmp.Compare(a.key.class, b.key.class))
	})
	for _, e := range entries {
		rep.Observed = append(rep.Observed, ObservedCalls{Route: e.key.route, Model: e.key.model, Class: e.key.class.String(),
			Calls: e.line.calls, ShortOutputCalls: e.line.short, InputTokens: e.line.input, CachedInputTokens: e.line.cached,
			OutputTokens: e.line.output, Spent: e.line.spent.String(), Rewritten: e.line.rewritten})
		if r, ok := downgradeAdvice(clientID, e); ok {
			rep.Recommendations = append(rep.Recommendations, r)
		}
		if r, ok := flexAdvice(clientID, e); ok {
			rep.Recommendations = append(rep.Recommendations, r)
		}
	}
	if r, ok := budgetForecast(set.Defaults, clientID, u.Budgets, now); ok {
		rep.Recommendations = append(rep.Recommendations, r)
	}
	slices.SortStableFunc(rep.Recommendations, func(a, b Recommendation) int {
		return cmp.Or(cmp.Compare(b.saving, a.saving), cmp.Compare(a.Kind, b.Kind), cmp.Compare(a.Message, b.Message))
	})
	return rep, nil
}

// downgradeAdvice recommends a cheaper model for a line at least half of
// whose calls were short, by what the short ones would have saved.
func downgradeAdvice(client string, e obsEntry) (Recommendation, bool) {
	l := e.line
	if l.downTo == "" || l.downSaved <= 0 || l.calls == 0 || l.short*2 < l.calls {
		return Recommendation{}, false
	}
	msg := fmt.Sprintf("%d%% of your %s-class %s calls on route %s (%d of %d) wrote fewer than %d output tokens: downgrading them to %s would have saved %s this month.",
		l.short*100/l.calls, e.key.class, e.key.model, e.key.route, l.short, l.calls, shortOutputTokens, l.downTo, usd(l.downSaved))
	return Recommendation{Kind: RecommendDowngrade, Message: msg, Saving: l.downSaved.String(), saving: l.downSaved,
		Rule: ruleYAML(client, e.key, "downgrade", "downgrade: "+strconv.Quote(l.downTo))}, true
}

// flexAdvice recommends flex for a line's batch or deferred calls that
// went at the standard tier of a model with flex prices.
func flexAdvice(client string, e obsEntry) (Recommendation, bool) {
	l := e.line
	if l.flexCalls == 0 || l.flexSaved <= 0 {
		return Recommendation{}, false
	}
	msg := fmt.Sprintf("Flex processing would have saved %s this month on your %d %s-class %s calls on route %s that went at the standard tier (flex is slower, and refused when OpenAI's flex capacity runs out).",
		usd(l.flexSaved), l.flexCalls, e.key.class, e.key.model, e.key.route)
	return Recommendation{Kind: RecommendFlex, Message: msg, Saving: l.flexSaved.String(), saving: l.flexSaved,
		Rule: ruleYAML(client, e.key, "flex", "flex: true")}, true
}

// ruleYAML is an optimize rule for the calls of one line.
func ruleYAML(client string, k obsKey, what, action string) string {
	name := strconv.Quote(client + "-" + k.model + "-" + k.class.String() + "-" + what)
	return fmt.Sprintf("optimize:\n  rules:\n    - name: %s\n      when: {clients: [%s], routes: [%s], classes: [%s], models: [%s]}\n      %s\n",
		name, strconv.Quote(client), strconv.Quote(k.route), k.class, strconv.Quote(k.model), action)
}

// minForecastElapsed is how much of the period must have passed before
// its spend rate is projected: a few hours' spend says little of a month.
const minForecastElapsed = 24 * time.Hour

// budgetForecast projects each capped budget of a client's chain at the
// spend rate of the period so far (spend ÷ seconds elapsed, in integers),
// and reports the one that runs out first, when one runs out before the
// period ends: its saving is what the period would cost over the budget.
func budgetForecast(d policy.Defaults, client string, budgets []limiter.BudgetState, now time.Time) (Recommendation, bool) {
	start, end := periodStart(d, now), d.PeriodEnd(now)
	elapsed, total := int64(now.Sub(start)/time.Second), int64(end.Sub(start)/time.Second)
	if now.Sub(start) < minForecastElapsed || total <= elapsed {
		return Recommendation{}, false
	}
	var (
		found     bool
		b         limiter.BudgetState
		at        time.Time
		projected policy.Money
	)
	for _, bs := range budgets {
		if bs.Limit <= 0 || bs.Spent <= 0 {
			continue // unbudgeted (or a budget of nothing), or nothing spent
		}
		p := policy.Money(mulDiv(int64(bs.Spent), total, elapsed))
		if p <= bs.Limit {
			continue // on track
		}
		when := now
		if bs.Spent < bs.Limit {
			when = start.Add(time.Duration(mulDiv(elapsed, int64(bs.Limit), int64(bs.Spent))) * time.Second)
		}
		if !when.Before(end) {
			continue
		}
		if !found || when.Before(at) {
			found, b, at, projected = true, bs, when, p
		}
	}
	if !found {
		return Recommendation{}, false
	}
	whose := fmt.Sprintf("your %s budget", usd(b.Limit))
	if b.Owner != client {
		whose = fmt.Sprintf("%s's %s budget (which your calls share)", b.Owner, usd(b.Limit))
	}
	over := projected - b.Limit
	day := at.In(d.Location)
	when := fmt.Sprintf("is exhausted on the %s (%s)", ordinal(day.Day()), day.Format(time.DateOnly))
	if b.Spent >= b.Limit {
		when = "is exhausted already"
	}
	msg := fmt.Sprintf("At this month's spend rate (%s in %s), %s %s: the month would cost %s, %s over.",
		usd(b.Spent), span(elapsed), whose, when, usd(projected), usd(over))
	rule := fmt.Sprintf("optimize:\n  aggressive:        # the rules marked aggressive: true, and every rule's pressure_above lifted\n    clients: [%s]\n",
		strconv.Quote(client))
	return Recommendation{Kind: RecommendBudget, Message: msg, Saving: over.String(), saving: over, Rule: rule}, true
}

// periodStart is when the budget period holding t began.
func periodStart(d policy.Defaults, t time.Time) time.Time {
	l := t.In(d.Location)
	return time.Date(l.Year(), l.Month(), 1, 0, 0, 0, 0, d.Location)
}

// span says how long elapsed seconds are, in days and hours.
func span(elapsed int64) string {
	days, hours := elapsed/86400, elapsed%86400/3600
	plural := func(n int64, unit string) string {
		if n == 1 {
			return "1 " + unit
		}
		return strconv.FormatInt(n, 10) + " " + unit + "s"
	}
	if hours == 0 {
		return plural(days, "day")
	}
	return plural(days, "day") + " " + plural(hours, "hour")
}

// ordinal is "1st", "2nd", "23rd", "11th".
func ordinal(n int) string {
	suffix := "th"
	if n%100 < 11 || n%100 > 13 {
		switch n % 10 {
		case 1:
			suffix = "st"
		case 2:
			suffix = "nd"
		case 3:
			suffix = "rd"
		}
	}
	return strconv.Itoa(n) + suffix
}

// usd renders m for a sentence, with at least two decimals: "$41.20",
// "$0.0059175", "-$0.50".
func usd(m policy.Money) string {
	s := m.String()
	sign := ""
	if rest, ok := strings.CutPrefix(s, "-"); ok {
		sign, s = "-", rest
	}
	whole, frac, _ := strings.Cut(s, ".")
	for len(frac) < 2 {
		frac += "0"
	}
	return sign + "$" + whole + "." + frac
}

// hundredths renders n hundredths as a decimal: 4850 → "48.5", -5 →
// "-0.05".
func hundredths(n int64) string {
	sign := ""
	if n < 0 {
		sign, n = "-", -n
	}
	s := sign + strconv.FormatInt(n/100, 10)
	if f := n % 100; f != 0 {
		s += "." + strings.TrimRight(fmt.Sprintf("%02d", f), "0")
	}
	return s
}

// mulDiv is a × b ÷ c rounded down, for non-negative a and b and a
// positive c, through 128 bits, saturating at MaxInt64.
func mulDiv[T ~int64](a, b, c T) int64 {
	if a <= 0 || b <= 0 || c <= 0 {
		return 0
	}
	hi, lo := bits.Mul64(uint64(a), uint64(b))
	if hi >= uint64(c) {
		return math.MaxInt64
	}
	q, _ := bits.Div64(hi, lo, uint64(c))
	return int64(min(q, math.MaxInt64))
}

func abs(m policy.Money) policy.Money {
	if m < 0 {
		if m == math.MinInt64 {
			return math.MaxInt64
		}
		return -m
	}
	return m
}
