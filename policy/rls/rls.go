// Package rls reads envoyproxy/ratelimit's descriptor configuration as it
// is (domain; nested descriptors with key, value, rate_limit, unlimited,
// shadow_mode, quota_mode, replaces, name, detailed_metric, value_to_metric,
// share_threshold, metadata) from its runtime-directory layout, and matches
// Envoy's rate limit descriptors against it the way that server does: a
// descriptor's entries walk down the nested lists, a key with its value is
// tried before a wildcard value and a wildcard before the key alone, and a
// rule applies only when the descriptor ends on it.
//
// It imports the standard library and yaml only; admission turns a Rule
// into a limiter bucket.
package rls

import (
	"strconv"
	"strings"
	"time"
)

// Unit is the period a rule's requests_per_unit counts over.
type Unit uint8

// The units envoyproxy/ratelimit accepts.
const (
	UnitUnknown Unit = iota
	Second
	Minute
	Hour
	Day
	Week
	Month
	Year
)

var unitNames = [...]string{"unknown", "second", "minute", "hour", "day", "week", "month", "year"}

// unitSeconds is how that server counts each unit (a month is 30 days, a
// year 365).
var unitSeconds = [...]int64{0, 1, 60, 3600, 86400, 7 * 86400, 30 * 86400, 365 * 86400}

func (u Unit) String() string {
	if int(u) < len(unitNames) {
		return unitNames[u]
	}
	return "unit(" + strconv.Itoa(int(u)) + ")"
}

// Seconds is the unit's length in seconds (zero for UnitUnknown).
func (u Unit) Seconds() int64 {
	if int(u) < len(unitSeconds) {
		return unitSeconds[u]
	}
	return 0
}

// ParseUnit reads a unit as the config writes it, in any case.
func ParseUnit(s string) (Unit, bool) {
	s = strings.ToLower(s)
	for i, n := range unitNames[1:] {
		if s == n {
			return Unit(i + 1), true
		}
	}
	return UnitUnknown, false
}

// Entry is one key and value of a descriptor.
type Entry struct {
	Key, Value string
}

// Bucket is a rule's limit as a token bucket Tollgate's stores keep:
// Capacity units, refilled Refill units every Per (whole seconds, at most
// a day). It is requests_per_unit refilling requests_per_unit every unit,
// in lowest terms, exactly when the stores can keep it so; Approx says the
// refill was rounded (by at most 1%, see bucketFor).
type Bucket struct {
	Capacity int64
	Refill   int64
	Per      time.Duration
	Approx   bool
}

// Rule is one rate_limit of the config, where it was written, and its
// bucket.
type Rule struct {
	Domain string
	// Path is the descriptor path as that server names it in its stats:
	// domain.key_value.key …
	Path            string
	RequestsPerUnit uint32
	Unit            Unit
	Unlimited       bool
	ShadowMode      bool
	QuotaMode       bool
	DetailedMetric  bool
	Name            string
	Replaces        []string
	Bucket          Bucket
	File            string
	Line            int
}

// node is one level of a domain's nested descriptor lists.
type node struct {
	exact map[Entry]*node  // key and value
	wild  []wildcard       // key and a value with '*', in the config's order
	byKey map[string]*node // key alone
	rule  *Rule
	// children is set when the node has nested descriptors.
	children bool
}

type wildcard struct {
	key   string
	parts []string // the value split at '*'
	// share: every value matching shares one counter (share_threshold),
	// counted under pattern.
	share   bool
	pattern string
	n       *node
}

func newNode() *node { return &node{exact: map[Entry]*node{}, byKey: map[string]*node{}} }

// Config is a compiled set of domains. It is immutable and safe for
// concurrent use.
type Config struct {
	domains map[string]*node
	// Files are the files it was read from, in the order read.
	Files []string
	// Rules are every rule, in the order read (for the debug view).
	Rules []*Rule
}

// HasDomain reports whether the config knows domain.
func (c *Config) HasDomain(domain string) bool {
	if c == nil {
		return false
	}
	_, ok := c.domains[domain]
	return ok
}

// Domains is how many domains the config has.
func (c *Config) Domains() int {
	if c == nil {
		return 0
	}
	return len(c.domains)
}

