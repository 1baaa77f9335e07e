package admission

import (
	"container/list"
	"math"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/tollgate/tollgate/costing"
	"github.com/tollgate/tollgate/policy"
)

// The observation book: what each client's LLM calls did this budget
// period, as this process settled them from their usage, kept for the
// optimize API (the rewrites counted, and recommendations computed from
// the calls observed). A line per client, route, model (the one that ran)
// and class holds the calls, their tokens and spend, how many wrote fewer
// than shortOutputTokens, which strategies had rewritten them, and what a
// downgrade or flex would have saved them: summed call by call at settle,
// each call priced as it is billed (rounded up to the nano-dollar), so that
// the figures are exact, not recomputed from token sums.
//
// It is bounded: at most maxClients clients (the least recently settled is
// forgotten to make room) and maxKeys lines each (the least recently
// settled line likewise), and a model name is cut to maxObservedModelLen
// bytes. It keeps one period: the first call settled in a new period (or
// a read in one) starts it empty. It is in memory and per process: a
// restart forgets it, and in a fleet each member sees its own calls.

// shortOutputTokens is the output below which a call is "short": the
// calls a smaller model most likely serves as well.
const shortOutputTokens = 300

// Bounds of the book (see above): 1,024 clients × 32 lines of a few
// hundred bytes is at most about 10 MB.
const (
	maxObservedClients  = 1024
	maxObservedKeys     = 32
	maxObservedModelLen = 64
)

// obsKey names one line of a client's observations.
type obsKey struct {
	route, model string
	class        policy.Class
}

// obsLine is what the calls of one key did.
type obsLine struct {
	calls, short          int64
	input, cached, output int64
	spent                 policy.Money
	rewritten             map[string]int64 // calls rewritten, by strategy
	// downTo is the cheaper model the short calls would have gone to;
	// downSaved what the downCalls short calls cost less what they would
	// have cost at downTo. A policy change that names another target
	// starts the sum afresh.
	downTo    string
	downCalls int64
	downSaved policy.Money
	// flexSaved is what flexCalls batch and deferred calls, sent at the
	// standard tier of a model with flex prices, cost less their price
	// at flex.
	flexCalls int64
	flexSaved policy.Money
	provider  policy.Provider
	seen      uint64 // the book's count at this line's latest call
}

// clientObs is one client's lines.
type clientObs struct {
	id       string
	lines    map[obsKey]*obsLine
	calls    int64
	rewrites map[string]int64 // calls rewritten, by strategy, whatever line they were on
	elem     *list.Element
}

// observeBook is the observation book. It is safe for concurrent use.
type observeBook struct {
	mu                  sync.Mutex
	maxClients, maxKeys int
	period              string
	clients             map[string]*clientObs
	lru                 *list.List // of *clientObs, the most recently settled first
	seq                 uint64
}

func newObserveBook(maxClients, maxKeys int) *observeBook {
	return &observeBook{maxClients: max(maxClients, 1), maxKeys: max(maxKeys, 1), clients: map[string]*clientObs{}, lru: list.New()}
}

// note books a call settled at now with usage u and price a; rewritten
// says the optimizer's edits went out with it (else it ran as the worker
// sent it). Only calls on routes with token pools are kept.
func (b *observeBook) note(now time.Time, p *pendingCall, u costing.Usage, a costing.Actual, rewritten bool) {
	if b == nil || p.route == nil || !p.route.LLM() {
		return
	}
	k, l, did := observation(p, u, a, rewritten)
	b.add(p.set.Defaults.Period(now), p.client, k, l, did)
}

// observation prices one settled call for the book, outside its lock.
func observation(p *pendingCall, u costing.Usage, a costing.Actual, rewritten bool) (obsKey, obsLine, []string) {
	est := p.est
	var did []string
	if p.opt != nil {
		if rewritten {
			did = p.opt.strategies()
		} else {
			est = p.opt.orig // it went as the worker sent it
		}
	}
	model := est.Model
	if model == "" {
		model = est.PriceEntry
	}
	if len(model) > maxObservedModelLen {
		model = model[:maxObservedModelLen]
	}
	k := obsKey{route: p.route.Name, model: model, class: p.class}
	l := obsLine{calls: 1, input: u.InputTokens, cached: u.CachedInputTokens, output: u.OutputTokens, spent: a.Cost, provider: p.route.Provider}
	if u.OutputTokens < shortOutputTokens {
		l.short = 1
	}
	m := p.set.Models[est.PriceEntry]
	if m == nil {
		return k, l, did // priced by its pools: no model to compare
	}
	cost := func(m *policy.Model, flex bool) policy.Money {
		in, out := costing.TokenCost(m, flex, u)
		return sumSat(in, out)
	}
	ran := cost(m, est.Flex)
	if l.short == 1 {
		if to := downgradeTarget(p.set, est.Model, est.PriceEntry); to != "" {
			if tm, _ := p.set.Model(to); tm != nil {
				l.downTo, l.downCalls, l.downSaved = to, 1, ran-cost(tm, est.Flex)
			}
		}
	}
	if flexable(p.route, est, p.class, m) {
		l.flexCalls, l.flexSaved = 1, ran-cost(m, true)
	}
	return k, l, did
}

// flexable reports whether a call estimated as est could have gone at
// OpenAI's flex tier and did not: a batch or deferred call to chat
// completions or responses, at the standard tier of a model with flex
// prices.
func flexable(route *policy.Route, est costing.Estimate, class policy.Class, m *policy.Model) bool {
	return route.Provider == policy.ProviderOpenAI && (est.Kind == costing.KindChat || est.Kind == costing.KindResponses) &&
		(class == policy.Batch || class == policy.Deferred) && m.HasFlex && !est.Flex
}

