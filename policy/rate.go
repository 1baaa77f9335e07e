package policy

import (
	"errors"
	"fmt"
	"strconv"
	"strings"

	"gopkg.in/yaml.v3"
)

// ratePeriods are the periods a rate may be written per, in seconds.
var ratePeriods = []struct {
	names   []string
	seconds int64
}{
	{[]string{"s", "sec", "second"}, 1},
	{[]string{"min", "minute"}, 60},
	{[]string{"h", "hour"}, 3600},
	{[]string{"d", "day"}, 86400},
}

// ParseRate reads a refill rate written as units per period ("5/s",
// "600/min", "7200/h", "86400/d"; a bare number is per second) and returns
// it in whole units per second, the limiter's rate. A rate that is not a
// whole number of units a second (10000/min is 166.67/s) is refused: the
// limiter refills whole units a second and would not keep it exactly, so
// the error names the nearest exact rates instead of rounding in silence.
func ParseRate(s string) (int64, error) {
	num, per, found := strings.Cut(strings.TrimSpace(s), "/")
	num = strings.ReplaceAll(strings.TrimSpace(num), "_", "")
	seconds := int64(1)
	if found {
		per = strings.ToLower(strings.TrimSpace(per))
		seconds = 0
		for _, p := range ratePeriods {
			for _, n := range p.names {
				if per == n {
					seconds = p.seconds
				}
			}
		}
		if seconds == 0 {
			return 0, fmt.Errorf("rate %q: unknown period %q (use s, min, h or d, as in 10000/min)", s, per)
		}
	}
	n, err := strconv.ParseInt(num, 10, 64)
	if err != nil {
		if errors.Is(err, strconv.ErrRange) {
			return 0, fmt.Errorf("rate %q: %s is too large (at most %d)", s, num, MaxCapacity)
		}
		return 0, fmt.Errorf("rate %q: want a whole number of units per period, as in 10000/min or 5/s", s)
	}
	if n <= 0 {
		return 0, fmt.Errorf("rate %q: must be positive", s)
	}
	if n%seconds != 0 {
		lo, hi := n/seconds, n/seconds+1
		alt := fmt.Sprintf("%d%s (%d/s)", hi*seconds, "/"+per, hi)
		if lo > 0 {
			alt = fmt.Sprintf("%d/%s (%d/s) or %s", lo*seconds, per, lo, alt)
		}
		return 0, fmt.Errorf("rate %q is %s units a second, and the limiter refills whole units a second, so it cannot be kept exactly: write %s",
			s, strconv.FormatFloat(float64(n)/float64(seconds), 'f', 2, 64), alt)
	}
	return n / seconds, nil
}

// refill reads a bucket's refill: refill_per_second (a whole number) or
// refill (a rate, as in 10000/min), not both; the result is per second.
func (m *mapNode) refill() at[int64] {
	perSecond := m.int("refill_per_second")
	rate := field(m, "refill", func(n *yaml.Node, path string) (int64, bool) {
		if n.Kind != yaml.ScalarNode || (n.Tag != "!!int" && n.Tag != "!!str" && n.Tag != "!!float") {
			m.d.fail(n, path, "must be a rate such as 10000/min, 100/h or 5/s, got %s", kindName(n))
			return 0, false
		}
		v, err := ParseRate(n.Value)
		if err != nil {
			m.d.fail(n, path, "%v", err)
			return 0, false
		}
		return v, true
	})
	switch {
	case rate.set && (perSecond.set || perSecond.bad):
		m.d.fail(m.keyAt["refill"], join(m.path, "refill"), "set refill or refill_per_second, not both")
		return at[int64]{line: rate.line, bad: true}
	case rate.set || rate.bad:
		return rate
	}
	return perSecond
}
