package policy_test

import (
	"bufio"
	"bytes"
	"io/fs"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/tollgate/tollgate/policy"
)

// tierT is a valid tier "t" on lines 6–9 after withPool.
var tierT = []string{
	"tiers:",                // 6
	"  t:",                  // 7
	"    priority: 10",      // 8
	"    max_concurrent: 5", // 9
}

func TestCompileRefusals(t *testing.T) {
	tests := map[string]struct {
		src  []byte
		want wantErr // file is always x.yaml
	}{
		// Unknown keys, with and without a did-you-mean.
		"unknown top-level key with suggestion": {
			src:  withPool("route: {}"),
			want: wantErr{line: 6, path: "", msg: `unknown field "route" (did you mean "routes"?)`},
		},
		"unknown top-level key lists the allowed": {
			src:  withPool("frobnicate: 1"),
			want: wantErr{line: 6, path: "", msg: `unknown field "frobnicate" (allowed: defaults, pools, routes, tiers, queue, models, clients, optimize, cache, alerts)`},
		},
		"unknown pool key": {
			src:  withPool(`    prize: "0.03/1K"`),
			want: wantErr{line: 6, path: "pools.p", msg: `unknown field "prize" (did you mean "price"?)`},
		},
		"unknown route key": {
			src:  withPool("routes:", "  r:", "    pools: [p]", "    hots: api.openai.com"),
			want: wantErr{line: 9, path: "routes.r", msg: `unknown field "hots" (did you mean "host"?)`},
		},
		"unknown tier key": {
			src:  withPool(append(tierT, "    max_concurent: 5")...),
			want: wantErr{line: 10, path: "tiers.t", msg: `unknown field "max_concurent" (did you mean "max_concurrent"?)`},
		},
		"unknown client key": {
			src:  withPool(append(tierT, "clients:", "  c:", "    tier: t", "    teir: t")...),
			want: wantErr{line: 13, path: "clients.c", msg: `unknown field "teir" (did you mean "tier"?)`},
		},
		"unknown defaults key": {
			src:  withPool("defaults:", "  unknown_clients: deny"),
			want: wantErr{line: 7, path: "defaults", msg: `unknown field "unknown_clients" (did you mean "unknown_client"?)`},
		},
		"unknown client_limits key": {
			src: withPool(append(tierT, "    client_limits:", "      p:", "        capacity: 1",
				"        refill_per_second: 1", "        burst: 1")...),
			want: wantErr{line: 14, path: "tiers.t.client_limits.p", msg: `unknown field "burst" (allowed: capacity, refill_per_second, refill)`},
		},

		// Wrong types.
		"string where a number is wanted": {
			src:  lines("pools:", "  p:", "    unit: request", `    capacity: "10"`, "    refill_per_second: 1"),
			want: wantErr{line: 4, path: "pools.p.capacity", msg: `must be a whole number, got the text "10"`},
		},
		"float capacity": {
			src:  lines("pools:", "  p:", "    unit: request", "    capacity: 1.5", "    refill_per_second: 1"),
			want: wantErr{line: 4, path: "pools.p.capacity", msg: "must be a whole number, got a decimal number"},
		},
		"integer beyond 64 bits": {
			src:  lines("pools:", "  p:", "    unit: request", "    capacity: !!int 99999999999999999999", "    refill_per_second: 1"),
			want: wantErr{line: 4, path: "pools.p.capacity", msg: `99999999999999999999 is too large for a whole number (at most 9223372036854775807)`},
		},
		// YAML types a decimal too large for 64 bits a float, and a
		// hexadecimal one text: neither is called a decimal number or text.
		"capacity too large for 64 bits": {
			src:  lines("pools:", "  p:", "    unit: request", "    capacity: 99999999999999999999", "    refill_per_second: 1"),
			want: wantErr{line: 4, path: "pools.p.capacity", msg: `99999999999999999999 is too large for a whole number (at most 9223372036854775807)`},
		},
		"capacity too large for 64 bits, with underscores": {
			src:  lines("pools:", "  p:", "    unit: request", "    capacity: 1_000_000_000_000_000_000_000", "    refill_per_second: 1"),
			want: wantErr{line: 4, path: "pools.p.capacity", msg: `1_000_000_000_000_000_000_000 is too large for a whole number (at most 9223372036854775807)`},
		},
		"capacity one past 64 bits": {
			src:  lines("pools:", "  p:", "    unit: request", "    capacity: 9223372036854775808", "    refill_per_second: 1"),
			want: wantErr{line: 4, path: "pools.p.capacity", msg: `9223372036854775808 is too large for a whole number (at most 9223372036854775807)`},
		},
		"hexadecimal capacity too large for 64 bits": {
			src:  lines("pools:", "  p:", "    unit: request", "    capacity: 0xFFFFFFFFFFFFFFFFFFFF", "    refill_per_second: 1"),
			want: wantErr{line: 4, path: "pools.p.capacity", msg: `0xFFFFFFFFFFFFFFFFFFFF is too large for a whole number (at most 9223372036854775807)`},
		},
		"negative number too large for 64 bits": {
			src:  lines("pools:", "  p:", "    unit: request", "    capacity: -99999999999999999999", "    refill_per_second: 1"),
			want: wantErr{line: 4, path: "pools.p.capacity", msg: `-99999999999999999999 is too small for a whole number (at least -9223372036854775808)`},
		},
		"quoted huge number is text": {
			src:  lines("pools:", "  p:", "    unit: request", `    capacity: "99999999999999999999"`, "    refill_per_second: 1"),
			want: wantErr{line: 4, path: "pools.p.capacity", msg: `must be a whole number, got the text "99999999999999999999"`},
		},
		"huge number where true or false is wanted": {
			src:  lines("pools:", "  p:", "    unit: request", "    capacity: 1", "    refill_per_second: 1", "    shadow: 99999999999999999999"),
			want: wantErr{line: 6, path: "pools.p.shadow", msg: `must be true or false, got a whole number too large for 64 bits`},
		},
		"exponent is still a decimal number": {
			src:  lines("pools:", "  p:", "    unit: request", "    capacity: 1e30", "    refill_per_second: 1"),
			want: wantErr{line: 4, path: "pools.p.capacity", msg: `must be a whole number, got a decimal number`},
		},
		"list where a mapping is wanted": {
			src:  withPool("tiers: [gold, silver]"),
			want: wantErr{line: 6, path: "tiers", msg: "must be a mapping of key: value lines, got a list"},
		},
		"text where a mapping is wanted": {
			src:  withPool("routes:", "  r: api.openai.com"),
			want: wantErr{line: 7, path: "routes.r", msg: `must be a mapping of key: value lines, got the text "api.openai.com"`},
		},
		"mapping where a list is wanted": {
			src:  withPool("routes:", "  r:", "    pools: {p: 1}"),
			want: wantErr{line: 8, path: "routes.r.pools", msg: "must be a list of names, got a mapping"},
		},
		"null in a list of names": {
			src:  withPool("routes:", "  r:", "    pools: [p, ~]"),
			want: wantErr{line: 8, path: "routes.r.pools[1]", msg: "must be a name, got nothing (null)"},
		},
		"bool where text is wanted": {
			src:  lines("pools:", "  p:", "    unit: true", "    capacity: 10", "    refill_per_second: 1"),
			want: wantErr{line: 3, path: "pools.p.unit", msg: "must be text, got a true/false value"},
		},
		"null where text is wanted": {
			src:  withPool("routes:", "  r:", "    host:", "    pools: [p]"),
			want: wantErr{line: 8, path: "routes.r.host", msg: "must be text, got nothing (null)"},
		},
		"text where a bool is wanted": {
			src:  withPool("defaults:", `  shadow: "yes"`),
			want: wantErr{line: 7, path: "defaults.shadow", msg: `must be true or false, got the text "yes"`},
		},
		"list where an amount is wanted": {
			src:  withPool(`    price: ["0.03", "1K"]`),
			want: wantErr{line: 6, path: "pools.p.price", msg: `must be an amount such as "1000" or "0.03/1K", got a list`},
		},
		"document that is not a mapping": {
			src:  lines("- pools"),
			want: wantErr{line: 1, path: "", msg: "must be a mapping of key: value lines, got a list"},
		},
		"complex key": {
			src:  withPool("? [a, b]", ": 1"),
			want: wantErr{line: 6, path: "", msg: "keys must be plain names"},
		},
		"merge key pointing at a scalar": {
			src:  withPool("routes:", "  r:", "    host: &h api.openai.com", "    pools: [p]", "  s:", "    <<: *h", "    pools: [p]"),
			want: wantErr{line: 11, path: "routes.s", msg: "a merge key (<<) must point at a mapping"},
		},

		// Buckets.
		"negative capacity": {
			src:  lines("pools:", "  p:", "    unit: request", "    capacity: -5", "    refill_per_second: 1"),
			want: wantErr{line: 4, path: "pools.p.capacity", msg: "must be positive, got -5"},
		},
		"zero capacity": {
			src:  lines("pools:", "  p:", "    unit: request", "    capacity: 0", "    refill_per_second: 1"),
			want: wantErr{line: 4, path: "pools.p.capacity", msg: "must be positive, got 0"},
		},
		"zero refill": {
			src:  lines("pools:", "  p:", "    unit: request", "    capacity: 10", "    refill_per_second: 0"),
			want: wantErr{line: 5, path: "pools.p.refill_per_second", msg: "must be positive, got 0"},
		},
		"negative refill": {
			src:  lines("pools:", "  p:", "    unit: request", "    capacity: 10", "    refill_per_second: -1"),
			want: wantErr{line: 5, path: "pools.p.refill_per_second", msg: "must be positive, got -1"},
		},
		"capacity over MaxCapacity": {
			src:  lines("pools:", "  p:", "    unit: request", "    capacity: 1_000_000_001", "    refill_per_second: 1"),
			want: wantErr{line: 4, path: "pools.p.capacity", msg: "must be at most 1000000000, got 1000000001"},
		},
		"refill over MaxCapacity": {
			src:  lines("pools:", "  p:", "    unit: request", "    capacity: 10", "    refill_per_second: 0x7fffffff"),
			want: wantErr{line: 5, path: "pools.p.refill_per_second", msg: "must be at most 1000000000, got 2147483647"},
		},
		"capacity too large for a rate per minute": {
			src:  lines("pools:", "  p:", "    unit: token", "    capacity: 400_000_000", "    refill: 10000/min"),
			want: wantErr{line: 4, path: "pools.p.capacity", msg: "must be at most 333333333 with refill 10000/min, got 400000000: a bucket of this rate is kept in 1/3 parts of a micro-unit, so capacity × 3 must stay within 1000000000"},
		},
		"capacity too large for a rate per day": {
			src:  lines("pools:", "  p:", "    unit: request", "    capacity: 20000", "    refill: 1/d"),
			want: wantErr{line: 4, path: "pools.p.capacity", msg: "must be at most 11574 with refill 1/d, got 20000"},
		},
		"refill of more than the most a second": {
			src:  lines("pools:", "  p:", "    unit: request", "    capacity: 100", "    refill: 60_000_000_001/min"),
			want: wantErr{line: 5, path: "pools.p.refill", msg: `rate "60_000_000_001/min" is more than 1000000000 units a second`},
		},
		"refill of a decimal rate": {
			src:  lines("pools:", "  p:", "    unit: request", "    capacity: 100", "    refill: 2.5/s"),
			want: wantErr{line: 5, path: "pools.p.refill", msg: `rate "2.5/s": want a whole number of units per period, as in 10000/min or 5/s`},
		},
		"refill of zero per hour": {
			src:  lines("pools:", "  p:", "    unit: request", "    capacity: 100", "    refill: 0/h"),
			want: wantErr{line: 5, path: "pools.p.refill", msg: `rate "0/h": must be positive`},
		},
		"refill as a list": {
			src:  lines("pools:", "  p:", "    unit: request", "    capacity: 100", "    refill: [1, min]"),
			want: wantErr{line: 5, path: "pools.p.refill", msg: `must be a rate such as 10000/min, 100/h or 5/s, got a list`},
		},
		"refill with an unknown period": {
			src:  lines("pools:", "  p:", "    unit: request", "    capacity: 100", "    refill: 100/week"),
			want: wantErr{line: 5, path: "pools.p.refill", msg: `unknown period "week" (use s, min, h or d, as in 10000/min)`},
		},
		"refill too large": {
			src:  lines("pools:", "  p:", "    unit: request", "    capacity: 100", "    refill: 99999999999999999999/s"),
			want: wantErr{line: 5, path: "pools.p.refill", msg: `99999999999999999999 is too large (at most 1000000000 a second)`},
		},
		"refill and refill_per_second": {
			src:  lines("pools:", "  p:", "    unit: request", "    capacity: 100", "    refill: 60/min", "    refill_per_second: 1"),
			want: wantErr{line: 5, path: "pools.p.refill", msg: "set refill or refill_per_second, not both"},
		},
		"refill_per_second too large for 64 bits": {
			src:  lines("pools:", "  p:", "    unit: request", "    capacity: 100", "    refill_per_second: 99999999999999999999"),
			want: wantErr{line: 5, path: "pools.p.refill_per_second", msg: "99999999999999999999 is too large for a whole number (at most 9223372036854775807)"},
		},
		"client limit capacity too large for a rate per day": {
			src: withPool(append(tierT, "    client_limits:", "      p:", "        capacity: 12000",
				"        refill: 1/d")...),
			want: wantErr{line: 12, path: "tiers.t.client_limits.p.capacity", msg: "must be at most 11574 with refill 1/d, got 12000"},
		},
		"client limit refill with an unknown period": {
			src: withPool(append(tierT, "    client_limits:", "      p:", "        capacity: 10",
				"        refill: 10/week")...),
			want: wantErr{line: 13, path: "tiers.t.client_limits.p.refill", msg: `rate "10/week": unknown period "week"`},
		},
		"missing capacity": {
			src:  lines("pools:", "  p:", "    unit: request", "    refill_per_second: 1"),
			want: wantErr{line: 2, path: "pools.p.capacity", msg: "is required"},
		},
		"missing refill": {
			src:  lines("pools:", "  p:", "    unit: request", "    capacity: 10"),
			want: wantErr{line: 2, path: "pools.p.refill_per_second", msg: "is required"},
		},
		"client limit with zero capacity": {
			src: withPool(append(tierT, "    client_limits:", "      p:", "        capacity: 0",
				"        refill_per_second: 1")...),
			want: wantErr{line: 12, path: "tiers.t.client_limits.p.capacity", msg: "must be positive, got 0"},
		},

		// Units and prices.
		"unknown unit": {
			src:  lines("pools:", "  p:", "    unit: tokens", "    capacity: 10", "    refill_per_second: 1"),
			want: wantErr{line: 3, path: "pools.p.unit", msg: `unknown unit "tokens" (one of token, request, segment, email)`},
		},
		"missing unit": {
			src:  lines("pools:", "  p:", "    capacity: 10", "    refill_per_second: 1"),
			want: wantErr{line: 2, path: "pools.p.unit", msg: "is required (one of token, request, segment, email)"},
		},
		"bad price": {
			src:  withPool("    price: three cents"),
			want: wantErr{line: 6, path: "pools.p.price", msg: `price "three cents": want a dollar amount`},
		},
		"negative price": {
			src:  withPool(`    price: "-0.03/1K"`),
			want: wantErr{line: 6, path: "pools.p.price", msg: `price "-0.03/1K" must not be negative`},
		},
		"price per zero units": {
			src:  withPool(`    price: "0.03/0"`),
			want: wantErr{line: 6, path: "pools.p.price", msg: "the part after / must be a positive count of units"},
		},

		// Routes.
		"route to a pool that does not exist": {
			src:  withPool("routes:", "  r:", "    pools: [p, gpt-5]"),
			want: wantErr{line: 8, path: "routes.r.pools", msg: `pool "gpt-5" does not exist (known: p)`},
		},
		"route with no pools key": {
			src:  withPool("routes:", "  r:", "    host: api.openai.com"),
			want: wantErr{line: 7, path: "routes.r.pools", msg: "a route needs at least one pool"},
		},
		"route with an empty pool list": {
			src:  withPool("routes:", "  r:", "    host: api.openai.com", "    pools: []"),
			want: wantErr{line: 9, path: "routes.r.pools", msg: "a route needs at least one pool"},
		},
		"pool listed twice in a route": {
			src:  withPool("routes:", "  r:", "    pools: [p, p]"),
			want: wantErr{line: 8, path: "routes.r.pools", msg: `pool "p" is listed twice`},
		},
		"path_prefix without leading slash": {
			src:  withPool("routes:", "  r:", "    path_prefix: v1/chat", "    pools: [p]"),
			want: wantErr{line: 8, path: "routes.r.path_prefix", msg: `must start with /, got "v1/chat"`},
		},
		"host with a scheme": {
			src:  withPool("routes:", "  r:", "    host: https://api.openai.com", "    pools: [p]"),
			want: wantErr{line: 8, path: "routes.r.host", msg: `got "https://api.openai.com"`},
		},
		"host with a star in the middle": {
			src:  withPool("routes:", "  r:", "    host: api.*.com", "    pools: [p]"),
			want: wantErr{line: 8, path: "routes.r.host", msg: `must be a host name, "*.domain" or empty for any host, got "api.*.com"`},
		},
		"host with a port": {
			src:  withPool("routes:", "  r:", "    host: api.openai.com:443", "    pools: [p]"),
			want: wantErr{line: 8, path: "routes.r.host", msg: "must not include a port"},
		},
		"host with a star and no dot": {
			src:  withPool("routes:", "  r:", `    host: "*example.com"`, "    pools: [p]"),
			want: wantErr{line: 8, path: "routes.r.host", msg: `got "*example.com"`},
		},
		"host with two stars": {
			src:  withPool("routes:", "  r:", `    host: "*.*.example.com"`, "    pools: [p]"),
			want: wantErr{line: 8, path: "routes.r.host", msg: `got "*.*.example.com"`},
		},
		"host with a space": {
			src:  withPool("routes:", "  r:", `    host: "api openai.com"`, "    pools: [p]"),
			want: wantErr{line: 8, path: "routes.r.host", msg: `got "api openai.com"`},
		},
		"unknown provider": {
			src:  withPool("routes:", "  r:", "    provider: openia", "    pools: [p]"),
			want: wantErr{line: 8, path: "routes.r.provider", msg: `unknown provider "openia" (one of generic, openai, anthropic, twilio, sendgrid)`},
		},
		"model pattern with an inner star": {
			src:  withPool("routes:", "  r:", `    models: [gpt-4, "gpt-*-turbo"]`, "    pools: [p]"),
			want: wantErr{line: 8, path: "routes.r.models[1]", msg: `must be a model name or a prefix ending in *, got "gpt-*-turbo"`},
		},
		"empty model name": {
			src:  withPool("routes:", "  r:", `    models: [""]`, "    pools: [p]"),
			want: wantErr{line: 8, path: "routes.r.models[0]", msg: `got ""`},
		},
		"zero default_max_tokens": {
			src:  withPool("routes:", "  r:", "    default_max_tokens: 0", "    pools: [p]"),
			want: wantErr{line: 8, path: "routes.r.default_max_tokens", msg: "must be positive, got 0"},
		},

		// Tiers and clients.
		"client in a tier that does not exist": {
			src:  withPool(append(tierT, "clients:", "  c:", "    tier: gold")...),
			want: wantErr{line: 12, path: "clients.c.tier", msg: `tier "gold" does not exist (known: t)`},
		},
		"client id a call could never carry": {
			src:  withPool(append(tierT, "clients:", `  "acme corp":`, "    tier: t")...),
			want: wantErr{line: 11, path: "clients.acme corp", msg: `id "acme corp" holds " " at byte 4: only A-Z a-z 0-9 . _ : - / are allowed; a call can never name such a client`},
		},
		"client without tier": {
			src:  withPool(append(tierT, "clients:", "  c:", `    monthly_budget: "5"`)...),
			want: wantErr{line: 11, path: "clients.c.tier", msg: "is required (known: t)"},
		},
		"client without tier and no tiers": {
			src:  withPool("clients:", "  c: {}"),
			want: wantErr{line: 7, path: "clients.c.tier", msg: "is required (none are defined)"},
		},
		"tier priority above 40": {
			src:  withPool("tiers:", "  t:", "    priority: 41", "    max_concurrent: 5"),
			want: wantErr{line: 8, path: "tiers.t.priority", msg: "must be between 0 and 40, got 41"},
		},
		"tier priority below 0": {
			src:  withPool("tiers:", "  t:", "    priority: -1", "    max_concurrent: 5"),
			want: wantErr{line: 8, path: "tiers.t.priority", msg: "must be between 0 and 40, got -1"},
		},
		"tier without priority": {
			src:  withPool("tiers:", "  t:", "    max_concurrent: 5"),
			want: wantErr{line: 7, path: "tiers.t.priority", msg: "is required (0 to 40 points)"},
		},
		"max_concurrent 0": {
			src:  withPool("tiers:", "  t:", "    priority: 10", "    max_concurrent: 0"),
			want: wantErr{line: 9, path: "tiers.t.max_concurrent", msg: "must be positive, got 0"},
		},
		"tier without max_concurrent": {
			src:  withPool("tiers:", "  t:", "    priority: 10"),
			want: wantErr{line: 7, path: "tiers.t.max_concurrent", msg: "is required"},
		},
		"bad tier monthly_budget": {
			src:  withPool(append(tierT, "    monthly_budget: lots")...),
			want: wantErr{line: 10, path: "tiers.t.monthly_budget", msg: `want a dollar amount such as "1000", "$1,000.50" or "0.0075" (or "custom" for a per-client budget)`},
		},
		"negative tier monthly_budget": {
			src:  withPool(append(tierT, `    monthly_budget: "-1"`)...),
			want: wantErr{line: 10, path: "tiers.t.monthly_budget", msg: "must not be negative, got -1"},
		},
		"sub-nano tier monthly_budget": {
			src:  withPool(append(tierT, `    monthly_budget: "0.0000000001"`)...),
			want: wantErr{line: 10, path: "tiers.t.monthly_budget", msg: `"0.0000000001" is finer than a nano-dollar`},
		},
		"bad client monthly_budget": {
			src:  withPool(append(tierT, "clients:", "  c:", "    tier: t", "    monthly_budget: custom")...),
			want: wantErr{line: 13, path: "clients.c.monthly_budget", msg: "want a dollar amount"},
		},
		"sub-nano client monthly_budget": {
			src:  withPool(append(tierT, "clients:", "  c:", "    tier: t", "    monthly_budget: 0.0000000001")...),
			want: wantErr{line: 13, path: "clients.c.monthly_budget", msg: `"0.0000000001" is finer than a nano-dollar`},
		},
		"negative client monthly_budget": {
			src:  withPool(append(tierT, "clients:", "  c:", "    tier: t", "    monthly_budget: -0.5")...),
			want: wantErr{line: 13, path: "clients.c.monthly_budget", msg: "must not be negative, got -0.5"},
		},
		"client_limits naming a missing pool": {
			src: withPool(append(tierT, "    client_limits:", "      gpt-5:", "        capacity: 1",
				"        refill_per_second: 1")...),
			want: wantErr{line: 11, path: "tiers.t.client_limits.gpt-5", msg: `pool "gpt-5" does not exist (known: p)`},
		},

		// Duplicates within one file.
		"duplicate key in one mapping": {
			src:  withPool("    capacity: 20"),
			want: wantErr{line: 6, path: "pools.p.capacity", msg: "duplicate key (first set on line 4)"},
		},
		"duplicate pool name in one file": {
			src:  withPool("  p:", "    unit: token", "    capacity: 1", "    refill_per_second: 1"),
			want: wantErr{line: 6, path: "pools.p", msg: "duplicate key (first set on line 2)"},
		},
		"duplicate top-level key": {
			src:  withPool("pools: {}"),
			want: wantErr{line: 6, path: "pools", msg: "duplicate key (first set on line 1)"},
		},

		// Defaults.
		"unknown_client naming a missing tier": {
			src:  withPool(append(tierT, "defaults:", "  unknown_client: gold")...),
			want: wantErr{line: 11, path: "defaults.unknown_client", msg: `must be a tier name or "deny"; tier "gold" does not exist (known: t)`},
		},
		"unmatched_route neither allow nor deny": {
			src:  withPool("defaults:", "  unmatched_route: block"),
			want: wantErr{line: 7, path: "defaults.unmatched_route", msg: `must be "allow" or "deny", got "block"`},
		},
		"missing_client neither allow nor deny": {
			src:  withPool("defaults:", "  missing_client: required"),
			want: wantErr{line: 7, path: "defaults.missing_client", msg: `must be "allow" or "deny", got "required"`},
		},
		"invalid_request neither allow nor deny": {
			src:  withPool("defaults:", "  invalid_request: Deny"),
			want: wantErr{line: 7, path: "defaults.invalid_request", msg: `must be "allow" or "deny", got "Deny"`},
		},

		// The file as a whole.
		"invalid YAML syntax": {
			src:  withPool("  q: a: b"),
			want: wantErr{line: 6, path: "", msg: "not valid YAML: mapping values are not allowed in this context"},
		},
		"tab indentation": {
			src:  lines("pools:", "\tp: {}"),
			want: wantErr{line: 2, path: "", msg: "not valid YAML: found character that cannot start any token"},
		},
		"no pools": {
			src:  lines("tiers:", "  t:", "    priority: 10", "    max_concurrent: 5"),
			want: wantErr{line: 0, path: "pools", msg: "the policy defines no pools; at least one is needed"},
		},
		"empty file": {
			src:  nil,
			want: wantErr{line: 0, path: "pools", msg: "the policy defines no pools"},
		},
		"pools key with no value": {
			src:  lines("pools:"),
			want: wantErr{line: 0, path: "pools", msg: "the policy defines no pools"},
		},
	}
	for name, tc := range tests {
		t.Run(name, func(t *testing.T) {
			s, err := compile(tc.src)
			assert.Nil(t, s)
			errs := policyErrors(t, err)
			tc.want.file = "x.yaml"
			requireHasError(t, errs, tc.want)
			for _, e := range errs {
				assert.Equal(t, "x.yaml", e.File)
			}
		})
	}
}

