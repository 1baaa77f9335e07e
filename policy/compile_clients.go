package policy

import "strings"

// MaxBudget bounds a monthly budget ($9 million): the Redis scripts keep
// money in Lua numbers, exact below 2^53 nano-dollars.
const MaxBudget = 9_000_000 * NanosPerDollar

// tierDoc is a tiers: entry as written.
type tierDoc struct {
	file, name    string
	line          int
	priority      at[int64]
	maxConcurrent at[int64]
	budget        at[string]
	maxClass      at[string]
	limits        []limitDoc
}

// limitDoc is a tier's client_limits: entry, keyed by pool.
type limitDoc struct {
	pool     string
	line     int
	capacity at[int64]
	refill   at[rate]
}

// clientDoc is a clients: entry as written.
type clientDoc struct {
	file, id string
	line     int
	tier     at[string]
	budget   at[string]
	parent   at[string]
}

func readTier(m *mapNode, name string, line int) tierDoc {
	return tierDoc{
		file: m.d.file, name: name, line: line,
		priority: m.int("priority"), maxConcurrent: m.int("max_concurrent"), budget: m.scalarText("monthly_budget"),
		maxClass: m.str("max_class"),
		limits:   readSection(m, "client_limits", readLimit),
	}
}

func readLimit(m *mapNode, pool string, line int) limitDoc {
	return limitDoc{pool: pool, line: line, capacity: m.int("capacity"), refill: m.refill()}
}

func readClient(m *mapNode, id string, line int) clientDoc {
	return clientDoc{
		file: m.d.file, id: id, line: line, tier: m.str("tier"), budget: m.scalarText("monthly_budget"),
		parent: m.str("parent"),
	}
}

func (c *compiler) tiers(docs []tierDoc) {
	for _, t := range docs {
		if !c.unique("tier", t.name, t.file, t.line) {
			continue
		}
		c.set.Tiers[t.name] = c.tier(t)
	}
}

func (c *compiler) tier(t tierDoc) *Tier {
	path := "tiers." + t.name
	tier := &Tier{Name: t.name, Priority: int(t.priority.v), MaxConcurrent: t.maxConcurrent.v, ClientLimits: map[string]Limit{}}
	tier.MaxClass = c.class(t.file, path+".max_class", t.maxClass, Immediate)
	if t.priority.missing() {
		c.add(t.file, t.line, path+".priority", "is required (0 to 40 points)")
	} else if t.priority.set && (t.priority.v < 0 || t.priority.v > 40) {
		c.add(t.file, t.priority.line, path+".priority", "must be between 0 and 40, got %d", t.priority.v)
	}
	if t.maxConcurrent.missing() {
		c.add(t.file, t.line, path+".max_concurrent", "is required (calls in flight per client)")
	} else if t.maxConcurrent.set && t.maxConcurrent.v <= 0 {
		c.add(t.file, t.maxConcurrent.line, path+".max_concurrent", "must be positive, got %d", t.maxConcurrent.v)
	}
	if t.budget.set && !strings.EqualFold(t.budget.v, "custom") {
		tier.MonthlyBudget = c.budget(t.file, path+".monthly_budget", t.budget, " (or \"custom\" for a per-client budget)")
		tier.Budgeted = true
	}
	for _, l := range t.limits {
		lp := path + ".client_limits." + l.pool
		if _, ok := c.set.Pools[l.pool]; !ok {
			c.add(t.file, l.line, lp, "pool %q does not exist%s", l.pool, known(c.set.Pools))
			continue
		}
		tier.ClientLimits[l.pool] = c.limit(t.file, l.line, lp, l.capacity, l.refill)
	}
	return tier
}

// budget reads a monthly budget; hint follows a parse error, to say what
// else the field accepts.
func (c *compiler) budget(file, path string, v at[string], hint string) Money {
	m, err := ParseMoney(v.v)
	switch {
	case err != nil:
		c.add(file, v.line, path, "%v%s", err, hint)
	case m < 0:
		c.add(file, v.line, path, "must not be negative, got %s", v.v)
	case m > MaxBudget:
		c.add(file, v.line, path, "must be at most $%s, got %s", MaxBudget, v.v)
	}
	return m
}

// clients compiles the clients, then links each to its parent: a parent
// may be defined after its child, in any file.
func (c *compiler) clients(docs []clientDoc) {
	for _, d := range docs {
		if !c.unique("client", d.id, d.file, d.line) {
			continue
		}
		if err := ValidClientID(d.id); err != nil {
			c.add(d.file, d.line, "clients."+d.id, "%v; a call can never name such a client", err)
		}
		c.set.Clients[d.id] = c.client(d)
	}
	for _, d := range docs {
		c.linkParent(d)
	}
	for _, d := range docs {
		c.breakParentLoop(d)
	}
}

func (c *compiler) client(d clientDoc) *Client {
	path := "clients." + d.id
	cl := &Client{ID: d.id}
	switch t, ok := c.set.Tiers[d.tier.v]; {
	case d.tier.missing():
		c.add(d.file, d.line, path+".tier", "is required%s", known(c.set.Tiers))
	case !d.tier.set: // present but unreadable, already reported
	case ok:
		cl.Tier = t
	default:
		c.add(d.file, d.tier.line, path+".tier", "tier %q does not exist%s", d.tier.v, known(c.set.Tiers))
	}
	if d.budget.set {
		cl.MonthlyBudget, cl.Budgeted = c.budget(d.file, path+".monthly_budget", d.budget, ""), true
	}
	return cl
}

func (c *compiler) linkParent(d clientDoc) {
	cl := c.set.Clients[d.id]
	if !d.parent.set || cl == nil {
		return
	}
	path := "clients." + d.id + ".parent"
	p, ok := c.set.Clients[d.parent.v]
	switch {
	case !ok:
		c.add(d.file, d.parent.line, path, "client %q does not exist%s", d.parent.v, known(c.set.Clients))
	case p == cl:
		c.add(d.file, d.parent.line, path, "a client cannot be its own parent")
	default:
		cl.Parent = p
	}
}

// breakParentLoop refuses a parent chain that loops: a budget chain would be
// endless.
func (c *compiler) breakParentLoop(d clientDoc) {
	cl := c.set.Clients[d.id]
	if cl == nil || cl.Parent == nil {
		return
	}
	seen := map[*Client]bool{cl: true}
	for p := cl.Parent; p != nil; p = p.Parent {
		if seen[p] {
			c.add(d.file, d.parent.line, "clients."+d.id+".parent", "the parent chain loops back to %q", p.ID)
			cl.Parent = nil // break the loop so nothing walks it forever
			return
		}
		seen[p] = true
	}
}
