package policy

import (
	"fmt"
	"slices"
	"strconv"
	"strings"
)

// optimizeDoc is an optimize: block as written; several files may each add
// rules, and one of them may say when clients turn aggressive.
type optimizeDoc struct {
	file       string
	line       int
	aggressive *aggressiveDoc
	rules      []ruleDoc
}

type aggressiveDoc struct {
	line           int
	tiers, clients at[[]string]
	above          at[string]
}

// ruleDoc is one optimize.rules item as written.
type ruleDoc struct {
	file, name                          string
	line                                int
	nameAt                              at[string]
	when                                *whenDoc
	downgrade, flexRefused              at[string]
	flex, fitPool, promptCache, compact at[bool]
	forced                              at[bool]
	maxOutput, minPrefix                at[int64]
}

type whenDoc struct {
	line                                    int
	tiers, clients, routes, classes, models at[[]string]
	pressure                                at[string]
	aggressive                              at[bool]
}

func readOptimize(m *mapNode, line int) optimizeDoc {
	o := optimizeDoc{file: m.d.file, line: line}
	if a, ok := readBlock(m, "aggressive", readAggressive); ok {
		o.aggressive = &a
	}
	o.rules, _ = readList(m, "rules", "rules such as - {name: batch-to-mini, when: {classes: [batch]}, downgrade: gpt-4o-mini}", readRule)
	return o
}

func readAggressive(m *mapNode, line int) aggressiveDoc {
	return aggressiveDoc{line: line, tiers: m.strs("tiers"), clients: m.strs("clients"), above: m.scalarText("above")}
}

func readRule(m *mapNode, line int) ruleDoc {
	r := ruleDoc{file: m.d.file, line: line, nameAt: m.str("name")}
	r.name = r.nameAt.v
	if w, ok := readBlock(m, "when", readWhen); ok {
		r.when = &w
	}
	r.downgrade, r.flex, r.flexRefused = m.str("downgrade"), m.bool("flex"), m.str("flex_refused")
	r.maxOutput, r.fitPool = m.int("max_output_tokens"), m.bool("fit_pool")
	r.promptCache, r.minPrefix = m.bool("prompt_cache"), m.int("min_prefix_tokens")
	r.compact, r.forced = m.bool("compact"), m.bool("forced")
	return r
}

func readWhen(m *mapNode, line int) whenDoc {
	return whenDoc{line: line, tiers: m.strs("tiers"), clients: m.strs("clients"), routes: m.strs("routes"),
		classes: m.strs("classes"), models: m.strs("models"), pressure: m.scalarText("pressure_above"),
		aggressive: m.bool("aggressive")}
}

// optimize compiles the rules after pools, routes, tiers, clients and
// models, which they name.
func (c *compiler) optimize(docs []optimizeDoc) {
	out := &Optimize{}
	once := newOnceOnly(&c.errList, "optimize")
	for _, d := range docs {
		if a := d.aggressive; a != nil && once.first(d.file, a.line, "aggressive") {
			out.AggressiveTiers = c.names(d.file, "optimize.aggressive.tiers", a.tiers, "tier", c.set.Tiers)
			out.AggressiveClients = c.clientNames(d.file, "optimize.aggressive.clients", a.clients)
			if a.above.set {
				out.AggressiveAbove = c.percent(d.file, "optimize.aggressive.above", a.above)
			}
		}
		for i, rd := range d.rules {
			path := fmt.Sprintf("optimize.rules[%d]", i)
			if rd.name == "" {
				c.add(d.file, rd.line, path+".name", "is required (a name for policy check, metrics and the optimize API)")
				continue
			}
			if !c.unique("rule", rd.name, d.file, rd.line) {
				continue
			}
			out.Rules = append(out.Rules, c.rule("optimize.rules."+rd.name, rd))
		}
	}
	c.set.Optimize = out
}