// TestCompileInvalidYAMLHasLine checks that a syntax error that yaml.v3
// reports through its parser (not its scanner) still carries a line.
func TestCompileInvalidYAMLHasLine(t *testing.T) {
	_, err := compile(lines("pools:", "  p:", "    unit: request", "    capacity: [10", "    refill_per_second: 1"))
	errs := policyErrors(t, err)
	i := slices.IndexFunc(errs, func(e *policy.Error) bool { return strings.HasPrefix(e.Msg, "not valid YAML") })
	require.GreaterOrEqual(t, i, 0, describe(errs))
	assert.Positive(t, errs[i].Line)
	assert.Equal(t, "x.yaml", errs[i].File)
}

func TestCompileRefusalsAcrossFiles(t *testing.T) {
	a := lines(
		"pools:",                   // 1
		"  p:",                     // 2
		"    unit: request",        // 3
		"    capacity: 10",         // 4
		"    refill_per_second: 1", // 5
		"routes:",                  // 6
		"  r:",                     // 7
		"    pools: [p]",           // 8
		"tiers:",                   // 9
		"  t:",                     // 10
		"    priority: 10",         // 11
		"    max_concurrent: 5",    // 12
		"clients:",                 // 13
		"  c:",                     // 14
		"    tier: t",              // 15
		"defaults:",                // 16
		"  unknown_client: t",      // 17
		"  unmatched_route: deny",  // 18
	)
	tests := map[string]struct {
		b    []byte
		want wantErr
	}{
		"same pool in two files": {
			b:    lines("# pools", "pools:", "  p:", "    unit: token", "    capacity: 1", "    refill_per_second: 1"),
			want: wantErr{file: "b.yaml", line: 3, path: "pools.p", msg: `pool "p" is already defined at a.yaml:2`},
		},
		"same route in two files": {
			b:    lines("routes:", "  r:", "    pools: [p]"),
			want: wantErr{file: "b.yaml", line: 2, path: "routes.r", msg: `route "r" is already defined at a.yaml:7`},
		},
		"same tier in two files": {
			b:    lines("tiers:", "  t:", "    priority: 1", "    max_concurrent: 1"),
			want: wantErr{file: "b.yaml", line: 2, path: "tiers.t", msg: `tier "t" is already defined at a.yaml:10`},
		},
		"same client in two files": {
			b:    lines("clients:", "  c:", "    tier: t"),
			want: wantErr{file: "b.yaml", line: 2, path: "clients.c", msg: `client "c" is already defined at a.yaml:14`},
		},
		"unknown_client set twice": {
			b:    lines("defaults:", "  unknown_client: deny"),
			want: wantErr{file: "b.yaml", line: 2, path: "defaults.unknown_client", msg: "is already set at a.yaml:17"},
		},
		"unmatched_route set twice": {
			b:    lines("defaults:", "  unmatched_route: deny"),
			want: wantErr{file: "b.yaml", line: 2, path: "defaults.unmatched_route", msg: "is already set at a.yaml:18"},
		},
		"route in one file to a pool missing from both": {
			b:    lines("routes:", "  s:", "    pools: [q]"),
			want: wantErr{file: "b.yaml", line: 3, path: "routes.s.pools", msg: `pool "q" does not exist (known: p)`},
		},
	}
	for name, tc := range tests {
		t.Run(name, func(t *testing.T) {
			s, err := policy.Compile(policy.Source{Name: "a.yaml", Data: a}, policy.Source{Name: "b.yaml", Data: tc.b})
			assert.Nil(t, s)
			errs := policyErrors(t, err)
			requireHasError(t, errs, tc.want)
			assert.Len(t, errs, 1, describe(errs))
		})
	}
}

