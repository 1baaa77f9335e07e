package policy

import "slices"

// MaxCapacity bounds a bucket's capacity and refill so that bucket
// arithmetic (micro-units, microseconds) stays exact in int64 and in Redis's
// Lua numbers (2^53).
const MaxCapacity = 1_000_000_000

// poolDoc is a pools: entry as written.
type poolDoc struct {
	file, name       string
	line             int
	unit             at[string]
	capacity, refill at[int64]
	price            at[string]
	shadow           at[bool]
}

func readPool(m *mapNode, name string, line int) poolDoc {
	return poolDoc{
		file: m.d.file, name: name, line: line,
		unit: m.str("unit"), capacity: m.int("capacity"), refill: m.refill(),
		price: m.scalarText("price"), shadow: m.bool("shadow"),
	}
}

// pools compiles the pools first: routes and tiers name them.
func (c *compiler) pools(docs []poolDoc) {
	for _, p := range docs {
		if !c.unique("pool", p.name, p.file, p.line) {
			continue
		}
		c.set.Pools[p.name] = c.pool(p)
	}
}

func (c *compiler) pool(p poolDoc) *Pool {
	path := "pools." + p.name
	pool := &Pool{Name: p.name, Unit: Unit(p.unit.v), Shadow: p.shadow.v}
	if p.unit.missing() {
		c.add(p.file, p.line, path+".unit", "is required (one of %s)", joinNames(units))
	} else if p.unit.set && !slices.Contains(units, pool.Unit) {
		c.add(p.file, p.unit.line, path+".unit", "unknown unit %q (one of %s)", p.unit.v, joinNames(units))
	}
	pool.Limit = c.limit(p.file, p.line, path, p.capacity, p.refill)
	if p.price.set {
		pr, err := ParsePrice(p.price.v)
		if err != nil {
			c.add(p.file, p.price.line, path+".price", "%v", err)
		}
		pool.Price = pr
	}
	return pool
}

// limit checks a bucket's shape (a pool's, or a tier's limit per client);
// line is the owner's, for a field that is missing.
func (c *compiler) limit(file string, line int, path string, capacity, refill at[int64]) Limit {
	for _, f := range []struct {
		key string
		v   at[int64]
	}{{"capacity", capacity}, {"refill_per_second", refill}} {
		switch {
		case f.v.bad:
		case !f.v.set:
			c.add(file, line, path+"."+f.key, "is required")
		case f.v.v <= 0:
			c.add(file, f.v.line, path+"."+f.key, "must be positive, got %d", f.v.v)
		case f.v.v > MaxCapacity:
			c.add(file, f.v.line, path+"."+f.key, "must be at most %d, got %d", MaxCapacity, f.v.v)
		}
	}
	return Limit{Capacity: capacity.v, Refill: refill.v}
}
