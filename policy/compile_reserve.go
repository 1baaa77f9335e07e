package policy

import (
	"fmt"
	"strconv"
	"strings"
)

// reserveDoc is one reserved: item of a pool as written.
type reserveDoc struct {
	line   int
	tier   at[string]
	client at[string]
	share  at[string]
	lend   at[string]
	keep   at[string]
}

// dedicatedDoc is a pool's dedicated: block as written.
type dedicatedDoc struct {
	line      int
	client    at[string]
	insteadOf at[string]
}

func readReserve(m *mapNode, line int) reserveDoc {
	return reserveDoc{line: line, tier: m.str("tier"), client: m.str("client"), share: m.scalarText("share"),
		lend: m.str("lend"), keep: m.scalarText("keep")}
}

func readDedicated(m *mapNode, line int) dedicatedDoc {
	return dedicatedDoc{line: line, client: m.str("client"), insteadOf: m.str("instead_of")}
}

// Lend modes of a reservation.
const (
	lendNever = "never"
	lendIdle  = "idle"
)

// defaultKeep is the percent of a lendable share never lent.
const defaultKeep = 50

// parsePercent reads a whole percent, "30%", between lo and hi.
func parsePercent(s string, lo, hi int64) (int64, error) {
	n, ok := strings.CutSuffix(strings.TrimSpace(s), "%")
	if !ok {
		return 0, fmt.Errorf("must be a whole percent such as 30%%, got %q", s)
	}
	v, err := strconv.ParseInt(n, 10, 64)
	if err != nil {
		return 0, fmt.Errorf("must be a whole percent such as 30%%, got %q", s)
	}
	if v < lo || v > hi {
		return 0, fmt.Errorf("must be between %d%% and %d%%, got %d%%", lo, hi, v)
	}
	return v, nil
}

// reservations compiles the pools' reserved: and dedicated: entries, once
// tiers and clients are known: they name them.
func (c *compiler) reservations(docs []poolDoc) {
	for _, d := range docs {
		p := c.set.Pools[d.name]
		if p == nil || c.defined["pool\x00"+d.name].file != d.file || c.defined["pool\x00"+d.name].line != d.line {
			continue // a duplicate, reported already
		}
		if d.dedicated != nil {
			c.dedicated(d, p)
		}
		if len(d.reserved) > 0 {
			c.reserved(d, p)
		}
	}
	c.dedicatedRoutes()
}

