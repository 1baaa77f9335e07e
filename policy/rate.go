package policy

import (
	"errors"
	"fmt"
	"strconv"
	"strings"
	"time"

	"gopkg.in/yaml.v3"
)

// ratePeriods are the periods a rate may be written per: the short name
// first (as Rate writes it), then the long one (as RefillText does).
var ratePeriods = []struct {
	names   []string
	seconds int64
}{
	{[]string{"s", "second", "sec"}, 1},
	{[]string{"min", "minute"}, 60},
	{[]string{"h", "hour"}, 3600},
	{[]string{"d", "day"}, 86400},
}

// ParseRate reads a refill rate written as units per period ("5/s",
// "10000/min", "100/h", "1/d"; a bare number is per second) and returns it
// exactly, as a Limit keeps it: refill units every per, in lowest terms
// (10000/min is 500 every 3s, 100/h is 1 every 36s), with per zero for a
// whole number of units a second (600/min is 10). Nothing is rounded: the
// limiter refills any such rate exactly. A rate must be positive and at
// most MaxCapacity units a second.
func ParseRate(s string) (refill int64, per time.Duration, err error) {
	num, unit, found := strings.Cut(strings.TrimSpace(s), "/")
	num = strings.ReplaceAll(strings.TrimSpace(num), "_", "")
	seconds := int64(1)
	if found {
		unit = strings.ToLower(strings.TrimSpace(unit))
		seconds = 0
		for _, p := range ratePeriods {
			for _, n := range p.names {
				if unit == n {
					seconds = p.seconds
				}
			}
		}
		if seconds == 0 {
			return 0, 0, fmt.Errorf("rate %q: unknown period %q (use s, min, h or d, as in 10000/min)", s, unit)
		}
	}
	n, err := strconv.ParseInt(num, 10, 64)
	switch {
	case errors.Is(err, strconv.ErrRange) && strings.HasPrefix(num, "-"):
		return 0, 0, fmt.Errorf("rate %q: must be positive", s)
	case errors.Is(err, strconv.ErrRange):
		return 0, 0, fmt.Errorf("rate %q: %s is too large (at most %d a second)", s, num, MaxCapacity)
	case err != nil:
		return 0, 0, fmt.Errorf("rate %q: want a whole number of units per period, as in 10000/min or 5/s", s)
	case n <= 0:
		return 0, 0, fmt.Errorf("rate %q: must be positive", s)
	case n > MaxCapacity*seconds:
		return 0, 0, fmt.Errorf("rate %q is more than %d units a second", s, MaxCapacity)
	}
	g := gcd(n, seconds)
	return n / g, perOf(seconds / g), nil
}

// perOf is a Limit's Per for a period of seconds: zero for one second.
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

// den is the limit's refill period in whole seconds (one for a zero Per):
// the denominator of its rate in units a second.
func (l Limit) den() int64 {
	if l.Per <= time.Second {
		return 1
	}
	return int64(l.Per / time.Second)
}

// ratePer finds the shortest period (second, minute, hour, day) over which
// the limit refills a whole number of units, and that number; ok is false
// for a period that divides no day (a Limit not made by the policy).
func (l Limit) ratePer() (units int64, period int, ok bool) {
	d := l.den()
	for i, p := range ratePeriods {
		if p.seconds%d == 0 {
			return l.Refill * (p.seconds / d), i, true
		}
	}
	return l.Refill, 0, false
}

// Rate writes the limit's refill as a rate ParseRate reads back: per the
// shortest period that makes it whole ("166/s", "10000/min", "100/h",
// "1/d").
func (l Limit) Rate() string {
	n, i, ok := l.ratePer()
	if !ok {
		return fmt.Sprintf("%d every %ds", l.Refill, l.den())
	}
	return fmt.Sprintf("%d/%s", n, ratePeriods[i].names[0])
}

// RefillText says the limit's refill in words, for people: "166 per
// second", "10000 per minute".
func (l Limit) RefillText() string {
	n, i, ok := l.ratePer()
	if !ok {
		return fmt.Sprintf("%d every %d seconds", l.Refill, l.den())
	}
	return fmt.Sprintf("%d per %s", n, ratePeriods[i].names[1])
}

// rate is a refill as read: Refill every Per (lowest terms, Per zero for a
// second), from the field key.
type rate struct {
	refill int64
	per    time.Duration
	key    string
}

// refill reads a bucket's refill: refill_per_second (a whole number a
// second) or refill (a rate, as in 10000/min), not both.
func (m *mapNode) refill() at[rate] {
	perSecond := m.int("refill_per_second")
	r := field(m, "refill", func(n *yaml.Node, path string) (rate, bool) {
		if n.Kind != yaml.ScalarNode || (n.Tag != "!!int" && n.Tag != "!!str" && n.Tag != "!!float") {
			m.d.fail(n, path, "must be a rate such as 10000/min, 100/h or 5/s, got %s", kindName(n))
			return rate{}, false
		}
		refill, per, err := ParseRate(n.Value)
		if err != nil {
			m.d.fail(n, path, "%v", err)
			return rate{}, false
		}
		return rate{refill: refill, per: per, key: "refill"}, true
	})
	switch {
	case r.set && (perSecond.set || perSecond.bad):
		m.d.fail(m.keyAt["refill"], join(m.path, "refill"), "set refill or refill_per_second, not both")
		return at[rate]{line: r.line, bad: true}
	case r.set || r.bad:
		return r
	}
	return at[rate]{v: rate{refill: perSecond.v, key: "refill_per_second"}, line: perSecond.line, set: perSecond.set, bad: perSecond.bad}
}
