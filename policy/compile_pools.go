package policy

import "slices"

// MaxCapacity bounds a bucket's capacity and its refill a second so that
// bucket arithmetic (micro-units, microseconds) stays exact in int64 and in
// Redis's Lua numbers (2^53). A rate that is no whole number of units a
// second keeps levels in finer parts (10000/min, 500 every 3 s, in thirds
// of a micro-unit), so its capacity times that denominator is bounded
// instead: at most MaxCapacity/3 for 10000/min, MaxCapacity/86400 for 1/d.
const MaxCapacity = 1_000_000_000

// poolDoc is a pools: entry as written.
type poolDoc struct {
	file, name string
	line       int
	unit       at[string]
	capacity   at[int64]
	refill     at[rate]
	price      at[string]
	shadow     at[bool]
	reserved   []reserveDoc
	dedicated  *dedicatedDoc
}

func readPool(m *mapNode, name string, line int) poolDoc {
	p := poolDoc{
		file: m.d.file, name: name, line: line,
		unit: m.str("unit"), capacity: m.int("capacity"), refill: m.refill(),
		price: m.scalarText("price"), shadow: m.bool("shadow"),
	}
	p.reserved, _ = readList(m, "reserved", "reservations such as - {tier: enterprise, share: 30%}", readReserve)
	if d, ok := readBlock(m, "dedicated", readDedicated); ok {
		p.dedicated = &d
	}
	return p
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
	if p.dedicated != nil {
		// Marked now, so that routes (compiled next) can refuse to name
		// it; its client and pool are checked once clients are known.
		pool.Dedicated = &Dedicated{Client: p.dedicated.client.v}
	}
	return pool
}

// limit checks a bucket's shape (a pool's, or a tier's limit per client);
// line is the owner's, for a field that is missing.
func (c *compiler) limit(file string, line int, path string, capacity at[int64], refill at[rate]) Limit {
	capOK := false
	switch {
	case capacity.bad:
	case !capacity.set:
		c.add(file, line, path+".capacity", "is required")
	case capacity.v <= 0:
		c.add(file, capacity.line, path+".capacity", "must be positive, got %d", capacity.v)
	case capacity.v > MaxCapacity:
		c.add(file, capacity.line, path+".capacity", "must be at most %d, got %d", MaxCapacity, capacity.v)
	default:
		capOK = true
	}
	r := refill.v
	switch {
	case refill.bad:
	case !refill.set:
		c.add(file, line, path+".refill_per_second", "is required (or refill, a rate such as 10000/min)")
	case r.refill <= 0: // refill_per_second: a rate is refused as it is read
		c.add(file, refill.line, path+"."+r.key, "must be positive, got %d", r.refill)
	case r.key == "refill_per_second" && r.refill > MaxCapacity: // a rate above it is refused as it is read
		c.add(file, refill.line, path+"."+r.key, "must be at most %d, got %d", MaxCapacity, r.refill)
	default:
		l := Limit{Capacity: capacity.v, Refill: r.refill, Per: r.per}
		if most := MaxCapacity / l.den(); capOK && capacity.v > most {
			c.add(file, capacity.line, path+".capacity", "must be at most %d with refill %s, got %d: a bucket of this rate "+
				"is kept in 1/%d parts of a micro-unit, so capacity × %d must stay within %d",
				most, l.Rate(), capacity.v, l.den(), l.den(), MaxCapacity)
		}
		return l
	}
	return Limit{Capacity: capacity.v}
}