func TestCompileMergesAcrossFiles(t *testing.T) {
	s, err := policy.Compile(
		policy.Source{Name: "pools.yaml", Data: withPool("routes:", "  r:", "    pools: [p]", "defaults:", "  unmatched_route: deny")},
		policy.Source{Name: "tiers.yaml", Data: lines("tiers:", "  t:", "    priority: 10", "    max_concurrent: 5",
			"    client_limits:", "      p:", "        capacity: 2", "        refill_per_second: 1",
			"defaults:", "  unknown_client: t")},
		policy.Source{Name: "clients.yaml", Data: lines("clients:", "  c:", "    tier: t")},
	)
	require.NoError(t, err)
	assert.Equal(t, []string{"pools.yaml", "tiers.yaml", "clients.yaml"}, s.Files)
	assert.Same(t, s.Tiers["t"], s.Clients["c"].Tier)
	assert.Same(t, s.Tiers["t"], s.Defaults.UnknownClientTier)
	assert.Equal(t, policy.Deny, s.Defaults.UnmatchedRoute)
	assert.Equal(t, policy.Deny, s.Defaults.InvalidRequest)
	assert.Equal(t, policy.Limit{Capacity: 2, Refill: 1}, s.Tiers["t"].ClientLimits["p"])
	require.Len(t, s.Routes, 1)
	assert.Same(t, s.Pools["p"], s.Routes[0].Pools[0])
	assert.False(t, s.LoadedAt.IsZero())
}

