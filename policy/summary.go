package policy

import (
	"fmt"
	"io"
	"sort"
	"strings"
	"text/tabwriter"
	"time"
)

// Summary is a plain, JSON-friendly view of a Set, for /debug/policy and
// `tollgate policy check`.
type Summary struct {
	Files    []string        `json:"files"`
	Defaults SummaryDefaults `json:"defaults"`
	Pools    []SummaryPool   `json:"pools"`
	Routes   []SummaryRoute  `json:"routes"`
	Tiers    []SummaryTier   `json:"tiers"`
	Models   []SummaryModel  `json:"models,omitempty"`
	Queue    SummaryQueue    `json:"queue"`
	Optimize SummaryOptimize `json:"optimize"`
	Cache    SummaryCache    `json:"cache"`
	Clients  int             `json:"clients"`
	// Alerts are the thresholds of the in-process alerts, in a sentence.
	Alerts string `json:"alerts"`
}

// SummaryOptimize mirrors Optimize: each rule's conditions and actions as
// one line of text.
type SummaryOptimize struct {
	Rules      []SummaryRule `json:"rules,omitempty"`
	Aggressive string        `json:"aggressive,omitempty"`
}

// SummaryRule mirrors OptimizeRule.
type SummaryRule struct {
	Name   string `json:"name"`
	When   string `json:"when"`
	Do     string `json:"do"`
	Forced bool   `json:"forced"`
}

// SummaryQueue mirrors Queue.
type SummaryQueue struct {
	PriorityHeader  string         `json:"priority_header"`
	WaitHorizon     string         `json:"wait_horizon"`
	FairnessWindow  string         `json:"fairness_window"`
	StarvationAlert string         `json:"starvation_alert"`
	Classes         []SummaryClass `json:"classes"`
	OffPeak         []string       `json:"off_peak,omitempty"`
}

// SummaryClass mirrors ClassPolicy.
type SummaryClass struct {
	Name     string `json:"name"`
	MaxWait  string `json:"max_wait"`
	MaxDepth int    `json:"max_depth"`
	Urgency  int    `json:"urgency"`
}

// SummaryModel mirrors Model.
type SummaryModel struct {
	Name   string `json:"name"`
	Input  string `json:"input"`
	Output string `json:"output"`
	Flex   string `json:"flex,omitempty"` // "input/output" at the flex tier
}

// SummaryDefaults mirrors Defaults.
type SummaryDefaults struct {
	UnknownClient    string   `json:"unknown_client"`
	MissingClient    Action   `json:"missing_client"`
	UnmatchedRoute   Action   `json:"unmatched_route"`
	InvalidRequest   Action   `json:"invalid_request"`
	StoreUnavailable Action   `json:"store_unavailable"`
	Timezone         string   `json:"timezone"`
	ReservationTTL   string   `json:"reservation_ttl"`
	Reservation      Strategy `json:"reservation"`
	Shadow           bool     `json:"shadow"`
}

// SummaryPool mirrors Pool.
type SummaryPool struct {
	Name     string `json:"name"`
	Unit     Unit   `json:"unit"`
	Capacity int64  `json:"capacity"`
	// Refill is the rate as ParseRate reads it, over the shortest period
	// that makes it whole: "166/s", "10000/min", "100/h".
	Refill string `json:"refill"`
	Price  string `json:"price"`
	Shadow bool   `json:"shadow,omitempty"`
	// Split lists, for a pool with reservations, each part: the shared
	// part first, then each reservation's (see reserve.go).
	Split []SummaryPart `json:"split,omitempty"`
	// Dedicated names the client and the pool it replaces:
	// "client acme instead of gpt-4".
	Dedicated string `json:"dedicated,omitempty"`
}

// SummaryPart is one bucket of a split pool.
type SummaryPart struct {
	Part     string `json:"part"` // "shared", "tier enterprise", "tier enterprise (lent while idle)"
	Capacity int64  `json:"capacity"`
	Refill   string `json:"refill"`
}

