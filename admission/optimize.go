package admission

import (
	"math"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/tollgate/tollgate/costing"
	"github.com/tollgate/tollgate/costing/optimize"
	"github.com/tollgate/tollgate/limiter"
	"github.com/tollgate/tollgate/policy"
)

// Optimizing: the policy's optimize rules pick rewrites for a call at
// admission (costing/optimize applies them, pure functions over the body);
// the rewritten call is the one estimated, admitted and priced, and ext_proc
// applies the same edits to the body that goes out. When it settles, what
// each strategy saved is booked with its spend.

// HeaderOptimize is the request header a worker opts out with ("off"): the
// rules not marked forced then leave its call alone.
const HeaderOptimize = "x-tollgate-optimize"

// Headers on the response the worker gets when the optimizer rewrote its
// call: the strategies applied, and the model it asked for.
const (
	HeaderOptimized      = "x-tollgate-optimized"
	HeaderDowngradedFrom = "x-tollgate-downgraded-from"
)

// flexPause is how long flex stays off for a model after the provider
// refused a flex call for lack of capacity (flex_refused: standard): the
// worker's retry, and every call meanwhile, goes at the standard tier.
const flexPause = time.Minute

// optimized is what the optimizer did to one call at admission.
type optimized struct {
	edits   []optimize.Edit    // to apply again, in ext_proc, to the body that goes out
	applied []optimize.Applied // what they changed at admission
	rules   []string           // the rules whose edits changed the call, in policy order
	plan    editPlan
	body    optimize.Body
	// orig is the call as the worker sent it; compacted is it after the
	// edits that change its text (compaction, cache marks) alone, at the
	// same model: their input tokens apart are what compaction removed.
	orig     costing.Estimate
	removed  int64
	fallback policy.FlexFallback
}

// did reports whether strategy s changed the call.
func (o *optimized) did(s optimize.Strategy) bool {
	return o != nil && slices.ContainsFunc(o.applied, func(a optimize.Applied) bool { return a.Strategy == s })
}

// from returns the Applied of strategy s.
func (o *optimized) from(s optimize.Strategy) (optimize.Applied, bool) {
	if o == nil {
		return optimize.Applied{}, false
	}
	for _, a := range o.applied {
		if a.Strategy == s {
			return a, true
		}
	}
	return optimize.Applied{}, false
}

// Strategies lists what changed the call, in the order applied.
func (o *optimized) strategies() []string {
	if o == nil {
		return nil
	}
	out := make([]string, len(o.applied))
	for i, a := range o.applied {
		out[i] = string(a.Strategy)
	}
	return out
}

// report describes o for a Verdict.
func (o *optimized) report() *Optimization {
	rep := &Optimization{Rules: o.rules, Strategies: o.strategies(), Before: o.orig}
	if a, ok := o.from(optimize.Downgrade); ok {
		rep.DowngradedFrom = a.FromModel
	}
	return rep
}

// Optimization reports a rewrite on a Verdict.
type Optimization struct {
	Rules      []string
	Strategies []string
	// DowngradedFrom is the model the worker asked for, when downgraded.
	DowngradedFrom string
	// Before is the estimate of the call as the worker sent it.
	Before costing.Estimate
}

// pressureBook remembers each client's budget pressure as of its latest
// decision, so that rules keyed on it cost no store round trip. It is
// bounded: when full it forgets everything (a client's next decision
// refills its entry).
type pressureBook struct {
	mu sync.Mutex
	m  map[string]int64
}

const maxPressureEntries = 1 << 16

func (b *pressureBook) get(client string) int64 {
	b.mu.Lock()
	defer b.mu.Unlock()
	if v, ok := b.m[client]; ok {
		return v
	}
	return -1
}

func (b *pressureBook) note(client string, budgets []limiter.BudgetState) {
	p := int64(-1)
	for _, bs := range budgets {
		p = max(p, policy.PressurePercent(bs.Spent, bs.Reserved, bs.Limit))
	}
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.m == nil || len(b.m) >= maxPressureEntries {
		b.m = map[string]int64{}
	}
	b.m[client] = p
}

// flexBook pauses flex per model after a capacity refusal.
type flexBook struct {
	mu    sync.Mutex
	until map[string]time.Time
}

func (b *flexBook) paused(model string, now time.Time) bool {
	b.mu.Lock()
	defer b.mu.Unlock()
	return now.Before(b.until[model])
}