func TestCompileReportsAllErrorsAtOnce(t *testing.T) {
	_, err := compile(lines(
		"pools:",                   // 1
		"  p:",                     // 2
		"    unit: tokens",         // 3: unknown unit
		"    capacity: 0",          // 4: not positive
		"    refill_per_second: 1", // 5
		"routes:",                  // 6
		"  r:",                     // 7
		"    provider: openia",     // 8: unknown provider
		"    pools: [p]",           // 9
	))
	errs := policyErrors(t, err)
	require.Len(t, errs, 3, describe(errs))
	for i, w := range []wantErr{
		{file: "x.yaml", line: 3, path: "pools.p.unit", msg: `unknown unit "tokens"`},
		{file: "x.yaml", line: 4, path: "pools.p.capacity", msg: "must be positive, got 0"},
		{file: "x.yaml", line: 8, path: "routes.r.provider", msg: `unknown provider "openia"`},
	} {
		assert.Equal(t, w.file, errs[i].File)
		assert.Equal(t, w.line, errs[i].Line)
		assert.Equal(t, w.path, errs[i].Path)
		assert.Contains(t, errs[i].Msg, w.msg)
	}
	assert.Contains(t, err.Error(), "x.yaml:3: pools.p.unit: unknown unit")
	assert.Equal(t, 3, strings.Count(err.Error(), "\n")+1, "errors.Join puts one error on each line")
}

