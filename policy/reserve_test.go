package policy_test

import (
	"encoding/json"
	"strconv"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/tollgate/tollgate/policy"
)

// reservedPolicy is a pool "gpt-4" (lines 1-5) with reservation lines ls
// from line 6, then a route, two tiers and two clients.
func reservedPolicy(refill string, ls ...string) []byte {
	head := []string{
		"pools:",                // 1
		"  gpt-4:",              // 2
		"    unit: token",       // 3
		"    capacity: 10000",   // 4
		"    refill: " + refill, // 5
	}
	tail := []string{
		"routes:",
		"  openai:",
		"    host: api.openai.com",
		"    path_prefix: /v1/",
		"    provider: openai",
		"    pools: [gpt-4]",
		"tiers:",
		"  enterprise: {priority: 40, max_concurrent: 100}",
		"  basic: {priority: 10, max_concurrent: 5}",
		"clients:",
		"  acme: {tier: enterprise}",
		"  bob: {tier: basic}",
	}
	return lines(append(append(head, ls...), tail...)...)
}

func TestReservedSplit(t *testing.T) {
	tests := map[string]struct {
		refill string
		ls     []string
		shared policy.Limit
		parts  []policy.Part // kept, then lent when lendable, per reservation
	}{
		"never lent, 10000/min": {
			refill: "10000/min",
			ls:     []string{"    reserved:", "      - {tier: enterprise, share: 30%}"},
			shared: policy.Limit{Capacity: 7000, Refill: 350, Per: 3 * time.Second},
			parts:  []policy.Part{{Key: "#tier:enterprise", Limit: policy.Limit{Capacity: 3000, Refill: 50}}},
		},
		"lend idle, default keep": {
			refill: "10000/min",
			ls:     []string{"    reserved:", "      - {client: acme, share: 30%, lend: idle}"},
			shared: policy.Limit{Capacity: 7000, Refill: 350, Per: 3 * time.Second},
			parts: []policy.Part{
				{Key: "#client:acme#keep", Limit: policy.Limit{Capacity: 1500, Refill: 25}},
				{Key: "#client:acme#lend", Limit: policy.Limit{Capacity: 1500, Refill: 25}},
			},
		},
		"uneven shares round down, the shared part gets the rest": {
			refill: "10/d",
			ls: []string{"    reserved:",
				"      - {tier: enterprise, share: 33%, lend: idle, keep: 34%}",
				"      - {client: bob, share: 33%}"},
			shared: policy.Limit{Capacity: 3400, Refill: 1, Per: 6 * time.Hour},
			parts: []policy.Part{
				{Key: "#tier:enterprise#keep", Limit: policy.Limit{Capacity: 1122, Refill: 1, Per: 24 * time.Hour}},
				{Key: "#tier:enterprise#lend", Limit: policy.Limit{Capacity: 2178, Refill: 1, Per: 12 * time.Hour}},
				{Key: "#client:bob", Limit: policy.Limit{Capacity: 3300, Refill: 1, Per: 8 * time.Hour}},
			},
		},
	}
	for name, tc := range tests {
		t.Run(name, func(t *testing.T) {
			set := mustCompile(t, reservedPolicy(tc.refill, tc.ls...))
			p := set.Pools["gpt-4"]
			assert.Equal(t, tc.shared, p.SharedLimit())
			var parts []policy.Part
			for _, r := range p.Reserved {
				parts = append(parts, r.Kept)
				if r.Lent != nil {
					parts = append(parts, *r.Lent)
				}
			}
			assert.Equal(t, tc.parts, parts)
			requireSums(t, p)
		})
	}
}

// TestReservedSplitSums checks, over many shapes, that the parts always
// sum to the pool exactly.
func TestReservedSplitSums(t *testing.T) {
	for _, refill := range []string{"10000/min", "166/s", "7/h", "1000/d"} {
		for _, share := range []int{1, 17, 50, 99} {
			for _, keep := range []int{1, 33, 99} {
				data := reservedPolicy(refill, "    reserved:",
					"      - {tier: enterprise, share: "+itoa(share)+"%, lend: idle, keep: "+itoa(keep)+"%}")
				set, err := compile(data)
				if err != nil { // a part left empty is refused, never mis-split
					require.Contains(t, err.Error(), "needs both", "%s %d%% keep %d%%", refill, share, keep)
					continue
				}
				requireSums(t, set.Pools["gpt-4"])
			}
		}
	}
}

// requireSums requires a split pool's parts to sum to the pool exactly, in
// capacity and in refill (counted per day, where every period divides).
func requireSums(t *testing.T, p *policy.Pool) {
	t.Helper()
	perDay := func(l policy.Limit) int64 {
		per := int64(l.Per / time.Second)
		if per == 0 {
			per = 1
		}
		return l.Refill * (86400 / per)
	}
	sh := p.SharedLimit()
	capSum, refSum := sh.Capacity, perDay(sh)
	for _, r := range p.Reserved {
		capSum += r.Kept.Limit.Capacity
		refSum += perDay(r.Kept.Limit)
		if r.Lent != nil {
			capSum += r.Lent.Limit.Capacity
			refSum += perDay(r.Lent.Limit)
		}
	}
	require.Equal(t, p.Limit.Capacity, capSum, "capacity")
	require.Equal(t, perDay(p.Limit), refSum, "refill a day")
}

