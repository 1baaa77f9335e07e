package policy_test

import (
	"math"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/tollgate/tollgate/policy"
)

func TestParseMoney(t *testing.T) {
	tests := map[string]struct {
		in      string
		want    policy.Money
		wantErr string // a substring of the error; "" for success
	}{
		"zero":                     {in: "0", want: 0},
		"whole dollars":            {in: "1000", want: 1000 * policy.NanosPerDollar},
		"dollar sign and commas":   {in: "$1,000.50", want: 1_000_500_000_000},
		"cents":                    {in: "0.03", want: 30_000_000},
		"one nano-dollar":          {in: "0.000000001", want: 1},
		"leading point":            {in: ".5", want: 500_000_000},
		"trailing point":           {in: "5.", want: 5 * policy.NanosPerDollar},
		"surrounding space":        {in: " 42 ", want: 42 * policy.NanosPerDollar},
		"negative":                 {in: "-5", want: -5 * policy.NanosPerDollar},
		"negative nano-dollar":     {in: "-0.000000001", want: -1},
		"negative with sign":       {in: "-$1,000.50", want: -1_000_500_000_000},
		"negative zero":            {in: "-0", want: 0},
		"largest whole dollars":    {in: "9223372036", want: 9_223_372_036 * policy.NanosPerDollar},
		"near MaxInt64":            {in: "9223372036.854775799", want: math.MaxInt64 - 8},
		"sub-nano":                 {in: "0.0000000001", wantErr: `"0.0000000001" is finer than a nano-dollar`},
		"sub-nano negative":        {in: "-1.0000000001", wantErr: "finer than a nano-dollar"},
		"empty":                    {in: "", wantErr: "want a dollar amount"},
		"only a sign":              {in: "-", wantErr: "want a dollar amount"},
		"only a dollar sign":       {in: "$", wantErr: "want a dollar amount"},
		"only a point":             {in: ".", wantErr: "want a dollar amount"},
		"words":                    {in: "lots", wantErr: "want a dollar amount"},
		"two points":               {in: "1.2.3", wantErr: "want a dollar amount"},
		"exponent":                 {in: "1e3", wantErr: "want a dollar amount"},
		"plus sign":                {in: "+5", wantErr: "want a dollar amount"},
		"sign after dollar":        {in: "$-5", wantErr: "want a dollar amount"},
		"double sign":              {in: "--5", wantErr: "want a dollar amount"},
		"hex":                      {in: "0x10", wantErr: "want a dollar amount"},
		"overflow on scaling":      {in: "9223372037", wantErr: `"9223372037" is too large`},
		"overflow in the digits":   {in: "99999999999999999999", wantErr: "too large"},
		"overflow with many zeros": {in: "100000000000000000000.00", wantErr: "too large"},

		// The ends of the range parse (an overflow guard once refused the
		// eight largest amounts).
		"MaxInt64": {in: "9223372036.854775807", want: math.MaxInt64},
		// ... nor does MinInt64+1.
		"MinInt64+1": {in: "-9223372036.854775807", want: math.MinInt64 + 1},
		// ParseMoney checks overflow only for positive amounts, so a large
		// negative amount wraps round to a positive one.
		"negative overflow": {in: "-9223372037", wantErr: "too large"},
	}
	for name, tc := range tests {
		t.Run(name, func(t *testing.T) {
			got, err := policy.ParseMoney(tc.in)
			if tc.wantErr != "" {
				assert.ErrorContains(t, err, tc.wantErr, "parsed as %d", int64(got))
				return
			}
			require.NoError(t, err)
			assert.Equal(t, tc.want, got)
		})
	}
}