// A value that is present but of the wrong type is one mistake: it must not
// also be reported as missing.
func TestCompileOneErrorPerMistake(t *testing.T) {
	for name, src := range map[string][]byte{
		"float capacity": lines("pools:", "  p:", "    unit: token", "    capacity: 1.5", "    refill_per_second: 1"),
		"bool unit":      lines("pools:", "  p:", "    unit: true", "    capacity: 1", "    refill_per_second: 1"),
		"syntax error":   lines("pools:", "  p: [1"),
	} {
		t.Run(name, func(t *testing.T) {
			_, err := compile(src)
			errs := policyErrors(t, err)
			require.Len(t, errs, 1, describe(errs))
		})
	}
}

func TestCompileSortsErrorsByFileThenLine(t *testing.T) {
	// Sources are given out of order, and within b.yaml the errors are found
	// out of line order (pools are checked before the defaults above them).
	b := lines(
		"defaults:",                // 1
		"  unmatched_route: block", // 2
		"pools:",                   // 3
		"  p:",                     // 4
		"    unit: tokens",         // 5
		"    capacity: 10",         // 6
		"    refill_per_second: 1", // 7
	)
	a := lines(
		"tiers:",                // 1
		"  t:",                  // 2
		"    priority: 99",      // 3
		"    max_concurrent: 0", // 4
	)
	_, err := policy.Compile(policy.Source{Name: "b.yaml", Data: b}, policy.Source{Name: "a.yaml", Data: a})
	errs := policyErrors(t, err)
	type loc struct {
		file string
		line int
	}
	var got []loc
	for _, e := range errs {
		got = append(got, loc{e.File, e.Line})
	}
	assert.Equal(t, []loc{{"a.yaml", 3}, {"a.yaml", 4}, {"b.yaml", 2}, {"b.yaml", 5}}, got, describe(errs))
}

func TestErrorString(t *testing.T) {
	tests := map[string]struct {
		err  policy.Error
		want string
	}{
		"file line path": {policy.Error{File: "a.yaml", Line: 3, Path: "pools.p", Msg: "bad"}, "a.yaml:3: pools.p: bad"},
		"no line":        {policy.Error{File: "a.yaml", Path: "pools", Msg: "none"}, "a.yaml: pools: none"},
		"no path":        {policy.Error{File: "a.yaml", Line: 1, Msg: "not valid YAML"}, "a.yaml:1: not valid YAML"},
	}
	for name, tc := range tests {
		t.Run(name, func(t *testing.T) {
			assert.Equal(t, tc.want, tc.err.Error())
		})
	}
}

func TestCompileMergeKeys(t *testing.T) {
	s := mustCompile(t, lines(
		"pools:",
		"  a: &shape",
		"    unit: token",
		"    capacity: 10",
		"    refill_per_second: 1",
		"  b:",
		"    capacity: 20", // an explicit key beats the merged one, before or after it
		"    <<: *shape",
		"    refill_per_second: 2",
	))
	assert.Equal(t, policy.UnitToken, s.Pools["b"].Unit)
	assert.Equal(t, policy.Limit{Capacity: 20, Refill: 2}, s.Pools["b"].Limit)
	assert.Equal(t, policy.Limit{Capacity: 10, Refill: 1}, s.Pools["a"].Limit)

	_, err := compile(lines(
		"pools:",
		"  a: &shape",
		"    unit: token",
		"    capacity: 10",
		"    refill_per_second: 1",
		"  b:",
		"    <<: *shape",
		"    capacity: 20",
		"    capacity: 30", // line 9: explicit twice is still a duplicate
	))
	requireHasError(t, policyErrors(t, err), wantErr{file: "x.yaml", line: 9, path: "pools.b.capacity", msg: "duplicate key (first set on line 8)"})
}