func itoa(n int) string { return strconv.Itoa(n) }

func TestReservedUnchangedWithout(t *testing.T) {
	set := mustCompile(t, reservedPolicy("10000/min"))
	p := set.Pools["gpt-4"]
	assert.Empty(t, p.Reserved)
	assert.Equal(t, p.Limit, p.SharedLimit())
	assert.Empty(t, set.Summary().Pools[0].Split)
}

func TestReservedErrors(t *testing.T) {
	tests := map[string]struct {
		refill string
		ls     []string
		want   wantErr
	}{
		"no owner":            {ls: []string{"    reserved:", "      - {share: 30%}"}, want: wantErr{line: 7, path: "pools.gpt-4.reserved[0]", msg: "exactly one owner"}},
		"two owners":          {ls: []string{"    reserved:", "      - {tier: basic, client: acme, share: 30%}"}, want: wantErr{line: 7, path: "pools.gpt-4.reserved[0]", msg: "exactly one owner"}},
		"unknown tier":        {ls: []string{"    reserved:", "      - tier: gold", "        share: 30%"}, want: wantErr{line: 7, path: "pools.gpt-4.reserved[0].tier", msg: `tier "gold" does not exist`}},
		"unknown client":      {ls: []string{"    reserved:", "      - share: 30%", "        client: zed"}, want: wantErr{line: 8, path: "pools.gpt-4.reserved[0].client", msg: `client "zed" does not exist`}},
		"missing share":       {ls: []string{"    reserved:", "      - {tier: basic}"}, want: wantErr{line: 7, path: "pools.gpt-4.reserved[0].share", msg: "is required"}},
		"share not a percent": {ls: []string{"    reserved:", "      - {tier: basic, share: 30}"}, want: wantErr{line: 7, path: "pools.gpt-4.reserved[0].share", msg: "whole percent"}},
		"share zero":          {ls: []string{"    reserved:", "      - {tier: basic, share: 0%}"}, want: wantErr{line: 7, path: "pools.gpt-4.reserved[0].share", msg: "between 1% and 100%"}},
		"shares over 100": {ls: []string{"    reserved:", "      - {tier: basic, share: 60%}", "      - {client: acme, share: 50%}"},
			want: wantErr{line: 7, path: "pools.gpt-4.reserved", msg: "sum to 110%"}},
		"shares at 100 leave no shared part": {ls: []string{"    reserved:", "      - {tier: basic, share: 60%}", "      - {client: acme, share: 40%}"},
			want: wantErr{line: 7, path: "pools.gpt-4.reserved", msg: "the shared part"}},
		"owner twice":       {ls: []string{"    reserved:", "      - {tier: basic, share: 10%}", "      - {tier: basic, share: 10%}"}, want: wantErr{line: 8, path: "pools.gpt-4.reserved[1]", msg: "already has a share"}},
		"unknown lend":      {ls: []string{"    reserved:", "      - {tier: basic, share: 10%, lend: always}"}, want: wantErr{line: 7, path: "pools.gpt-4.reserved[0].lend", msg: `unknown lend "always"`}},
		"keep without lend": {ls: []string{"    reserved:", "      - {tier: basic, share: 10%, keep: 20%}"}, want: wantErr{line: 7, path: "pools.gpt-4.reserved[0].keep", msg: "needs lend: idle"}},
		"keep 100":          {ls: []string{"    reserved:", "      - {tier: basic, share: 10%, lend: idle, keep: 100%}"}, want: wantErr{line: 7, path: "pools.gpt-4.reserved[0].keep", msg: "between 1% and 99%"}},
		"1/d cannot be split": {refill: "1/d", ls: []string{"    reserved:", "      - {tier: basic, share: 50%}"},
			want: wantErr{line: 7, path: "pools.gpt-4.reserved[0].share", msg: "needs both"}},
		"1/d at 100% leaves no shared part": {refill: "1/d", ls: []string{"    reserved:", "      - {tier: basic, share: 100%}"},
			want: wantErr{line: 7, path: "pools.gpt-4.reserved", msg: "the shared part"}},
		"unknown field": {ls: []string{"    reserved:", "      - {tier: basic, share: 10%, lent: idle}"}, want: wantErr{line: 7, path: "pools.gpt-4.reserved[0]", msg: `unknown field "lent"`}},
		"not a list":    {ls: []string{"    reserved: {tier: basic}"}, want: wantErr{line: 6, path: "pools.gpt-4.reserved", msg: "must be a list"}},
	}
	for name, tc := range tests {
		t.Run(name, func(t *testing.T) {
			refill := tc.refill
			if refill == "" {
				refill = "10000/min"
			}
			_, err := compile(reservedPolicy(refill, tc.ls...))
			errs := policyErrors(t, err)
			tc.want.file = "x.yaml"
			requireHasError(t, errs, tc.want)
		})
	}
}