func (b *flexBook) pause(model string, now time.Time) {
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.until == nil || len(b.until) >= maxPressureEntries {
		b.until = map[string]time.Time{}
	}
	b.until[model] = now.Add(flexPause)
}

// optimizeKind is the optimize.Body of a call on route, or false when the
// optimizer does not rewrite such calls.
func optimizeKind(route *policy.Route, path string) (optimize.Body, bool) {
	switch route.Provider {
	case policy.ProviderOpenAI:
		kind := costing.OpenAIKind(path)
		return optimize.Body{Provider: route.Provider, Kind: kind}, kind != ""
	case policy.ProviderAnthropic:
		return optimize.Body{Provider: route.Provider, Kind: optimize.KindMessages}, strings.HasSuffix(path, "/messages")
	}
	return optimize.Body{}, false
}

// editPlan is what the rules that match a call ask for: the edits, and
// which rule asked for each strategy (by index in the policy's list, plus
// one; 0 for none), so that a report names only the rules whose edits
// changed the call. It allocates nothing when no rule edits.
type editPlan struct {
	edits    []optimize.Edit
	by       [numStrategies]int // the rule of each strategy
	fit      int                // the first fit_pool rule
	fallback policy.FlexFallback
}

const numStrategies = 5

func strategyIndex(s optimize.Strategy) int {
	switch s {
	case optimize.Downgrade:
		return 0
	case optimize.Flex:
		return 1
	case optimize.TokenCap:
		return 2
	case optimize.PromptCache:
		return 3
	}
	return 4 // Compact
}

// names lists the rules whose edits changed the call (applied), and the
// fit_pool rule when fitted, in policy order.
func (p *editPlan) names(set *policy.Set, applied []optimize.Applied, fitted bool) []string {
	var idx []int
	for _, a := range applied {
		if i := p.by[strategyIndex(a.Strategy)]; i > 0 && !slices.Contains(idx, i) {
			idx = append(idx, i)
		}
	}
	if fitted && p.fit > 0 && !slices.Contains(idx, p.fit) {
		idx = append(idx, p.fit)
	}
	slices.Sort(idx)
	out := make([]string, len(idx))
	for k, i := range idx {
		out[k] = set.Optimize.Rules[i-1].Name
	}
	return out
}

// planEdits picks the edits of the rules that match a call, first rule
// first: one downgrade (only to a model cheaper on input and output than
// the one asked for), flex (where the model that will run has flex prices
// and flex is not paused for it), the smallest token cap, prompt caching,
// and compaction; and whether a fit_pool rule matched.
func (s *Service) planEdits(set *policy.Set, ctx policy.OptimizeContext, provider policy.Provider) editPlan {
	var (
		p        = editPlan{fallback: policy.FlexStandard}
		down     string
		flex     bool
		capAt    int64
		cache    int64 = -1
		compact  bool
		modelNow = ctx.Model
	)
	for i, r := range set.Optimize.Rules {
		if !r.Matches(ctx) {
			continue
		}
		if r.Downgrade != "" && down == "" && cheaper(set, r.Downgrade, ctx.Model) {
			down, modelNow, p.by[0] = r.Downgrade, r.Downgrade, i+1
		}
		if r.Flex && !flex && provider == policy.ProviderOpenAI {
			flex, p.fallback, p.by[1] = true, r.FlexRefused, i+1
		}
		if r.MaxOutputTokens > 0 && (capAt == 0 || r.MaxOutputTokens < capAt) {
			capAt, p.by[2] = r.MaxOutputTokens, i+1
		}
		if r.FitPool && p.fit == 0 {
			p.fit = i + 1
		}
		if r.PromptCache && cache < 0 && provider == policy.ProviderAnthropic {
			cache, p.by[3] = r.MinPrefixTokens, i+1
		}
		if r.Compact && !compact {
			compact, p.by[4] = true, i+1
		}
	}
	// Text edits first: their effect is measured at the model asked for.
	if compact {
		p.edits = append(p.edits, optimize.Edit{Strategy: optimize.Compact})
	}
	if cache >= 0 {
		p.edits = append(p.edits, optimize.Edit{Strategy: optimize.PromptCache, MinPrefixTokens: cache})
	}
	if down != "" {
		p.edits = append(p.edits, optimize.Edit{Strategy: optimize.Downgrade, Model: down})
	}
	if flex {
		if m, _ := set.Model(modelNow); m != nil && m.HasFlex && !s.flex.paused(modelNow, s.clock.Now()) {
			p.edits = append(p.edits, optimize.Edit{Strategy: optimize.Flex})
		}
	}
	if capAt > 0 {
		p.edits = append(p.edits, optimize.Edit{Strategy: optimize.TokenCap, MaxTokens: capAt})
	}
	return p
}

