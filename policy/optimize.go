package policy

import (
	"fmt"
	"math/bits"
	"slices"
	"strings"
)

// Optimize is the policy's optimize: block: the rules that rewrite calls to
// cost less, and when a client turns aggressive.
type Optimize struct {
	// Rules in the order written: for each strategy, the first rule that
	// fires decides (one downgrade target, one token cap).
	Rules []*OptimizeRule
	// Aggressive turns on the rules marked aggressive, and lifts every
	// rule's pressure threshold, for these tiers and clients always, and for
	// every client whose budget pressure reaches AggressiveAbove (percent;
	// 0: never automatically).
	AggressiveTiers   []string
	AggressiveClients []string
	AggressiveAbove   int64
}

// FlexFallback is what happens when the provider refuses a flex call for
// lack of capacity.
type FlexFallback string

// Flex fallbacks.
const (
	// FlexStandard lets the worker's retry go at the standard tier: the
	// refusal is answered as retryable, and flex is paused for the model.
	FlexStandard FlexFallback = "standard"
	// FlexRefuse passes the provider's refusal on as it is.
	FlexRefuse FlexFallback = "refuse"
)

var flexFallbacks = []FlexFallback{FlexStandard, FlexRefuse}

// DefaultMinPrefixTokens is the shortest prefix a prompt_cache rule marks:
// Anthropic caches nothing shorter than 1,024 tokens on most models (2,048
// on the Haiku ones), and a cache write costs more than a plain input.
const DefaultMinPrefixTokens = 1024

// OptimizeRule is one optimize.rules entry: when it applies, and what it
// does.
type OptimizeRule struct {
	Name string
	Line int // where it is written, for policy check
	File string

	// When: every list given must match (empty: any); PressureAbove is a
	// percent of the client's budget spent or held (0: any pressure).
	Tiers, Clients, Routes []string
	Classes                []Class
	Models                 []string // names or "prefix*" patterns
	PressureAbove          int64
	// Aggressive rules apply only to a client in aggressive mode.
	Aggressive bool

	// Do.
	Downgrade       string // the model to send instead ("": no downgrade)
	Flex            bool   // OpenAI service_tier "flex", where the model has flex prices
	FlexRefused     FlexFallback
	MaxOutputTokens int64 // clamp the output allowance (0: no cap)
	// FitPool clamps an output allowance too large for the route's pools
	// to what they can hold, instead of refusing the call.
	FitPool         bool
	PromptCache     bool
	MinPrefixTokens int64
	Compact         bool
	// Forced rules apply even when the worker opts out
	// (x-tollgate-optimize: off).
	Forced bool
}

// OptimizeContext is what a rule is matched against.
type OptimizeContext struct {
	Tier, Client, Route, Model string
	Class                      Class
	// PressurePercent is the share of the client's budget spent or held,
	// in percent (0–100+); -1 when unknown or unbudgeted.
	PressurePercent int64
	Aggressive      bool
	OptedOut        bool
}

// Matches reports whether the rule applies to a call.
func (r *OptimizeRule) Matches(c OptimizeContext) bool {
	if c.OptedOut && !r.Forced {
		return false
	}
	if r.Aggressive && !c.Aggressive {
		return false
	}
	if len(r.Tiers) > 0 && !slices.Contains(r.Tiers, c.Tier) ||
		len(r.Clients) > 0 && !slices.Contains(r.Clients, c.Client) ||
		len(r.Routes) > 0 && !slices.Contains(r.Routes, c.Route) ||
		len(r.Classes) > 0 && !slices.Contains(r.Classes, c.Class) {
		return false
	}
	if len(r.Models) > 0 && !slices.ContainsFunc(r.Models, func(p string) bool { return modelMatches(p, c.Model) }) {
		return false
	}
	// In aggressive mode a rule fires whatever its pressure threshold.
	if r.PressureAbove > 0 && !c.Aggressive && c.PressurePercent < r.PressureAbove {
		return false
	}
	return true
}

// IsAggressive reports whether a client of tier with pressure (percent,
// -1 unknown) is in aggressive mode.
func (o *Optimize) IsAggressive(tier, client string, pressure int64) bool {
	if o == nil {
		return false
	}
	return slices.Contains(o.AggressiveTiers, tier) || slices.Contains(o.AggressiveClients, client) ||
		o.AggressiveAbove > 0 && pressure >= o.AggressiveAbove
}

// PressurePercent is the share of limit that spent and held take, in whole
// percent rounded down (capped at 1,000); -1 when limit is not positive
// (no budget, or unlimited).
func PressurePercent(spent, held, limit Money) int64 {
	if limit <= 0 {
		return -1
	}
	used := max(spent, 0) + max(held, 0)
	if used < 0 { // overflowed: far beyond any limit
		return 1000
	}
	hi, lo := bits.Mul64(uint64(used), 100)
	if hi >= uint64(limit) {
		return 1000
	}
	q, _ := bits.Div64(hi, lo, uint64(limit))
	return int64(min(q, 1000))
}

func (o *Optimize) summary() SummaryOptimize {
	var out SummaryOptimize
	if o == nil {
		return out
	}
	for _, r := range o.Rules {
		out.Rules = append(out.Rules, SummaryRule{Name: r.Name, When: r.when(), Do: r.do(), Forced: r.Forced})
	}
	var parts []string
	if len(o.AggressiveTiers) > 0 {
		parts = append(parts, "tiers "+strings.Join(o.AggressiveTiers, ","))
	}
	if len(o.AggressiveClients) > 0 {
		parts = append(parts, "clients "+strings.Join(o.AggressiveClients, ","))
	}
	if o.AggressiveAbove > 0 {
		parts = append(parts, fmt.Sprintf("any client at %d%% of its budget", o.AggressiveAbove))
	}
	out.Aggressive = strings.Join(parts, "; ")
	return out
}

// when describes a rule's conditions.
func (r *OptimizeRule) when() string {
	var parts []string
	add := func(name string, xs []string) {
		if len(xs) > 0 {
			parts = append(parts, name+" "+strings.Join(xs, ","))
		}
	}
	add("tiers", r.Tiers)
	add("clients", r.Clients)
	add("routes", r.Routes)
	classes := make([]string, len(r.Classes))
	for i, c := range r.Classes {
		classes[i] = c.String()
	}
	add("classes", classes)
	add("models", r.Models)
	if r.PressureAbove > 0 {
		parts = append(parts, fmt.Sprintf("budget >= %d%%", r.PressureAbove))
	}
	if r.Aggressive {
		parts = append(parts, "aggressive only")
	}
	if len(parts) == 0 {
		return "every call"
	}
	return strings.Join(parts, "; ")
}

// do describes a rule's actions.
func (r *OptimizeRule) do() string {
	var parts []string
	if r.Downgrade != "" {
		parts = append(parts, "downgrade to "+r.Downgrade)
	}
	if r.Flex {
		parts = append(parts, "flex (refused: "+string(r.FlexRefused)+")")
	}
	if r.MaxOutputTokens > 0 {
		parts = append(parts, fmt.Sprintf("cap output at %d tokens", r.MaxOutputTokens))
	}
	if r.FitPool {
		parts = append(parts, "fit output to the pool")
	}
	if r.PromptCache {
		parts = append(parts, fmt.Sprintf("cache prefixes of %d+ tokens", r.MinPrefixTokens))
	}
	if r.Compact {
		parts = append(parts, "compact")
	}
	return strings.Join(parts, "; ")
}