func TestParsePrice(t *testing.T) {
	tests := map[string]struct {
		in      string
		want    policy.Price
		wantErr string // a substring of the error; "" for success
	}{
		"per thousand":              {in: "0.03/1K", want: policy.Price{Nanos: 30_000_000, Per: 1000}},
		"per thousand, lower case":  {in: "0.03/1k", want: policy.Price{Nanos: 30_000_000, Per: 1000}},
		"per K without a count":     {in: "0.03/K", want: policy.Price{Nanos: 30_000_000, Per: 1000}},
		"per million":               {in: "2.50/1M", want: policy.Price{Nanos: 2_500_000_000, Per: 1_000_000}},
		"per million, dollar sign":  {in: "$2.50/1M", want: policy.Price{Nanos: 2_500_000_000, Per: 1_000_000}},
		"per million, lower case":   {in: "0.15/1m", want: policy.Price{Nanos: 150_000_000, Per: 1_000_000}},
		"per unit, implicit":        {in: "0.0075", want: policy.Price{Nanos: 7_500_000, Per: 1}},
		"per unit, explicit":        {in: "0.0001/1", want: policy.Price{Nanos: 100_000, Per: 1}},
		"per plain count":           {in: "1.2/1000", want: policy.Price{Nanos: 1_200_000_000, Per: 1000}},
		"per other count":           {in: "1/3", want: policy.Price{Nanos: policy.NanosPerDollar, Per: 3}},
		"spaces around the slash":   {in: " 0.03 / 1K ", want: policy.Price{Nanos: 30_000_000, Per: 1000}},
		"free":                      {in: "0", want: policy.Price{Nanos: 0, Per: 1}},
		"ten-millionth of a dollar": {in: "0.0000001", want: policy.Price{Nanos: 100, Per: 1}},
		"sub-nano keeps precision":  {in: "0.0000000001", want: policy.Price{Nanos: 1, Per: 10}},
		"sub-nano per thousand":     {in: "0.00000000015/1K", want: policy.Price{Nanos: 15, Per: 100_000}},
		"sub-nano per million":      {in: "0.0000001/1M", want: policy.Price{Nanos: 100, Per: 1_000_000}},
		"large but fits":            {in: "9223372036/1", want: policy.Price{Nanos: 9_223_372_036 * policy.NanosPerDollar, Per: 1}},
		"negative":                  {in: "-0.03/1K", wantErr: `price "-0.03/1K" must not be negative`},
		"garbage":                   {in: "three cents", wantErr: "want a dollar amount"},
		"empty":                     {in: "", wantErr: "want a dollar amount"},
		"no amount":                 {in: "/1K", wantErr: "want a dollar amount"},
		"bad count":                 {in: "0.03/lots", wantErr: "the part after / must be a positive count"},
		"zero count":                {in: "0.03/0", wantErr: "the part after / must be a positive count"},
		"negative count":            {in: "0.03/-1K", wantErr: "the part after / must be a positive count"},
		"unknown suffix":            {in: "0.03/1G", wantErr: "the part after / must be a positive count"},
		"two slashes":               {in: "0.03/1K/2", wantErr: "the part after / must be a positive count"},
		"count overflows with K":    {in: "1/9223372036854775807K", wantErr: "the part after / must be a positive count"},
		"amount overflow":           {in: "10000000000/1K", wantErr: "is too large"},
		"amount digits overflow":    {in: "99999999999999999999", wantErr: "too large"},
		"too precise":               {in: "0.0000000000000000000001/1M", wantErr: "is too precise"},
	}
	for name, tc := range tests {
		t.Run(name, func(t *testing.T) {
			got, err := policy.ParsePrice(tc.in)
			if tc.wantErr != "" {
				assert.ErrorContains(t, err, tc.wantErr, "parsed as %+v", got)
				return
			}
			require.NoError(t, err)
			assert.Equal(t, tc.want, got)
			back, err := policy.ParsePrice(got.String())
			require.NoError(t, err, "String() = %q", got.String())
			assert.Equal(t, got, back, "String() = %q", got.String())
		})
	}
}