// reserved compiles a pool's reservations and splits its limit: each
// reservation gets floor(capacity·share/100) and floor(refill·share/100)
// over the pool's period (its keep/lend parts likewise, of the share), the
// shared part the rest, so that the parts always sum to the pool.
func (c *compiler) reserved(d poolDoc, p *Pool) {
	path := "pools." + d.name + ".reserved"
	if p.Dedicated != nil {
		c.add(d.file, d.reserved[0].line, path, "a dedicated pool is one client's already; it cannot reserve shares")
		return
	}
	owners := map[string]int{}
	var total int64
	ok := p.Limit.Capacity > 0 && p.Limit.Refill > 0
	for i, rd := range d.reserved {
		ipath := fmt.Sprintf("%s[%d]", path, i)
		r := &Reservation{Tier: rd.tier.v, Client: rd.client.v, Keep: defaultKeep}
		switch {
		case rd.tier.set == rd.client.set && !rd.tier.bad && !rd.client.bad:
			c.add(d.file, rd.line, ipath, "name exactly one owner: tier or client")
			ok = false
		case strings.Contains(r.Tier+r.Client, ReservedKeyPrefix):
			c.add(d.file, rd.line, ipath, "an owner's name may not hold %q (it names the reserved buckets)", ReservedKeyPrefix)
			ok = false
		case rd.tier.set:
			if _, found := c.set.Tiers[r.Tier]; !found {
				c.add(d.file, rd.tier.line, ipath+".tier", "tier %q does not exist%s", r.Tier, known(c.set.Tiers))
				ok = false
			}
		case rd.client.set:
			if _, found := c.set.Clients[r.Client]; !found {
				c.add(d.file, rd.client.line, ipath+".client", "client %q does not exist%s", r.Client, known(c.set.Clients))
				ok = false
			}
		default:
			ok = false
		}
		if rd.tier.set != rd.client.set {
			if prev, dup := owners[r.Owner()]; dup {
				c.add(d.file, rd.line, ipath, "%s already has a share of pool %q (reserved[%d])", r.Owner(), d.name, prev)
				ok = false
			}
			owners[r.Owner()] = i
		}
		switch {
		case rd.share.missing():
			c.add(d.file, rd.line, ipath+".share", "is required (a whole percent of the pool, such as 30%%)")
			ok = false
		case rd.share.set:
			v, err := parsePercent(rd.share.v, 1, 100)
			if err != nil {
				c.add(d.file, rd.share.line, ipath+".share", "%v", err)
				ok = false
			}
			r.Share = v
			total += v
		default:
			ok = false
		}
		if rd.lend.set {
			switch rd.lend.v {
			case lendNever:
			case lendIdle:
				r.Lend = true
			default:
				c.add(d.file, rd.lend.line, ipath+".lend", "unknown lend %q (one of %s, %s)", rd.lend.v, lendNever, lendIdle)
				ok = false
			}
		}
		if rd.keep.set {
			v, err := parsePercent(rd.keep.v, 1, 99)
			switch {
			case !r.Lend && !rd.lend.bad:
				c.add(d.file, rd.keep.line, ipath+".keep", "keep is the part of a lendable share never lent: it needs lend: idle")
				ok = false
			case err != nil:
				c.add(d.file, rd.keep.line, ipath+".keep", "%v", err)
				ok = false
			}
			r.Keep = v
		}
		p.Reserved = append(p.Reserved, r)
	}
	if total > 100 {
		c.add(d.file, d.reserved[0].line, path, "the shares of pool %q sum to %d%%, more than 100%%", d.name, total)
		ok = false
	}
	if !ok {
		p.Reserved = nil // no half-split pool: the errors stop the load anyway
		return
	}
	c.split(d, p)
}

// split cuts p's limit into its reservations' parts and the shared rest.
// Capacity and refill are cut alike, the refill over the rate's own
// period (10000/min: 3000/min reserved, 7000/min shared), each part rounded
// down and the shared part taking what is left, so that the parts always
// sum to the pool. A part left with no capacity or no refill is refused.
func (c *compiler) split(d poolDoc, p *Pool) {
	path := "pools." + d.name + ".reserved"
	units, secs := p.Limit.perPeriod()
	restCap, restUnits := p.Limit.Capacity, units
	check := func(ipath string, line int, what string, l Limit) {
		if l.Capacity <= 0 || l.Refill <= 0 {
			c.add(d.file, line, ipath, "%s gets capacity %d refilling %d every %ds of pool %q (capacity %d refilling %s): each part needs both",
				what, l.Capacity, l.Refill, secs, d.name, p.Limit.Capacity, p.Limit.Rate())
			return
		}
		if most := MaxCapacity / l.den(); l.Capacity > most {
			c.add(d.file, line, ipath, "%s gets capacity %d refilling %s: a part of this rate may hold at most %d", what, l.Capacity, l.Rate(), most)
		}
	}
	for i, r := range p.Reserved {
		ipath, line := fmt.Sprintf("%s[%d]", path, i), d.reserved[i].line
		shareCap, shareUnits := p.Limit.Capacity*r.Share/100, units*r.Share/100
		restCap, restUnits = restCap-shareCap, restUnits-shareUnits
		owner := ownerKey(r)
		if !r.Lend {
			r.Kept = Part{Key: owner, Limit: part(shareCap, shareUnits, secs)}
			check(ipath+".share", line, r.Owner(), r.Kept.Limit)
			continue
		}
		keptCap, keptUnits := shareCap*r.Keep/100, shareUnits*r.Keep/100
		r.Kept = Part{Key: owner + "#keep", Limit: part(keptCap, keptUnits, secs)}
		r.Lent = &Part{Key: owner + "#lend", Limit: part(shareCap-keptCap, shareUnits-keptUnits, secs)}
		check(ipath+".keep", line, r.Owner()+"'s kept part", r.Kept.Limit)
		check(ipath+".keep", line, r.Owner()+"'s lent part", r.Lent.Limit)
	}
	p.shared = part(restCap, restUnits, secs)
	check(path, d.reserved[0].line, "the shared part (keep the shares under 100%)", p.shared)
}