func TestParse(t *testing.T) {
	s, err := policy.Parse("stdin", bytes.NewReader(withPool()))
	require.NoError(t, err)
	assert.Equal(t, []string{"stdin"}, s.Files)

	_, err = policy.Parse("stdin", strings.NewReader("pools: [\n"))
	errs := policyErrors(t, err)
	assert.Equal(t, "stdin", errs[0].File)
}

func TestLoadTiersDirectory(t *testing.T) {
	dir := filepath.Join("..", "testdata", "good", "tiers")
	s, err := policy.Load(dir)
	require.NoError(t, err)

	assert.Equal(t, []string{
		filepath.Join(dir, "basic.yaml"),
		filepath.Join(dir, "pools.yaml"),
		filepath.Join(dir, "premium.yaml"),
	}, s.Files, "files load in lexical order")
	assert.Len(t, s.Pools, 3)
	assert.Len(t, s.Routes, 3)
	assert.Len(t, s.Tiers, 2)
	assert.Len(t, s.Clients, 3)

	premium, basic := s.Tiers["premium"], s.Tiers["basic"]
	require.NotNil(t, premium)
	require.NotNil(t, basic)
	assert.Same(t, basic, s.Defaults.UnknownClientTier, "defaults in pools.yaml name a tier from basic.yaml")
	assert.Equal(t, map[string]policy.Limit{"gpt-4": {Capacity: 2000, Refill: 100, Per: 3 * time.Second}}, basic.ClientLimits, "2000/min")
	assert.Equal(t, policy.Limit{Capacity: 10_000, Refill: 500, Per: 3 * time.Second}, s.Pools["gpt-4"].Limit, "10000/min")
	assert.Empty(t, premium.ClientLimits)

	tests := map[string]struct {
		tier   *policy.Tier
		budget policy.Money
	}{
		"acme-prod":    {premium, 1000 * policy.NanosPerDollar},
		"acme-staging": {premium, 1000 * policy.NanosPerDollar},
		"hobbyist-42":  {basic, 25_500_000_000}, // its own, not the tier's $100
	}
	for id, tc := range tests {
		t.Run(id, func(t *testing.T) {
			c, ok := s.Client(id)
			require.True(t, ok)
			assert.Same(t, s.Clients[id], c)
			assert.Same(t, tc.tier, c.Tier)
			b, budgeted := c.Budget()
			assert.True(t, budgeted)
			assert.Equal(t, tc.budget, b)
		})
	}

	r := s.MatchRoute("api.openai.com", "/v1/chat/completions", "gpt-4-turbo")
	require.NotNil(t, r)
	assert.Equal(t, "openai-gpt-4", r.Name)
	assert.Same(t, s.Pools["gpt-4"], r.Pools[0])
}

func TestLoadTour(t *testing.T) {
	s, err := policy.Load(filepath.Join("..", "testdata", "good", "tour.yaml"))
	require.NoError(t, err)

	require.Len(t, s.Pools, 1)
	demo := s.Pools["demo"]
	require.NotNil(t, demo)
	assert.Equal(t, policy.UnitRequest, demo.Unit)
	assert.Equal(t, policy.Limit{Capacity: 3, Refill: 1}, demo.Limit)
	assert.True(t, demo.Price.IsZero())

	r := s.MatchRoute("api.openai.com", "/v1/chat/completions", "gpt-4o")
	require.NotNil(t, r)
	assert.Equal(t, "demo", r.Name)
	assert.Equal(t, policy.ProviderOpenAI, r.Provider)
	assert.Equal(t, []*policy.Pool{demo}, r.Pools)
	assert.False(t, r.LLM())
	assert.Nil(t, s.MatchRoute("api.anthropic.com", "/v1/messages", ""))

	basic := s.Tiers["basic"]
	require.NotNil(t, basic)
	assert.Equal(t, 10, basic.Priority)
	assert.Equal(t, int64(5), basic.MaxConcurrent)
	assert.True(t, basic.Budgeted)
	assert.Equal(t, 100*policy.NanosPerDollar, basic.MonthlyBudget)
	assert.Same(t, basic, s.Defaults.UnknownClientTier)
	assert.Equal(t, policy.Allow, s.Defaults.UnmatchedRoute)
}

func TestLoadAnchors(t *testing.T) {
	s, err := policy.Load(filepath.Join("..", "testdata", "good", "anchors.yaml"))
	require.NoError(t, err)
	batch := s.Pools["gpt-4-batch"]
	require.NotNil(t, batch)
	assert.Equal(t, policy.UnitToken, batch.Unit)
	assert.Equal(t, s.Pools["gpt-4"].Limit, batch.Limit)
	assert.Equal(t, policy.Price{Nanos: 15_000_000, Per: 1000}, batch.Price)
	assert.Equal(t, int64(10), s.Tiers["standard-eu"].MaxConcurrent)
	assert.Equal(t, 20, s.Tiers["standard-eu"].Priority)
	r := s.MatchRoute("api.openai.com", "/v1/batches/abc", "")
	require.NotNil(t, r)
	assert.Equal(t, "openai-batch", r.Name)
}

func TestLoadIgnoresNonYAMLAndDotfiles(t *testing.T) {
	dir := t.TempDir()
	write := func(rel string, data []byte) {
		t.Helper()
		p := filepath.Join(dir, rel)
		require.NoError(t, os.MkdirAll(filepath.Dir(p), 0o755))
		require.NoError(t, os.WriteFile(p, data, 0o644))
	}
	broken := []byte("this: [is not loaded\n")
	write("pools.yaml", withPool())
	write("sub/tiers.yml", lines("tiers:", "  t:", "    priority: 1", "    max_concurrent: 1"))
	write("README.md", broken)
	write("pools.yaml.bak", broken)
	write("pools.yaml~", broken)
	write(".pools.yaml.swp", broken)
	write(".hidden.yaml", broken)
	write(".git/config.yaml", broken)

	files, err := policy.Files(dir)
	require.NoError(t, err)
	assert.Equal(t, []string{filepath.Join(dir, "pools.yaml"), filepath.Join(dir, "sub", "tiers.yml")}, files)

	s, err := policy.Load(dir)
	require.NoError(t, err)
	assert.Equal(t, files, s.Files)
	assert.Len(t, s.Pools, 1)
	assert.Len(t, s.Tiers, 1)
}