// cheaper reports whether model to is priced, and no dearer on input or
// output than from (a downgrade never upgrades, whatever the rule says).
func cheaper(set *policy.Set, to, from string) bool {
	if from == "" || to == from {
		return false
	}
	t, tk := set.Model(to)
	f, fk := set.Model(from)
	return tk && fk && t != f && t.Input.Cmp(f.Input) <= 0 && t.Output.Cmp(f.Output) <= 0
}

// optimizeCall applies the optimize rules to call; it returns the call to
// estimate (the rewritten one), its route (a downgraded model may match
// another) and what was done, or the call unchanged and nil. fit names a
// fit_pool rule that matched (its index plus one; 0: none): the caller checks the estimate against the pools
// (fitToPool). A call no rule changes costs the rules' matching alone.
func (s *Service) optimizeCall(set *policy.Set, r *Request, path string, route *policy.Route, client *policy.Client,
	class policy.Class, call costing.Call) (_ costing.Call, _ *policy.Route, _ *optimized, fit int) {
	if len(set.Optimize.Rules) == 0 || r.BodySize > int64(len(r.Body)) {
		return call, route, nil, 0 // nothing to do, or only the start of the body to do it on
	}
	kind, ok := optimizeKind(route, path)
	if !ok {
		return call, route, nil, 0
	}
	model := call.Model()
	pressure := s.pressure.get(client.ID)
	ctx := policy.OptimizeContext{Tier: client.Tier.Name, Client: client.ID, Route: route.Name, Model: model, Class: class,
		PressurePercent: pressure, Aggressive: set.Optimize.IsAggressive(client.Tier.Name, client.ID, pressure),
		OptedOut: strings.EqualFold(strings.TrimSpace(r.Headers[HeaderOptimize]), "off")}
	p := s.planEdits(set, ctx, route.Provider)
	fit = p.fit
	if len(p.edits) == 0 {
		return call, route, nil, fit
	}
	kind.CountTokens = s.counter(model)
	out, applied, err := optimize.Apply(kind, r.Body, p.edits)
	if err != nil {
		s.m.optimizeErrors.Inc()
		return call, route, nil, 0 // a body the rewriters refuse goes as it is
	}
	if len(applied) == 0 {
		return call, route, nil, fit
	}
	o := &optimized{body: kind, plan: p, rules: p.names(set, applied, false), fallback: p.fallback, edits: p.edits, applied: applied}
	o.orig = s.est.Estimate(set, route, call)
	if o.did(optimize.Compact) {
		o.removed = s.compactedAway(set, route, call, kind, o.orig)
	}
	next := costing.NewCall(call.Path, call.ContentType, out, int64(len(out)))
	if o.did(optimize.Downgrade) {
		if rt := set.MatchRoute(r.Host, path, next.Model()); rt != nil {
			route = rt
		}
	}
	return next, route, o, fit
}

// count counts a decided call's rewrites (an analysis counts none).
func (o *optimized) count(m *metrics, tier string) {
	for _, a := range o.applied {
		m.optimized.WithLabelValues(string(a.Strategy), tier).Inc()
	}
}