// Match finds the rule for one descriptor of domain, as envoyproxy/ratelimit
// does, and the counter it is kept in: the descriptor's own entries, with
// the pattern in place of the value where a share_threshold wildcard
// matched. It returns nil when no rule applies (an unknown domain, no
// match, or a descriptor longer or shorter than the rule's nesting).
func (c *Config) Match(domain string, entries []Entry) (*Rule, string) {
	if c == nil {
		return nil, ""
	}
	cur := c.domains[domain]
	if cur == nil {
		return nil, ""
	}
	var rule *Rule
	var shared []int // entries counted under a wildcard pattern
	var patterns []string
	for i, e := range entries {
		next := cur.exact[e]
		if next == nil {
			for _, w := range cur.wild {
				if w.key == e.Key && wildcardMatch(w.parts, e.Value) {
					next = w.n
					if w.share {
						shared, patterns = append(shared, i), append(patterns, w.pattern)
					}
					break
				}
			}
		}
		if next == nil {
			next = cur.byKey[e.Key]
		}
		if next != nil && next.rule != nil && i == len(entries)-1 {
			rule = next.rule
		}
		if next == nil || !next.children {
			break
		}
		cur = next
	}
	if rule == nil {
		return nil, ""
	}
	return rule, counterKey(entries, shared, patterns)
}

// counterKey encodes entries as length-prefixed keys and values, so that
// no two descriptors share a counter by accident ("a_b"+"c" is not
// "a"+"b_c", as it is in that server's keys).
func counterKey(entries []Entry, shared []int, patterns []string) string {
	var b strings.Builder
	n := 0
	for _, e := range entries {
		n += len(e.Key) + len(e.Value) + 8
	}
	b.Grow(n)
	for i, e := range entries {
		v := e.Value
		for j, s := range shared {
			if s == i {
				v = "*" + patterns[j] // a pattern never collides with a value: it is marked
			}
		}
		b.WriteString(strconv.Itoa(len(e.Key)))
		b.WriteByte(':')
		b.WriteString(e.Key)
		b.WriteString(strconv.Itoa(len(v)))
		b.WriteByte(':')
		b.WriteString(v)
	}
	return b.String()
}

// CounterKey is the counter of a descriptor whose limit the request itself
// gives (a descriptor's limit override): its entries, marked apart from
// the counters of configured rules.
func CounterKey(entries []Entry) string { return "override:" + counterKey(entries, nil, nil) }

// wildcardMatch reports whether value matches the pattern split at '*':
// each '*' matches any run of characters, leftmost first.
func wildcardMatch(parts []string, value string) bool {
	if len(parts) == 1 {
		return parts[0] == value
	}
	first, last := parts[0], parts[len(parts)-1]
	if len(value) < len(first)+len(last) || !strings.HasPrefix(value, first) || !strings.HasSuffix(value, last) {
		return false
	}
	rest := value[len(first) : len(value)-len(last)]
	for _, p := range parts[1 : len(parts)-1] {
		i := strings.Index(rest, p)
		if i < 0 {
			return false
		}
		rest = rest[i+len(p):]
	}
	return true
}

// maxUnits is the largest capacity (times its refill period in seconds)
// and refill a second the stores keep exactly: policy.MaxCapacity, the
// limiter's bound (a test holds them equal).
const maxUnits = 1_000_000_000

// MaxUnits is maxUnits, for that test.
const MaxUnits = maxUnits

// maxPer is the longest refill period the stores keep: a day.
const maxPer = 86400

// BucketFor maps n requests per unit to a token bucket: capacity n,
// refilling n every unit, in lowest terms. When that cannot be kept exactly
// (capacity times the period in seconds above maxUnits, or a period above
// a day: weeks, months, years, or a day with an awkward n), the refill
// period is shortened to the longest the stores can keep and the refill
// rounded to it, if that stays within 1% of the rate; else ok is false.
// n must be positive.
func BucketFor(n int64, u Unit) (b Bucket, ok bool) {
	s := u.Seconds()
	if n <= 0 || s == 0 || n > maxUnits {
		return Bucket{}, false
	}
	g := gcd(n, s)
	refill, den := n/g, s/g
	if den <= maxPer && n <= maxUnits/den {
		return Bucket{Capacity: n, Refill: refill, Per: perOf(den)}, true
	}
	d := min(int64(maxPer), maxUnits/n)
	// refill r every d seconds, r = round(n·d/s); n·d ≤ maxUnits, no overflow
	r := (n*d + s/2) / s
	if r <= 0 {
		return Bucket{}, false
	}
	// |r/d − n/s| ≤ 1% of n/s  ⇔  100·|r·s − n·d| ≤ n·d
	diff := r*s - n*d
	if diff < 0 {
		diff = -diff
	}
	if 100*diff > n*d {
		return Bucket{}, false
	}
	g = gcd(r, d)
	return Bucket{Capacity: n, Refill: r / g, Per: perOf(d / g), Approx: true}, true
}

func perOf(seconds int64) time.Duration {
	if seconds == 1 {
		return 0
	}
	return time.Duration(seconds) * time.Second
}

func gcd(a, b int64) int64 {
	for b != 0 {
		a, b = b, a%b
	}
	return a
}