func TestLoadErrors(t *testing.T) {
	tests := map[string]struct {
		path  func(t *testing.T) string
		check func(t *testing.T, err error)
	}{
		"empty directory": {
			path: func(t *testing.T) string { return t.TempDir() },
			check: func(t *testing.T, err error) {
				assert.ErrorContains(t, err, "holds no .yaml or .yml files")
			},
		},
		"directory of dotfiles and other files only": {
			path: func(t *testing.T) string {
				dir := t.TempDir()
				require.NoError(t, os.WriteFile(filepath.Join(dir, ".p.yaml"), withPool(), 0o644))
				require.NoError(t, os.WriteFile(filepath.Join(dir, "p.json"), []byte("{}"), 0o644))
				return dir
			},
			check: func(t *testing.T, err error) {
				assert.ErrorContains(t, err, "holds no .yaml or .yml files")
			},
		},
		"missing path": {
			path: func(t *testing.T) string { return filepath.Join(t.TempDir(), "nope.yaml") },
			check: func(t *testing.T, err error) {
				assert.ErrorIs(t, err, fs.ErrNotExist)
			},
		},
		"error in a file of a directory names the file": {
			path: func(t *testing.T) string {
				dir := t.TempDir()
				require.NoError(t, os.WriteFile(filepath.Join(dir, "a.yaml"), withPool(), 0o644))
				require.NoError(t, os.WriteFile(filepath.Join(dir, "b.yaml"), lines("tiers:", "  t:", "    priority: 1"), 0o644))
				return dir
			},
			check: func(t *testing.T, err error) {
				errs := policyErrors(t, err)
				require.Len(t, errs, 1, describe(errs))
				assert.Equal(t, 2, errs[0].Line)
				assert.Equal(t, "tiers.t.max_concurrent", errs[0].Path)
				assert.Equal(t, "b.yaml", filepath.Base(errs[0].File))
			},
		},
	}
	for name, tc := range tests {
		t.Run(name, func(t *testing.T) {
			s, err := policy.Load(tc.path(t))
			assert.Nil(t, s)
			require.Error(t, err)
			tc.check(t, err)
		})
	}
}

// TestLoadBadFixtures loads each testdata/bad file and checks it is refused
// with the error its first line names.
func TestLoadBadFixtures(t *testing.T) {
	files, err := filepath.Glob(filepath.Join("..", "testdata", "bad", "*.yaml"))
	require.NoError(t, err)
	require.GreaterOrEqual(t, len(files), 10)
	for _, file := range files {
		t.Run(filepath.Base(file), func(t *testing.T) {
			want := wantLine(t, file)
			s, err := policy.Load(file)
			assert.Nil(t, s)
			require.ErrorContains(t, err, want)
			errs := policyErrors(t, err)
			i := slices.IndexFunc(errs, func(e *policy.Error) bool { return strings.Contains(e.Error(), want) })
			require.GreaterOrEqual(t, i, 0, describe(errs))
			for _, e := range errs {
				assert.Equal(t, file, e.File)
			}
			if errs[i].Path != "pools" || !strings.Contains(errs[i].Msg, "no pools") {
				assert.Positive(t, errs[i].Line, "error %v has no line", errs[i])
			}
		})
	}
}

// wantLine returns the text after "# want: " on the first line of file.
func wantLine(t *testing.T, file string) string {
	t.Helper()
	f, err := os.Open(file)
	require.NoError(t, err)
	defer f.Close()
	sc := bufio.NewScanner(f)
	require.True(t, sc.Scan(), "%s is empty", file)
	want, ok := strings.CutPrefix(sc.Text(), "# want: ")
	require.True(t, ok, "%s must start with a '# want: ' line", file)
	require.NotEmpty(t, strings.TrimSpace(want))
	return want
}

// TestGoodFixturesLoad keeps every testdata/good file and directory valid.
func TestGoodFixturesLoad(t *testing.T) {
	entries, err := os.ReadDir(filepath.Join("..", "testdata", "good"))
	require.NoError(t, err)
	for _, e := range entries {
		t.Run(e.Name(), func(t *testing.T) {
			_, err := policy.Load(filepath.Join("..", "testdata", "good", e.Name()))
			require.NoError(t, err)
		})
	}
}

func TestCompileClientParents(t *testing.T) {
	base := lines("pools:", "  p: {unit: request, capacity: 1, refill_per_second: 1}",
		"tiers:", "  t: {priority: 1, max_concurrent: 1}", "clients:")
	ok, err := compile(append(base, lines("  acme: {tier: t, monthly_budget: \"100\"}", "  acme/marketing: {tier: t, parent: acme}")...))
	require.NoError(t, err)
	require.Same(t, ok.Clients["acme"], ok.Clients["acme/marketing"].Parent)
	assert.Nil(t, ok.Clients["acme"].Parent)

	for name, tc := range map[string]struct {
		clients string
		want    wantErr
	}{
		"missing parent": {"  a: {tier: t, parent: ghost}", wantErr{line: 6, path: "clients.a.parent", msg: `client "ghost" does not exist`}},
		"own parent":     {"  a: {tier: t, parent: a}", wantErr{line: 6, path: "clients.a.parent", msg: "its own parent"}},
		"loop":           {"  a: {tier: t, parent: b}\n  b: {tier: t, parent: a}", wantErr{line: 6, path: "clients.a.parent", msg: "loops back"}},
	} {
		t.Run(name, func(t *testing.T) {
			_, err := compile(append(append([]byte{}, base...), []byte(tc.clients+"\n")...))
			tc.want.file = "x.yaml"
			requireHasError(t, policyErrors(t, err), tc.want)
		})
	}
}

func TestCompileBudgetDefaults(t *testing.T) {
	base := lines("pools:", "  p: {unit: request, capacity: 1, refill_per_second: 1}", "defaults:")
	set, err := compile(append(base, lines("  timezone: America/New_York", "  reservation_ttl: 90s", "  store_unavailable: allow")...))
	require.NoError(t, err)
	assert.Equal(t, "America/New_York", set.Defaults.Location.String())
	assert.Equal(t, 90*time.Second, set.Defaults.ReservationTTL)
	assert.Equal(t, policy.Allow, set.Defaults.StoreUnavailable)
	// 2026-12-01 03:00 UTC is still November in New York.
	assert.Equal(t, "2026-11", set.Defaults.Period(time.Date(2026, 12, 1, 3, 0, 0, 0, time.UTC)))
	assert.Equal(t, time.Date(2026, 12, 1, 5, 0, 0, 0, time.UTC), set.Defaults.PeriodEnd(time.Date(2026, 11, 15, 0, 0, 0, 0, time.UTC)).UTC())

	def, err := compile(base[:len(base)-len("defaults:\n")])
	require.NoError(t, err)
	assert.Equal(t, "UTC", def.Defaults.Location.String())
	assert.Equal(t, policy.DefaultReservationTTL, def.Defaults.ReservationTTL)
	assert.Equal(t, policy.Deny, def.Defaults.StoreUnavailable, "fail closed unless told otherwise")

	for name, tc := range map[string]struct {
		line string
		want wantErr
	}{
		"bad zone":      {"  timezone: Mars/Olympus", wantErr{line: 4, path: "defaults.timezone", msg: "unknown time zone"}},
		"bad ttl":       {"  reservation_ttl: soon", wantErr{line: 4, path: "defaults.reservation_ttl", msg: "must be a duration"}},
		"ttl too short": {"  reservation_ttl: 10ms", wantErr{line: 4, path: "defaults.reservation_ttl", msg: "between 1s and 24h"}},
		"bad fail mode": {"  store_unavailable: maybe", wantErr{line: 4, path: "defaults.store_unavailable", msg: "fail open"}},
	} {
		t.Run(name, func(t *testing.T) {
			_, err := compile(append(append([]byte{}, base...), []byte(tc.line+"\n")...))
			tc.want.file = "x.yaml"
			requireHasError(t, policyErrors(t, err), tc.want)
		})
	}
}