func (c *compiler) rule(path string, rd ruleDoc) *OptimizeRule {
	r := &OptimizeRule{Name: rd.name, Line: rd.line, File: rd.file, Downgrade: rd.downgrade.v, Flex: rd.flex.v,
		FlexRefused: FlexStandard, MaxOutputTokens: rd.maxOutput.v, FitPool: rd.fitPool.v, PromptCache: rd.promptCache.v,
		MinPrefixTokens: DefaultMinPrefixTokens, Compact: rd.compact.v, Forced: rd.forced.v}
	if w := rd.when; w != nil {
		wp := path + ".when"
		r.Tiers = c.names(rd.file, wp+".tiers", w.tiers, "tier", c.set.Tiers)
		r.Clients = c.clientNames(rd.file, wp+".clients", w.clients)
		r.Routes = c.routeNames(rd.file, wp+".routes", w.routes)
		for _, name := range w.classes.v {
			if cls, ok := ParseClass(name); ok {
				r.Classes = append(r.Classes, cls)
			} else {
				c.add(rd.file, w.classes.line, wp+".classes", "unknown class %q (one of %s)", name, strings.Join(classNames[:], ", "))
			}
		}
		r.Models = w.models.v
		for _, m := range r.Models {
			if m == "" || strings.Contains(strings.TrimSuffix(m, "*"), "*") {
				c.add(rd.file, w.models.line, wp+".models", "a model is a name or a prefix ending in *, got %q", m)
			}
		}
		if w.pressure.set {
			r.PressureAbove = c.percent(rd.file, wp+".pressure_above", w.pressure)
		}
		r.Aggressive = w.aggressive.v
	}
	if rd.downgrade.set {
		c.downgradeTarget(rd.file, path+".downgrade", rd.downgrade)
	}
	if rd.flexRefused.set {
		if fb := FlexFallback(rd.flexRefused.v); slices.Contains(flexFallbacks, fb) {
			r.FlexRefused = fb
		} else {
			c.add(rd.file, rd.flexRefused.line, path+".flex_refused", "must be one of %s, got %q", joinNames(flexFallbacks), rd.flexRefused.v)
		}
		if !r.Flex {
			c.add(rd.file, rd.flexRefused.line, path+".flex_refused", "applies only to a rule with flex: true")
		}
	}
	if rd.maxOutput.set && (rd.maxOutput.v <= 0 || rd.maxOutput.v > MaxCapacity) {
		c.add(rd.file, rd.maxOutput.line, path+".max_output_tokens", "must be between 1 and %d, got %d", MaxCapacity, rd.maxOutput.v)
	}
	if rd.minPrefix.set {
		if rd.minPrefix.v <= 0 || rd.minPrefix.v > MaxCapacity {
			c.add(rd.file, rd.minPrefix.line, path+".min_prefix_tokens", "must be between 1 and %d, got %d", MaxCapacity, rd.minPrefix.v)
		} else {
			r.MinPrefixTokens = rd.minPrefix.v
		}
		if !r.PromptCache {
			c.add(rd.file, rd.minPrefix.line, path+".min_prefix_tokens", "applies only to a rule with prompt_cache: true")
		}
	}
	if r.Downgrade == "" && !r.Flex && r.MaxOutputTokens == 0 && !r.FitPool && !r.PromptCache && !r.Compact {
		c.add(rd.file, rd.line, path, "does nothing: give it downgrade, flex, max_output_tokens, fit_pool, prompt_cache or compact")
	}
	return r
}

// downgradeTarget checks that a downgrade goes to a model an entry of
// models: prices by name: "*" would price an unknown model as a flagship,
// and a typo would send calls to a model that does not exist.
func (c *compiler) downgradeTarget(file, path string, v at[string]) {
	if v.v == "" || strings.Contains(v.v, "*") {
		c.add(file, v.line, path, "must be a model name, got %q", v.v)
		return
	}
	if m, ok := c.set.Model(v.v); !ok || m.Name == "*" {
		c.add(file, v.line, path, "model %q is not priced by any entry of models: (other than \"*\"); a downgrade goes only to a priced model", v.v)
	}
}

// names checks that each name is one of known's keys.
func (c *compiler) names(file, path string, v at[[]string], kind string, known map[string]*Tier) []string {
	for _, n := range v.v {
		if _, ok := known[n]; !ok {
			c.add(file, v.line, path, "%s %q does not exist", kind, n)
		}
	}
	return v.v
}

// clientNames checks client ids: they need not be listed (an unknown client
// gets the default tier), but they must be ids a call can carry.
func (c *compiler) clientNames(file, path string, v at[[]string]) []string {
	for _, n := range v.v {
		if err := ValidClientID(n); err != nil {
			c.add(file, v.line, path, "%v", err)
		}
	}
	return v.v
}

func (c *compiler) routeNames(file, path string, v at[[]string]) []string {
	for _, n := range v.v {
		if !slices.ContainsFunc(c.set.Routes, func(r *Route) bool { return r.Name == n }) {
			c.add(file, v.line, path, "route %q does not exist", n)
		}
	}
	return v.v
}

// percent reads "80%" (or 80) as a whole percent between 1 and 100.
func (c *compiler) percent(file, path string, v at[string]) int64 {
	s := strings.TrimSpace(strings.TrimSuffix(strings.TrimSpace(v.v), "%"))
	n, err := strconv.ParseInt(s, 10, 64)
	if err != nil || n < 1 || n > 100 {
		c.add(file, v.line, path, "must be a whole percent between 1%% and 100%%, such as \"80%%\", got %q", v.v)
		return 0
	}
	return n
}