// SummaryRoute mirrors Route.
type SummaryRoute struct {
	Name       string   `json:"name"`
	Host       string   `json:"host"`
	PathPrefix string   `json:"path_prefix"`
	Models     []string `json:"models,omitempty"`
	Provider   Provider `json:"provider"`
	Pools      []string `json:"pools"`
	Class      string   `json:"class"`
	Pricing    string   `json:"pricing,omitempty"` // "pool"; omitted for model
}

// SummaryTier mirrors Tier.
type SummaryTier struct {
	Name          string   `json:"name"`
	Priority      int      `json:"priority"`
	MaxConcurrent int64    `json:"max_concurrent"`
	MonthlyBudget string   `json:"monthly_budget"`
	ClientLimits  []string `json:"client_limits,omitempty"`
	MaxClass      string   `json:"max_class"`
	Clients       int      `json:"clients"`
}

// Summary describes the set.
func (s *Set) Summary() Summary {
	if s == nil {
		return Summary{}
	}
	sum := Summary{Files: s.Files, Clients: len(s.Clients), Defaults: SummaryDefaults{
		UnknownClient: string(Deny), MissingClient: s.Defaults.MissingClient, UnmatchedRoute: s.Defaults.UnmatchedRoute,
		InvalidRequest: s.Defaults.InvalidRequest, Shadow: s.Defaults.Shadow,
		StoreUnavailable: s.Defaults.StoreUnavailable, Timezone: s.Defaults.Location.String(),
		ReservationTTL: s.Defaults.ReservationTTL.String(), Reservation: s.Defaults.Reservation,
	}}
	if t := s.Defaults.UnknownClientTier; t != nil {
		sum.Defaults.UnknownClient = t.Name
	}
	for _, name := range sortedKeys(s.Pools) {
		p := s.Pools[name]
		sp := SummaryPool{Name: p.Name, Unit: p.Unit, Capacity: p.Limit.Capacity, Refill: p.Limit.Rate(), Price: p.Price.String(), Shadow: p.Shadow}
		sp.Split = p.splitSummary()
		if d := p.Dedicated; d != nil && d.InsteadOf != nil {
			sp.Dedicated = fmt.Sprintf("client %s instead of %s", d.Client, d.InsteadOf.Name)
		}
		sum.Pools = append(sum.Pools, sp)
	}
	for _, r := range s.Routes {
		sr := SummaryRoute{Name: r.Name, Host: r.Host, PathPrefix: r.PathPrefix, Models: r.Models, Provider: r.Provider, Class: r.Class.String()}
		if r.Pricing == PricingPool {
			sr.Pricing = string(r.Pricing)
		}
		for _, p := range r.Pools {
			sr.Pools = append(sr.Pools, p.Name)
		}
		sum.Routes = append(sum.Routes, sr)
	}
	for _, name := range sortedKeys(s.Models) {
		m := s.Models[name]
		sm := SummaryModel{Name: m.Name, Input: m.Input.String(), Output: m.Output.String()}
		if m.HasFlex {
			sm.Flex = "$" + m.FlexInput.String() + " / $" + m.FlexOutput.String()
		}
		sum.Models = append(sum.Models, sm)
	}
	sum.Optimize = s.Optimize.summary()
	sum.Cache = s.Cache.summary(s)
	perTier := map[string]int{}
	for _, c := range s.Clients {
		perTier[c.Tier.Name]++
	}
	for _, name := range sortedKeys(s.Tiers) {
		t := s.Tiers[name]
		st := SummaryTier{Name: t.Name, Priority: t.Priority, MaxConcurrent: t.MaxConcurrent, MonthlyBudget: "custom", Clients: perTier[name],
			MaxClass: t.MaxClass.String()}
		if t.Budgeted {
			st.MonthlyBudget = "$" + t.MonthlyBudget.String()
		}
		for _, pool := range sortedKeys(t.ClientLimits) {
			l := t.ClientLimits[pool]
			st.ClientLimits = append(st.ClientLimits, fmt.Sprintf("%s %d at %s", pool, l.Capacity, l.Rate()))
		}
		sum.Tiers = append(sum.Tiers, st)
	}
	a := s.Alerts.WithDefaults()
	sum.Alerts = fmt.Sprintf("pool below %d%%, budget above %d%%, more than %d calls held, upstream errors above %d%% over %s; %d clients watched, forecasts over %s",
		a.PoolBelow, a.BudgetAbove, a.QueueAbove, a.UpstreamErrorsAbove, a.UpstreamWindow, a.BudgetClients, a.ForecastWindow)
	q := s.Queue
	sum.Queue = SummaryQueue{PriorityHeader: q.PriorityHeader, WaitHorizon: q.WaitHorizon.String(),
		FairnessWindow: q.FairnessWindow.String(), StarvationAlert: q.StarvationAlert.String()}
	for _, c := range Classes {
		cp := q.Class(c)
		sum.Queue.Classes = append(sum.Queue.Classes, SummaryClass{Name: c.String(), MaxWait: cp.MaxWait.String(), MaxDepth: cp.MaxDepth, Urgency: cp.Urgency})
	}
	for _, w := range q.Windows {
		desc := fmt.Sprintf("%02d:%02d-%02d:%02d %s", int(w.Start.Hours()), int(w.Start.Minutes())%60, int(w.End.Hours()), int(w.End.Minutes())%60, w.Location)
		var days []string
		for d, on := range w.Days {
			if on {
				days = append(days, time.Weekday(d).String()[:3])
			}
		}
		if len(days) > 0 {
			desc += " " + strings.Join(days, ",")
		}
		sum.Queue.OffPeak = append(sum.Queue.OffPeak, desc)
	}
	return sum
}