func TestPriceCost(t *testing.T) {
	tests := map[string]struct {
		price policy.Price
		units int64
		want  policy.Money
	}{
		"exact":                       {policy.Price{Nanos: 30_000_000, Per: 1000}, 1000, 30_000_000},
		"one unit of a 1K price":      {policy.Price{Nanos: 30_000_000, Per: 1000}, 1, 30_000},
		"rounds a third up":           {policy.Price{Nanos: 1, Per: 3}, 1, 1},
		"whole multiple, no rounding": {policy.Price{Nanos: 1, Per: 3}, 3, 1},
		"rounds up past a multiple":   {policy.Price{Nanos: 1, Per: 3}, 4, 2},
		"sub-nano price":              {policy.Price{Nanos: 1, Per: 10}, 11, 2},
		"zero units":                  {policy.Price{Nanos: 30_000_000, Per: 1000}, 0, 0},
		"negative units":              {policy.Price{Nanos: 30_000_000, Per: 1000}, -5, 0},
		"free":                        {policy.Price{Nanos: 0, Per: 1}, 1000, 0},
		"unset":                       {policy.Price{}, 1000, 0},
		"zero per":                    {policy.Price{Nanos: 5, Per: 0}, 1000, 0},
		"exactly MaxInt64":            {policy.Price{Nanos: 1, Per: 1}, math.MaxInt64, math.MaxInt64},
		"just over MaxInt64":          {policy.Price{Nanos: 2, Per: 1}, math.MaxInt64/2 + 1, math.MaxInt64},
		"product over 64 bits":        {policy.Price{Nanos: math.MaxInt64, Per: 1}, math.MaxInt64, math.MaxInt64},
		"quotient over MaxInt64":      {policy.Price{Nanos: 3, Per: 2}, math.MaxInt64, math.MaxInt64},
		"large but exact":             {policy.Price{Nanos: math.MaxInt64, Per: math.MaxInt64}, math.MaxInt64, math.MaxInt64},
		"large Per divides back":      {policy.Price{Nanos: math.MaxInt64, Per: math.MaxInt64}, 7, 7},
		// The product is 2^65-1, so the quotient is 2^64-1 with a
		// remainder: rounding up must saturate, not wrap to 0.
		"rounding up at 2^64 saturates": {policy.Price{Nanos: 1_190_112_520_884_487_201, Per: 2}, 31, math.MaxInt64},
	}
	for name, tc := range tests {
		t.Run(name, func(t *testing.T) {
			assert.Equal(t, tc.want, tc.price.Cost(tc.units))
		})
	}
}

func TestMoneyString(t *testing.T) {
	tests := map[string]struct {
		in   policy.Money
		want string
	}{
		"zero":         {0, "0"},
		"one nano":     {1, "0.000000001"},
		"cents":        {30_000_000, "0.03"},
		"dollars":      {1000 * policy.NanosPerDollar, "1000"},
		"fraction":     {1_000_500_000_000, "1000.5"},
		"negative":     {-1_500_000_000, "-1.5"},
		"negative one": {-1, "-0.000000001"},
		"MaxInt64":     {math.MaxInt64, "9223372036.854775807"},
		"MinInt64+1":   {math.MinInt64 + 1, "-9223372036.854775807"},
		"MinInt64":     {math.MinInt64, "-9223372036.854775808"},
	}
	for name, tc := range tests {
		t.Run(name, func(t *testing.T) {
			assert.Equal(t, tc.want, tc.in.String())
		})
	}
}

func TestMoneyStringRoundTrip(t *testing.T) {
	tests := map[string]policy.Money{
		"zero":          0,
		"one nano":      1,
		"minus one":     -1,
		"cents":         30_000_000,
		"dollar":        policy.NanosPerDollar,
		"negative":      -1_500_000_000,
		"many digits":   123_456_789_012_345_678,
		"negative many": -123_456_789_012_345_678,
		"MaxInt64-8":    math.MaxInt64 - 8,
		// The amounts nearest each end of the range round-trip too.
		"MaxInt64":   math.MaxInt64,
		"MinInt64+1": math.MinInt64 + 1,
	}
	for name, m := range tests {
		t.Run(name, func(t *testing.T) {
			got, err := policy.ParseMoney(m.String())
			require.NoError(t, err, "String() = %q", m.String())
			assert.Equal(t, m, got)
		})
	}
}

func TestPriceString(t *testing.T) {
	tests := map[string]struct {
		in   policy.Price
		want string
	}{
		"per unit":     {policy.Price{Nanos: 7_500_000, Per: 1}, "0.0075"},
		"per thousand": {policy.Price{Nanos: 30_000_000, Per: 1000}, "0.03/1K"},
		"per million":  {policy.Price{Nanos: 2_500_000_000, Per: 1_000_000}, "2.5/1M"},
		"per other":    {policy.Price{Nanos: 1, Per: 10}, "0.000000001/10"},
	}
	for name, tc := range tests {
		t.Run(name, func(t *testing.T) {
			assert.Equal(t, tc.want, tc.in.String())
			assert.False(t, tc.in.IsZero())
		})
	}
	assert.True(t, policy.Price{}.IsZero())
	assert.True(t, policy.Price{Per: 1000}.IsZero())
}