// downgradeTarget names the model a call of model (priced by the policy's
// entry) could go to instead: the first optimize rule's downgrade target
// whose models match it, when cheaper on input and output; else a model
// of its family, an entry named <entry>-mini… or <entry>-nano… that is
// cheaper on input and output (a -mini before a -nano, then the shortest
// name); "" for none.
func downgradeTarget(set *policy.Set, model, entry string) string {
	for _, r := range set.Optimize.Rules {
		if r.Downgrade != "" && (len(r.Models) == 0 || slices.ContainsFunc(r.Models, func(p string) bool { return modelMatch(p, model) })) &&
			cheaper(set, r.Downgrade, model) {
			return r.Downgrade
		}
	}
	stem := strings.TrimSuffix(entry, "*")
	if stem == "" {
		return ""
	}
	best := ""
	for name := range set.Models {
		cand := strings.TrimSuffix(name, "*")
		rest, ok := strings.CutPrefix(cand, stem+"-")
		if !ok || !strings.HasPrefix(rest, "mini") && !strings.HasPrefix(rest, "nano") || !cheaper(set, cand, model) {
			continue
		}
		if best == "" || familyRank(cand, stem) < familyRank(best, stem) ||
			familyRank(cand, stem) == familyRank(best, stem) && (len(cand) < len(best) || len(cand) == len(best) && cand < best) {
			best = cand
		}
	}
	return best
}

// familyRank orders a family's smaller models: -mini before -nano.
func familyRank(name, stem string) int {
	if strings.HasPrefix(name, stem+"-mini") {
		return 0
	}
	return 1
}

// modelMatch reports whether a rule's model pattern (a name or "prefix*")
// matches model.
func modelMatch(pattern, model string) bool {
	if model == "" {
		return false
	}
	if p, ok := strings.CutSuffix(pattern, "*"); ok {
		return strings.HasPrefix(model, p)
	}
	return pattern == model
}

// add books one call's line under the lock.
func (b *observeBook) add(period, client string, k obsKey, l obsLine, did []string) {
	b.mu.Lock()
	defer b.mu.Unlock()
	b.turn(period)
	c := b.clients[client]
	if c == nil {
		if len(b.clients) >= b.maxClients {
			old := b.lru.Remove(b.lru.Back()).(*clientObs)
			delete(b.clients, old.id)
		}
		c = &clientObs{id: client, lines: map[obsKey]*obsLine{}, rewrites: map[string]int64{}}
		c.elem = b.lru.PushFront(c)
		b.clients[client] = c
	} else {
		b.lru.MoveToFront(c.elem)
	}
	b.seq++
	line := c.lines[k]
	if line == nil {
		if len(c.lines) >= b.maxKeys {
			var oldest obsKey
			least := uint64(math.MaxUint64)
			for key, ln := range c.lines {
				if ln.seen < least {
					oldest, least = key, ln.seen
				}
			}
			delete(c.lines, oldest)
		}
		line = &obsLine{provider: l.provider, rewritten: map[string]int64{}}
		c.lines[k] = line
	}
	line.seen = b.seq
	line.calls = sumSat(line.calls, l.calls)
	line.short = sumSat(line.short, l.short)
	line.input = sumSat(line.input, l.input)
	line.cached = sumSat(line.cached, l.cached)
	line.output = sumSat(line.output, l.output)
	line.spent = sumSat(line.spent, l.spent)
	if l.downTo != "" {
		if line.downTo != l.downTo {
			line.downTo, line.downCalls, line.downSaved = l.downTo, 0, 0
		}
		line.downCalls = sumSat(line.downCalls, l.downCalls)
		line.downSaved = sumSat(line.downSaved, l.downSaved)
	}
	line.flexCalls = sumSat(line.flexCalls, l.flexCalls)
	line.flexSaved = sumSat(line.flexSaved, l.flexSaved)
	c.calls = sumSat(c.calls, 1)
	for _, s := range did {
		line.rewritten[s]++
		c.rewrites[s]++
	}
}

// turn empties the book when period is not the one it holds.
func (b *observeBook) turn(period string) {
	if period != b.period {
		b.period, b.clients, b.seq = period, map[string]*clientObs{}, 0
		b.lru.Init()
	}
}

// obsEntry is a copy of one line, for reports.
type obsEntry struct {
	key  obsKey
	line obsLine
}

// client returns copies of a client's lines in period, the calls it
// observed and its rewrites by strategy.
func (b *observeBook) client(period, id string) (entries []obsEntry, calls int64, rewrites map[string]int64) {
	b.mu.Lock()
	defer b.mu.Unlock()
	b.turn(period)
	rewrites = map[string]int64{}
	c := b.clients[id]
	if c == nil {
		return nil, 0, rewrites
	}
	for k, l := range c.lines {
		cp := *l
		cp.rewritten = make(map[string]int64, len(l.rewritten))
		for s, n := range l.rewritten {
			cp.rewritten[s] = n
		}
		entries = append(entries, obsEntry{key: k, line: cp})
	}
	for s, n := range c.rewrites {
		rewrites[s] = n
	}
	return entries, c.calls, rewrites
}

// size reports the clients and lines the book holds.
func (b *observeBook) size() (clients, lines int) {
	b.mu.Lock()
	defer b.mu.Unlock()
	for _, c := range b.clients {
		lines += len(c.lines)
	}
	return len(b.clients), lines
}

// sumSat adds two int64-based amounts, saturating rather than wrapping.
func sumSat[T ~int64](a, b T) T {
	s := a + b
	switch {
	case a > 0 && b > 0 && s < 0:
		return math.MaxInt64
	case a < 0 && b < 0 && s >= 0:
		return math.MinInt64
	}
	return s
}