func TestCompileModels(t *testing.T) {
	set, err := compile(lines(
		"pools:", "  p: {unit: token, capacity: 1, refill_per_second: 1}",
		"models:",
		`  gpt-4o: {input: "2.50/1M", output: "10/1M", cached_input: "1.25/1M", image: "0.001275", max_output_tokens: 4096}`,
		`  "gpt-4o-mini*": {input: "0.15/1M", output: "0.60/1M"}`,
		`  "gpt-4*": {input: "30/1M", output: "60/1M"}`,
		`  "*": {input: "10/1M", output: "30/1M"}`,
		"defaults:", "  reservation: optimistic",
	))
	require.NoError(t, err)
	assert.Equal(t, policy.Optimistic, set.Defaults.Reservation)
	assert.Equal(t, int64(105), set.Defaults.Reservation.Percent())
	for name, tc := range map[string]struct {
		model string
		want  string
		known bool
	}{
		"exact":                  {"gpt-4o", "gpt-4o", true},
		"longest prefix wins":    {"gpt-4o-mini-2024-07-18", "gpt-4o-mini*", true},
		"shorter prefix":         {"gpt-4-turbo", "gpt-4*", true},
		"unknown falls to *":     {"claude-3", "*", false},
		"empty model falls to *": {"", "*", false},
	} {
		t.Run(name, func(t *testing.T) {
			m, known := set.Model(tc.model)
			require.NotNil(t, m)
			assert.Equal(t, tc.want, m.Name)
			assert.Equal(t, tc.known, known)
		})
	}
	m, _ := set.Model("gpt-4o")
	assert.Equal(t, policy.Money(100_000), m.Output.Cost(10), "10 output tokens at $10/1M is $0.0001")
	assert.Equal(t, policy.Price{Nanos: 1_250_000_000, Per: 1_000_000}, m.CachedInput)
	mini, _ := set.Model("gpt-4o-mini")
	assert.Equal(t, mini.Input, mini.CachedInput, "no stated discount: cached input costs full price")

	none, err := compile(lines("pools:", "  p: {unit: token, capacity: 1, refill_per_second: 1}"))
	require.NoError(t, err)
	m, known := none.Model("gpt-4o")
	assert.Nil(t, m, "no models and no *: nothing to price with")
	assert.False(t, known)
	assert.Equal(t, policy.Conservative, none.Defaults.Reservation)
	assert.Equal(t, int64(120), none.Defaults.Reservation.Percent())

	for name, tc := range map[string]struct {
		src  []byte
		want wantErr
	}{
		"missing output": {lines("pools:", "  p: {unit: token, capacity: 1, refill_per_second: 1}", "models:", `  m: {input: "1/1M"}`),
			wantErr{line: 4, path: "models.m.output", msg: "is required"}},
		"bad price": {lines("pools:", "  p: {unit: token, capacity: 1, refill_per_second: 1}", "models:", `  m: {input: "cheap", output: "1/1M"}`),
			wantErr{line: 4, path: "models.m.input", msg: "price"}},
		"star in the middle": {lines("pools:", "  p: {unit: token, capacity: 1, refill_per_second: 1}", "models:", `  "g*4": {input: "1", output: "1"}`),
			wantErr{line: 4, path: "models.g*4", msg: "prefix ending in *"}},
		"bad strategy": {lines("pools:", "  p: {unit: token, capacity: 1, refill_per_second: 1}", "defaults:", "  reservation: yolo"),
			wantErr{line: 4, path: "defaults.reservation", msg: `unknown strategy "yolo"`}},
	} {
		t.Run(name, func(t *testing.T) {
			_, err := compile(tc.src)
			tc.want.file = "x.yaml"
			requireHasError(t, policyErrors(t, err), tc.want)
		})
	}
}

func TestCompileCacheWrite(t *testing.T) {
	set := mustCompile(t, lines(
		"pools:", "  p: {unit: token, capacity: 1, refill_per_second: 1}",
		"models:",
		`  claude-sonnet-4: {input: "3/1M", output: "15/1M", cached_input: "0.30/1M", cache_write: "3.75/1M"}`,
		`  plain: {input: "1/1M", output: "2/1M"}`,
	))
	m, _ := set.Model("claude-sonnet-4")
	assert.Equal(t, policy.Price{Nanos: 3_750_000_000, Per: 1_000_000}, m.CacheWrite)
	p, _ := set.Model("plain")
	assert.Equal(t, p.Input, p.CacheWrite, "no stated surcharge: cache writes cost the input price")
}

func TestCompileAdaptive(t *testing.T) {
	base := []string{"pools:", "  p: {unit: token, capacity: 1, refill_per_second: 1}", "defaults:", "  reservation: adaptive"}
	set := mustCompile(t, lines(base...))
	assert.Equal(t, policy.Adaptive, set.Defaults.Reservation)
	assert.Equal(t, policy.DefaultAdaptive(), set.Defaults.Adaptive, "defaults when the block is absent")

	set = mustCompile(t, lines(append(base, "  adaptive:", "    percentile: 90", "    min_percent: 80", "    window: 50", "    min_samples: 5")...))
	assert.Equal(t, policy.AdaptiveConfig{Percentile: 90, MinPercent: 80, MaxPercent: 120, Window: 50, MinSamples: 5}, set.Defaults.Adaptive)

	for name, tc := range map[string]struct {
		extra []string
		want  wantErr
	}{
		"percentile over 100":   {[]string{"  adaptive: {percentile: 101}"}, wantErr{line: 5, path: "defaults.adaptive.percentile", msg: "between 1 and 100"}},
		"zero window":           {[]string{"  adaptive: {window: 0}"}, wantErr{line: 5, path: "defaults.adaptive.window", msg: "between 1 and"}},
		"min above max":         {[]string{"  adaptive: {min_percent: 150, max_percent: 110}"}, wantErr{line: 5, path: "defaults.adaptive", msg: "above max_percent"}},
		"warm-up beyond window": {[]string{"  adaptive: {window: 10, min_samples: 11}"}, wantErr{line: 5, path: "defaults.adaptive", msg: "never learn"}},
		"unknown key":           {[]string{"  adaptive: {percentil: 90}"}, wantErr{line: 5, path: "defaults.adaptive", msg: `did you mean "percentile"`}},
		"not a mapping":         {[]string{"  adaptive: 95"}, wantErr{line: 5, path: "defaults.adaptive", msg: "must be a mapping"}},
	} {
		t.Run(name, func(t *testing.T) {
			_, err := compile(lines(append(base, tc.extra...)...))
			tc.want.file = "x.yaml"
			requireHasError(t, policyErrors(t, err), tc.want)
		})
	}
}

func TestSetRoute(t *testing.T) {
	set := mustCompile(t, withPool("routes:", "  a: {pools: [p]}", "  b: {host: x.example, pools: [p]}"))
	require.NotNil(t, set.Route("b"))
	assert.Equal(t, "x.example", set.Route("b").Host)
	assert.Nil(t, set.Route("c"))
}