// WriteText prints the summary as aligned tables.
func (sum Summary) WriteText(w io.Writer) error {
	tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
	fmt.Fprintf(tw, "files:\t%s\n", strings.Join(sum.Files, ", "))
	fmt.Fprintf(tw, "defaults:\tunknown_client=%s unmatched_route=%s invalid_request=%s store_unavailable=%s shadow=%t\n",
		sum.Defaults.UnknownClient, sum.Defaults.UnmatchedRoute, sum.Defaults.InvalidRequest, sum.Defaults.StoreUnavailable, sum.Defaults.Shadow)
	fmt.Fprintf(tw, "budgets:\tcalendar months in %s; unsettled calls commit at their estimate after %s; reservation %s\n\n",
		sum.Defaults.Timezone, sum.Defaults.ReservationTTL, sum.Defaults.Reservation)
	fmt.Fprintln(tw, "POOL\tUNIT\tCAPACITY\tREFILL\tPRICE\tSHADOW")
	for _, p := range sum.Pools {
		fmt.Fprintf(tw, "%s\t%s\t%d\t%s\t$%s\t%t\n", p.Name, p.Unit, p.Capacity, p.Refill, p.Price, p.Shadow)
		for _, pt := range p.Split {
			fmt.Fprintf(tw, "  %s\t\t%d\t%s\t\t\n", pt.Part, pt.Capacity, pt.Refill)
		}
		if p.Dedicated != "" {
			fmt.Fprintf(tw, "  dedicated to %s\n", p.Dedicated) // no tab: no column to widen
		}
	}
	fmt.Fprintln(tw, "\nROUTE\tHOST\tPATH PREFIX\tMODELS\tPROVIDER\tPOOLS\tCLASS")
	for _, r := range sum.Routes {
		models := strings.Join(r.Models, ",")
		if models == "" {
			models = "*"
		}
		host := r.Host
		if host == "" {
			host = "*"
		}
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\t%s\t%s\n", r.Name, host, r.PathPrefix, models, r.Provider, strings.Join(r.Pools, ","), r.Class)
	}
	fmt.Fprintln(tw, "\nTIER\tPRIORITY\tMAX CONCURRENT\tMONTHLY BUDGET\tMOST URGENT CLASS\tCLIENTS\tCLIENT LIMITS")
	for _, t := range sum.Tiers {
		fmt.Fprintf(tw, "%s\t%d\t%d\t%s\t%s\t%d\t%s\n", t.Name, t.Priority, t.MaxConcurrent, t.MonthlyBudget, t.MaxClass, t.Clients, strings.Join(t.ClientLimits, "; "))
	}
	fmt.Fprintf(tw, "\nqueue:\tclass header %s; full waiting points after %s; fairness over %s; starvation alert after %s\n",
		sum.Queue.PriorityHeader, sum.Queue.WaitHorizon, sum.Queue.FairnessWindow, sum.Queue.StarvationAlert)
	fmt.Fprintln(tw, "CLASS\tMAX WAIT\tMAX DEPTH\tURGENCY")
	for _, c := range sum.Queue.Classes {
		fmt.Fprintf(tw, "%s\t%s\t%d\t%d\n", c.Name, c.MaxWait, c.MaxDepth, c.Urgency)
	}
	if len(sum.Queue.OffPeak) > 0 {
		fmt.Fprintf(tw, "off-peak:\t%s\n", strings.Join(sum.Queue.OffPeak, "; "))
	}
	if len(sum.Models) > 0 {
		fmt.Fprintln(tw, "\nMODEL\tINPUT\tOUTPUT\tFLEX (IN / OUT)")
		for _, m := range sum.Models {
			fmt.Fprintf(tw, "%s\t$%s\t$%s\t%s\n", m.Name, m.Input, m.Output, m.Flex)
		}
	}
	if len(sum.Optimize.Rules) > 0 {
		fmt.Fprintln(tw, "\nOPTIMIZE RULE\tWHEN\tDO\tFORCED")
		for _, r := range sum.Optimize.Rules {
			fmt.Fprintf(tw, "%s\t%s\t%s\t%t\n", r.Name, r.When, r.Do, r.Forced)
		}
	}
	if sum.Optimize.Aggressive != "" {
		fmt.Fprintf(tw, "aggressive:\t%s\n", sum.Optimize.Aggressive)
	}
	if len(sum.Cache.Rules) > 0 {
		fmt.Fprintln(tw, "\nCACHE RULE\tWHEN\tRESPONSES\tIDEMPOTENCY")
		for _, r := range sum.Cache.Rules {
			fmt.Fprintf(tw, "%s\t%s\t%s\t%s\n", r.Name, r.When, r.Responses, r.Idempotency)
		}
	}
	fmt.Fprintf(tw, "\nclients:\t%d\n", sum.Clients)
	return tw.Flush()
}

func sortedKeys[T any](m map[string]T) []string {
	keys := make([]string, 0, len(m))
	for k := range m {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	return keys
}

// splitSummary lists a split pool's parts, or nil.
func (p *Pool) splitSummary() []SummaryPart {
	if len(p.Reserved) == 0 {
		return nil
	}
	sh := p.SharedLimit()
	out := []SummaryPart{{Part: "shared", Capacity: sh.Capacity, Refill: sh.Rate()}}
	for _, r := range p.Reserved {
		kept := r.Owner()
		if r.Lent != nil {
			kept += " (never lent)"
		}
		out = append(out, SummaryPart{Part: kept, Capacity: r.Kept.Limit.Capacity, Refill: r.Kept.Limit.Rate()})
		if r.Lent != nil {
			out = append(out, SummaryPart{Part: r.Owner() + " (lent while idle)", Capacity: r.Lent.Limit.Capacity, Refill: r.Lent.Limit.Rate()})
		}
	}
	return out
}