// fitToPool lowers the output allowance of a call estimated as est that
// can never fit the smallest token bucket it charges to what that bucket
// can hold (the fit_pool rule fit, an index plus one), and returns the
// call and its record; ok is false when the call fits already, or cannot
// (its input alone is too large, or its body cannot be read). A call that
// fits costs a walk over its pools, nothing allocated.
func (s *Service) fitToPool(set *policy.Set, route *policy.Route, client *policy.Client, call costing.Call, est costing.Estimate,
	o *optimized, fit int) (_ costing.Call, _ *optimized, ok bool) {
	if !est.Exact {
		return call, o, false
	}
	room := int64(-1)
	for _, pc := range est.Pools { // the buckets takes() charges: each pool, and the client's share of it
		if pc.Pool.Unit != policy.UnitToken {
			continue
		}
		c := pc.Pool.Limit.Capacity
		if len(pc.Pool.Reserved) > 0 { // split: the largest part the client may spend
			c = 0
			parts, _ := choices(pc.Pool, client)
			for _, t := range parts {
				c = max(c, t.Limit.Capacity)
			}
		}
		if cl, ok := client.Tier.ClientLimits[pc.Pool.Name]; ok {
			c = min(c, cl.Capacity)
		}
		if room < 0 || c < room {
			room = c
		}
	}
	if room < 0 || satAdd(est.InputTokens, est.OutputTokens) <= room {
		return call, o, false
	}
	perChoice := (room - est.InputTokens) / max(est.N, 1)
	if perChoice < 1 {
		return call, o, false
	}
	kind, _ := optimizeKind(route, call.Path)
	edit := optimize.Edit{Strategy: optimize.TokenCap, MaxTokens: perChoice}
	out, applied, err := optimize.Apply(kind, call.Body, []optimize.Edit{edit})
	if err != nil || len(applied) == 0 {
		return call, o, false
	}
	if o == nil {
		o = &optimized{body: kind, orig: est, fallback: policy.FlexStandard}
	}
	o.plan.fit = fit
	o.edits, o.applied = append(o.edits, edit), append(o.applied, applied...)
	o.rules = o.plan.names(set, o.applied, true)
	return costing.NewCall(call.Path, call.ContentType, out, int64(len(out))), o, true
}

// satAdd adds two non-negative counts, saturating.
func satAdd(a, b int64) int64 {
	if a > math.MaxInt64-b {
		return math.MaxInt64
	}
	return a + b
}

// counter counts text with model's encoding, for prompt caching's shortest
// prefix.
func (s *Service) counter(model string) func(string) int64 {
	tok := s.est.Tok
	if tok == nil {
		return func(text string) int64 { return int64(len(text)) / costing.BytesPerToken }
	}
	enc := costing.EncodingFor(model)
	return func(text string) int64 { return tok.Count(enc, text) }
}

// compactedAway counts the input tokens compaction removed: the call's
// count less that of its body after compaction alone, at the same model.
func (s *Service) compactedAway(set *policy.Set, route *policy.Route, call costing.Call, kind optimize.Body, orig costing.Estimate) int64 {
	out, _, err := optimize.Apply(kind, call.Body, []optimize.Edit{{Strategy: optimize.Compact}})
	if err != nil {
		return 0
	}
	e := s.est.Estimate(set, route, costing.NewCall(call.Path, call.ContentType, out, int64(len(out))))
	return max(orig.InputTokens-e.InputTokens, 0)
}

// savings is what each strategy saved on a call that used u, in the order
// the strategies apply: the call as the worker sent it, priced step by
// step toward the call that ran, each step's difference booked to its
// strategy; they add up to the first price less the last exactly. Token
// caps save nothing measurable (the output not produced is unknown).
func savings(set *policy.Set, o *optimized, ran costing.Estimate, u costing.Usage) []limiter.Saving {
	if o == nil {
		return nil
	}
	from, _ := set.Model(o.orig.Model)
	to, _ := set.Model(ran.Model)
	if from == nil || to == nil || o.orig.PriceEntry == "" || ran.PriceEntry == "" {
		return nil // priced by pools, not by the model: nothing to compare
	}
	// u0 is the usage as the worker's call would have had it: the tokens
	// compaction removed back in, and without the cache Tollgate marked.
	u0 := u
	u0.InputTokens += o.removed
	if o.did(optimize.PromptCache) {
		u0.CachedInputTokens, u0.CacheWriteTokens = 0, 0
	}
	uc := u // with the cache, before compaction
	uc.InputTokens += o.removed
	price := func(m *policy.Model, flex bool, u costing.Usage) policy.Money {
		in, out := costing.TokenCost(m, flex, u)
		return in + out
	}
	c0 := price(from, o.orig.Flex, u0)
	c1 := price(to, o.orig.Flex, u0)
	c2 := price(to, ran.Flex, u0)
	c3 := price(to, ran.Flex, uc)
	c4 := price(to, ran.Flex, u)
	var out []limiter.Saving
	add := func(s optimize.Strategy, v policy.Money) {
		if o.did(s) {
			out = append(out, limiter.Saving{Strategy: string(s), Amount: v})
		}
	}
	add(optimize.Downgrade, c0-c1)
	add(optimize.Flex, c1-c2)
	add(optimize.PromptCache, c2-c3)
	add(optimize.Compact, c3-c4)
	return out
}