// ownerKey is the client field of a reservation's bucket key.
func ownerKey(r *Reservation) string {
	if r.Tier != "" {
		return ReservedKeyPrefix + "tier:" + r.Tier
	}
	return ReservedKeyPrefix + "client:" + r.Client
}

// dedicated checks a dedicated pool's client and the pool it replaces.
func (c *compiler) dedicated(d poolDoc, p *Pool) {
	path := "pools." + d.name + ".dedicated"
	dd := d.dedicated
	client, ok := c.set.Clients[dd.client.v]
	switch {
	case dd.client.missing():
		c.add(d.file, dd.line, path+".client", "is required (the client the pool belongs to)")
	case dd.client.set && !ok:
		c.add(d.file, dd.client.line, path+".client", "client %q does not exist%s", dd.client.v, known(c.set.Clients))
	}
	var shared *Pool
	switch {
	case dd.insteadOf.missing():
		c.add(d.file, dd.line, path+".instead_of", "is required (the shared pool whose charges the client makes here instead)")
	case dd.insteadOf.set:
		shared = c.set.Pools[dd.insteadOf.v]
		switch {
		case shared == nil:
			c.add(d.file, dd.insteadOf.line, path+".instead_of", "pool %q does not exist%s", dd.insteadOf.v, known(c.set.Pools))
		case shared.Dedicated != nil:
			c.add(d.file, dd.insteadOf.line, path+".instead_of", "pool %q is itself dedicated; name a shared pool", dd.insteadOf.v)
			shared = nil
		case shared.Unit != p.Unit:
			c.add(d.file, dd.insteadOf.line, path+".instead_of", "pool %q counts %ss, this one %ss: a dedicated pool counts what it replaces",
				dd.insteadOf.v, shared.Unit, p.Unit)
			shared = nil
		}
	}
	if client == nil || shared == nil {
		return
	}
	if prev, dup := client.Dedicated[shared.Name]; dup {
		c.add(d.file, dd.line, path, "client %q already has pool %q instead of %q", client.ID, prev.Name, shared.Name)
		return
	}
	p.Dedicated.InsteadOf = shared
	if client.Dedicated == nil {
		client.Dedicated = map[string]*Pool{}
	}
	client.Dedicated[shared.Name] = p
}

// dedicatedRoutes rewrites, for each client with dedicated pools, every
// route that names a pool it replaces.
func (c *compiler) dedicatedRoutes() {
	for _, cl := range c.set.Clients {
		if len(cl.Dedicated) == 0 {
			continue
		}
		for _, r := range c.set.Routes {
			var pools []*Pool
			for i, p := range r.Pools {
				if d, ok := cl.Dedicated[p.Name]; ok {
					if pools == nil {
						pools = append([]*Pool(nil), r.Pools...)
					}
					pools[i] = d
				}
			}
			if pools == nil {
				continue
			}
			cp := *r
			cp.Pools = pools
			if c.set.dedicatedRoutes == nil {
				c.set.dedicatedRoutes = map[string]map[*Route]*Route{}
			}
			if c.set.dedicatedRoutes[cl.ID] == nil {
				c.set.dedicatedRoutes[cl.ID] = map[*Route]*Route{}
			}
			c.set.dedicatedRoutes[cl.ID][r] = &cp
		}
	}
}