// dedicatedPolicy has gpt-4 and, from line 6, the lines ls.
func dedicatedPolicy(ls ...string) []byte {
	return reservedPolicy("10000/min", ls...)
}

func TestDedicated(t *testing.T) {
	set := mustCompile(t, dedicatedPolicy(
		"  gpt-4-acme:",
		"    unit: token",
		"    capacity: 2000",
		"    refill: 2000/min",
		"    dedicated: {client: acme, instead_of: gpt-4}",
	))
	ded := set.Pools["gpt-4-acme"]
	require.NotNil(t, ded.Dedicated)
	assert.Same(t, set.Pools["gpt-4"], ded.Dedicated.InsteadOf)
	route := set.Route("openai")
	acme, bob := set.Clients["acme"], set.Clients["bob"]
	got := set.RouteFor(route, acme)
	require.NotSame(t, route, got)
	assert.Equal(t, "openai", got.Name)
	assert.Equal(t, []*policy.Pool{ded}, got.Pools)
	assert.Same(t, route, set.RouteFor(route, bob), "other clients keep the route")
	assert.Equal(t, []*policy.Pool{set.Pools["gpt-4"]}, route.Pools, "the shared route is untouched")
	unknown, _ := set.Client("stranger")
	assert.Same(t, route, set.RouteFor(route, unknown))
	var ds string
	for _, p := range set.Summary().Pools {
		if p.Name == "gpt-4-acme" {
			ds = p.Dedicated
		}
	}
	assert.Equal(t, "client acme instead of gpt-4", ds)
}

func TestDedicatedErrors(t *testing.T) {
	pool := []string{"  gpt-4-acme:", "    unit: token", "    capacity: 2000", "    refill: 2000/min"} // lines 6-9
	tests := map[string]struct {
		ls   []string
		want wantErr
	}{
		"unknown client": {ls: []string{"    dedicated: {client: zed, instead_of: gpt-4}"}, want: wantErr{line: 10, path: "pools.gpt-4-acme.dedicated.client", msg: `client "zed" does not exist`}},
		"missing client": {ls: []string{"    dedicated: {instead_of: gpt-4}"}, want: wantErr{line: 10, path: "pools.gpt-4-acme.dedicated.client", msg: "is required"}},
		"unknown pool":   {ls: []string{"    dedicated: {client: acme, instead_of: gpt-5}"}, want: wantErr{line: 10, path: "pools.gpt-4-acme.dedicated.instead_of", msg: `pool "gpt-5" does not exist`}},
		"missing pool":   {ls: []string{"    dedicated: {client: acme}"}, want: wantErr{line: 10, path: "pools.gpt-4-acme.dedicated.instead_of", msg: "is required"}},
		"itself":         {ls: []string{"    dedicated: {client: acme, instead_of: gpt-4-acme}"}, want: wantErr{line: 10, path: "pools.gpt-4-acme.dedicated.instead_of", msg: "itself dedicated"}},
		"other unit": {ls: []string{"    dedicated: {client: acme, instead_of: sms}", "  sms: {unit: segment, capacity: 5, refill: 5/s}"},
			want: wantErr{line: 10, path: "pools.gpt-4-acme.dedicated.instead_of", msg: "counts segments"}},
		"reserves shares": {ls: []string{"    dedicated: {client: acme, instead_of: gpt-4}", "    reserved:", "      - {tier: basic, share: 10%}"},
			want: wantErr{line: 12, path: "pools.gpt-4-acme.reserved", msg: "cannot reserve"}},
		"named by a route": {ls: []string{"    dedicated: {client: acme, instead_of: gpt-4}", "routes:", "  direct:", "    host: a.example", "    path_prefix: /", "    pools: [gpt-4-acme]"},
			want: wantErr{line: 15, path: "routes.direct.pools", msg: "dedicated to client \"acme\""}},
		"twice for one pool": {ls: []string{"    dedicated: {client: acme, instead_of: gpt-4}", "  gpt-4-acme2: {unit: token, capacity: 5, refill: 5/s, dedicated: {client: acme, instead_of: gpt-4}}"},
			want: wantErr{line: 11, path: "pools.gpt-4-acme2.dedicated", msg: "already has pool"}},
	}
	for name, tc := range tests {
		t.Run(name, func(t *testing.T) {
			_, err := compile(dedicatedPolicy(append(append([]string{}, pool...), tc.ls...)...))
			errs := policyErrors(t, err)
			tc.want.file = "x.yaml"
			requireHasError(t, errs, tc.want)
		})
	}
}

// TestReservedSummaryJSON: /debug/policy shows the split.
func TestReservedSummaryJSON(t *testing.T) {
	set := mustCompile(t, reservedPolicy("10000/min", "    reserved:", "      - {tier: enterprise, share: 30%}"))
	out, err := json.Marshal(set.Summary().Pools[0])
	require.NoError(t, err)
	var got struct {
		Split json.RawMessage `json:"split"`
	}
	require.NoError(t, json.Unmarshal(out, &got))
	assert.JSONEq(t, `[{"part":"shared","capacity":7000,"refill":"7000/min"},{"part":"tier enterprise","capacity":3000,"refill":"50/s"}]`, string(got.Split))
}
