package policy

import (
	"errors"
	"fmt"
	"math"
	"math/bits"
	"strconv"
	"strings"
)

// Money is an amount in nano-dollars (1e-9 USD). Every ledger in Tollgate is
// kept in Money; dollars appear only at the edges (YAML, headers, metrics).
type Money int64

// NanosPerDollar is the number of nano-dollars in one dollar.
const NanosPerDollar Money = 1_000_000_000

// String renders m as a decimal dollar amount with no trailing zeros,
// e.g. "0.03", "1000", "-0.000000001". It never goes through float64.
func (m Money) String() string {
	neg := m < 0
	u := uint64(m)
	if neg {
		u = uint64(-m) // -MinInt64 wraps to itself, and uint64 of that is right
	}
	whole, frac := u/uint64(NanosPerDollar), u%uint64(NanosPerDollar)
	s := strconv.FormatUint(whole, 10)
	if frac != 0 {
		f := fmt.Sprintf("%09d", frac)
		s += "." + strings.TrimRight(f, "0")
	}
	if neg {
		s = "-" + s
	}
	return s
}

// Price is an exact rate: Nanos nano-dollars for every Per units. "$0.03 per
// 1K tokens" is {Nanos: 30_000_000, Per: 1000}; a price finer than a
// nano-dollar per unit keeps its precision in Per ("$0.15/1M" is
// {150_000_000, 1_000_000}).
type Price struct {
	Nanos Money
	Per   int64
}

// IsZero reports whether the price is free (or unset).
func (p Price) IsZero() bool { return p.Nanos == 0 }

// Cost is the price of units, rounded up to the next nano-dollar so that
// estimates never under-reserve. It saturates at MaxInt64 instead of
// overflowing.
func (p Price) Cost(units int64) Money {
	if units <= 0 || p.Nanos <= 0 || p.Per <= 0 {
		return 0
	}
	hi, lo := bits.Mul64(uint64(units), uint64(p.Nanos))
	if hi >= uint64(p.Per) {
		return math.MaxInt64
	}
	q, r := bits.Div64(hi, lo, uint64(p.Per))
	if q >= math.MaxInt64 {
		return math.MaxInt64
	}
	if r != 0 {
		q++ // round up: never under-reserve
	}
	return Money(q)
}

// Cmp compares two prices per unit exactly: -1 when p is cheaper than q,
// 0 when equal, +1 when dearer.
func (p Price) Cmp(q Price) int {
	pp, qp := max(p.Per, 1), max(q.Per, 1)
	ah, al := bits.Mul64(uint64(max(p.Nanos, 0)), uint64(qp))
	bh, bl := bits.Mul64(uint64(max(q.Nanos, 0)), uint64(pp))
	switch {
	case ah < bh || ah == bh && al < bl:
		return -1
	case ah == bh && al == bl:
		return 0
	}
	return 1
}

// String renders the price the way the policy writes it, e.g. "0.03/1K".
func (p Price) String() string {
	switch {
	case p.Per == 1:
		return p.Nanos.String()
	case p.Per == 1_000_000:
		return p.Nanos.String() + "/1M"
	case p.Per == 1000:
		return p.Nanos.String() + "/1K"
	default:
		return p.Nanos.String() + "/" + strconv.FormatInt(p.Per, 10)
	}
}

var errMoneySyntax = errors.New(`want a dollar amount such as "1000", "$1,000.50" or "0.0075"`)

// ParseMoney parses a dollar amount ("1000", "$1,000.50", "0.000000001") into
// nano-dollars exactly. Amounts finer than a nano-dollar are refused rather
// than rounded: money is never silently changed.
func ParseMoney(s string) (Money, error) {
	n, scale, err := parseDecimal(s)
	if err != nil {
		return 0, err
	}
	if scale > 9 {
		return 0, fmt.Errorf("%q is finer than a nano-dollar", s)
	}
	for ; scale < 9; scale++ {
		if n > math.MaxInt64/10 || n < math.MinInt64/10 {
			return 0, fmt.Errorf("%q is too large", s)
		}
		n *= 10
	}
	return Money(n), nil
}

// ParsePrice parses "0.03/1K", "$2.50/1M", "0.0075", "0.0001/1" or
// "1.2/1000" into an exact Price: dollars per N units (N is 1 when omitted).
func ParsePrice(s string) (Price, error) {
	amount, per := s, "1"
	if i := strings.IndexByte(s, '/'); i >= 0 {
		amount, per = s[:i], strings.TrimSpace(s[i+1:])
	}
	if per == "" {
		return Price{}, fmt.Errorf("price %q: the part after / must be a positive count of units such as 1, 1K or 1M", s)
	}
	mult := int64(1)
	switch {
	case strings.HasSuffix(per, "K") || strings.HasSuffix(per, "k"):
		mult, per = 1000, per[:len(per)-1]
	case strings.HasSuffix(per, "M") || strings.HasSuffix(per, "m"):
		mult, per = 1_000_000, per[:len(per)-1]
	}
	if per == "" {
		per = "1" // "/K" is "/1K"
	}
	perN, err := strconv.ParseInt(per, 10, 64)
	if err != nil || perN <= 0 || perN > math.MaxInt64/mult {
		return Price{}, fmt.Errorf("price %q: the part after / must be a positive count of units such as 1, 1K or 1M", s)
	}
	perN *= mult
	n, scale, err := parseDecimal(amount)
	if err != nil {
		return Price{}, fmt.Errorf("price %q: %w", s, err)
	}
	if n < 0 {
		return Price{}, fmt.Errorf("price %q must not be negative", s)
	}
	// n * 10^-scale dollars = n * 10^(9-scale) nanos per perN units.
	for ; scale < 9; scale++ {
		if n > math.MaxInt64/10 {
			return Price{}, fmt.Errorf("price %q is too large", s)
		}
		n *= 10
	}
	for ; scale > 9; scale-- { // sub-nano precision moves into Per
		if perN > math.MaxInt64/10 {
			return Price{}, fmt.Errorf("price %q is too precise", s)
		}
		perN *= 10
	}
	return Price{Nanos: Money(n), Per: perN}, nil
}

// parseDecimal reads an optionally signed decimal with an optional leading
// "$" and thousands commas, returning the digits as an integer and the
// number of digits after the point.
func parseDecimal(s string) (n int64, scale int, err error) {
	s = strings.TrimSpace(s)
	neg := false
	if strings.HasPrefix(s, "-") {
		neg, s = true, s[1:]
	}
	s = strings.TrimPrefix(s, "$")
	s = strings.ReplaceAll(s, ",", "")
	if s == "" {
		return 0, 0, errMoneySyntax
	}
	if !strings.ContainsAny(s, "0123456789") {
		return 0, 0, errMoneySyntax
	}
	if whole, frac, ok := strings.Cut(s, "."); ok {
		s = whole + "." + strings.TrimRight(frac, "0") // 1.50 is 1.5: trailing zeros add no precision
	}
	seenPoint := false
	for _, c := range s {
		switch {
		case c == '.' && !seenPoint:
			seenPoint = true
		case c >= '0' && c <= '9':
			d := int64(c - '0')
			if n > (math.MaxInt64-d)/10 {
				return 0, 0, errors.New("amount is too large")
			}
			n = n*10 + d
			if seenPoint {
				scale++
			}
		default:
			return 0, 0, errMoneySyntax
		}
	}
	if neg {
		n = -n
	}
	return n, scale, nil
}
