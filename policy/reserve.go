package policy

import "strings"

// Reserved and dedicated pools (the Resource Manager's shared, reserved and
// dedicated resource pools). A reservation carves a share out of a pool for
// one tier or one client: its own bucket, under the pool's name, that only
// its owner may spend, or that others may borrow from while the owner
// leaves it idle. A dedicated pool is a pool of its own that one client
// spends instead of a shared one. See docs/policy.md.

// Reservation guarantees Share percent of a pool (of its capacity and of
// its refill) to the clients of one tier or to one client.
type Reservation struct {
	// Tier or Client names the owner; exactly one is set.
	Tier, Client string
	// Share is the whole percent of the pool reserved.
	Share int64
	// Lend lets others borrow the Lent part while the owner leaves it
	// full (lend: idle); Keep is the percent of the share never lent.
	Lend bool
	Keep int64
	// Kept is the part only the owner spends (the whole share unless
	// Lend); Lent is the part others may borrow (nil unless Lend).
	Kept Part
	Lent *Part
}

// Part is one bucket of a pool split by reservations: its key's client
// field (limiter.Key{Pool: pool, Client: Key}) and its shape.
type Part struct {
	Key   string
	Limit Limit
}

// Owner names the reservation's owner for people: "tier enterprise",
// "client acme".
func (r *Reservation) Owner() string {
	if r.Tier != "" {
		return "tier " + r.Tier
	}
	return "client " + r.Client
}

// Owns reports whether c's calls spend this reservation.
func (r *Reservation) Owns(c *Client) bool {
	if r.Tier != "" {
		return c.Tier != nil && c.Tier.Name == r.Tier
	}
	return c.ID == r.Client
}

// Dedicated makes a pool one client's own: every charge of Client on
// InsteadOf becomes a charge on the dedicated pool. No route names a
// dedicated pool; no other client ever touches it.
type Dedicated struct {
	Client    string
	InsteadOf *Pool
}

// ReservedKeyPrefix starts the client field of every reserved part's
// bucket key. No client id holds it (see ValidClientID), so a part's
// bucket can never be mistaken for a client's bucket in the pool.
const ReservedKeyPrefix = "#"

// IsReservedKey reports whether a bucket key's client field names a
// reserved part rather than a client.
func IsReservedKey(client string) bool { return strings.HasPrefix(client, ReservedKeyPrefix) }

// SharedLimit is the shape of the pool's shared part: the pool less its
// reservations (the whole pool when it has none).
func (p *Pool) SharedLimit() Limit {
	if len(p.Reserved) == 0 {
		return p.Limit
	}
	return p.shared
}

// RouteFor is the route client's calls on r are charged through: r itself,
// or, when the client has dedicated pools instead of some of r's, a copy of
// r naming them instead.
func (s *Set) RouteFor(r *Route, c *Client) *Route {
	if r == nil || c == nil || len(c.Dedicated) == 0 {
		return r
	}
	if d, ok := s.dedicatedRoutes[c.ID][r]; ok {
		return d
	}
	return r
}

// perPeriod is l's refill as a whole number of units over a whole number
// of seconds: its shortest whole period (10000 a minute, 10 a day), where
// shares are cut.
func (l Limit) perPeriod() (units, seconds int64) {
	n, i, ok := l.ratePer()
	if !ok {
		return l.Refill, l.den()
	}
	return n, ratePeriods[i].seconds
}

// part is a Limit of capacity refilling units every seconds, in lowest
// terms as the policy keeps rates.
func part(capacity, units, seconds int64) Limit {
	if units <= 0 {
		return Limit{Capacity: capacity, Per: perOf(seconds)}
	}
	g := gcd(units, seconds)
	return Limit{Capacity: capacity, Refill: units / g, Per: perOf(seconds / g)}
}
