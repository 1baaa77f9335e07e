package policy_test

import (
	"io/fs"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/tollgate/tollgate/policy"
)

// FuzzCompile checks that Compile never panics, and that it returns either a
// valid Set or only located *policy.Errors.
func FuzzCompile(f *testing.F) {
	f.Add(policy.DefaultSource().Data)
	// Reserved and dedicated pools at their edges: a rate too small to
	// split, shares at 100%, keep without lend, a dedicated pool named by
	// a route and replacing itself.
	for _, seed := range []string{
		"pools:\n  p: {unit: token, capacity: 7, refill: 1/d, reserved: [{tier: t, share: 50%}]}\ntiers:\n  t: {priority: 1, max_concurrent: 1}\n",
		"pools:\n  p: {unit: token, capacity: 100, refill: 7/h, reserved: [{tier: t, share: 99%, lend: idle, keep: 1%}, {client: c, share: 1%}]}\ntiers:\n  t: {priority: 1, max_concurrent: 1}\nclients:\n  c: {tier: t}\n",
		"pools:\n  p: {unit: token, capacity: 100, refill: 10000/min, reserved: [{client: c, share: 30%, keep: 20%}]}\ntiers:\n  t: {priority: 1, max_concurrent: 1}\nclients:\n  c: {tier: t}\n",
		"pools:\n  p: {unit: token, capacity: 100, refill: 5/s}\n  q: {unit: token, capacity: 9, refill: 1/s, dedicated: {client: c, instead_of: q}}\nroutes:\n  r: {host: a.example, path_prefix: /, pools: [q]}\ntiers:\n  t: {priority: 1, max_concurrent: 1}\nclients:\n  c: {tier: t}\n",
	} {
		f.Add([]byte(seed))
	}
	for _, dir := range []string{"good", "bad"} {
		root := filepath.Join("..", "testdata", dir)
		err := filepath.WalkDir(root, func(path string, d fs.DirEntry, err error) error {
			if err != nil || d.IsDir() {
				return err
			}
			data, err := os.ReadFile(path)
			if err != nil {
				return err
			}
			f.Add(data)
			return nil
		})
		require.NoError(f, err)
	}

	f.Fuzz(func(t *testing.T, data []byte) {
		s, err := policy.Compile(policy.Source{Name: "fuzz.yaml", Data: data})
		if err == nil {
			if s == nil {
				t.Fatal("Compile returned neither a Set nor an error")
			}
			checkSet(t, s)
			return
		}
		if s != nil {
			t.Fatalf("Compile returned a Set and an error: %v", err)
		}
		j, ok := err.(interface{ Unwrap() []error })
		if !ok {
			t.Fatalf("error is a %T, not an errors.Join: %v", err, err)
		}
		for _, e := range j.Unwrap() {
			pe, ok := e.(*policy.Error)
			if !ok {
				t.Fatalf("joined error is a %T, not a *policy.Error: %v", e, e)
			}
			if pe.File == "" {
				t.Fatalf("error has no file: %v", pe)
			}
		}
	})
}

// checkSet checks the invariants a compiled Set promises.
func checkSet(t *testing.T, s *policy.Set) {
	t.Helper()
	if len(s.Pools) == 0 {
		t.Fatal("a Set with no pools")
	}
	for name, p := range s.Pools {
		if p.Name != name {
			t.Fatalf("pool %q is named %q", name, p.Name)
		}
		checkLimit(t, "pool "+name, p.Limit)
		checkSplit(t, p)
		if d := p.Dedicated; d != nil && (d.InsteadOf == nil || s.Pools[d.InsteadOf.Name] != d.InsteadOf || s.Clients[d.Client] == nil) {
			t.Fatalf("dedicated pool %q points outside the Set: %+v", name, d)
		}
		if p.Price.Nanos < 0 || (!p.Price.IsZero() && p.Price.Per <= 0) {
			t.Fatalf("pool %q has price %+v", name, p.Price)
		}
	}
	for _, r := range s.Routes {
		if len(r.Pools) == 0 || !strings.HasPrefix(r.PathPrefix, "/") || r.DefaultMaxTokens <= 0 {
			t.Fatalf("invalid route %+v", r)
		}
		for _, p := range r.Pools {
			if s.Pools[p.Name] != p {
				t.Fatalf("route %q points at a pool outside the Set", r.Name)
			}
			if p.Dedicated != nil {
				t.Fatalf("route %q names dedicated pool %q", r.Name, p.Name)
			}
		}
		// A route must match a call made to its own host and prefix.
		host := r.Host
		if suffix, ok := strings.CutPrefix(host, "*"); ok {
			host = "x" + suffix
		}
		model := ""
		if len(r.Models) > 0 {
			model = strings.TrimSuffix(r.Models[0], "*")
			if model == "" {
				model = "m"
			}
		}
		if s.MatchRoute(host, r.PathPrefix, model) == nil {
			t.Fatalf("no route matches host %q path %q model %q, though route %q should", host, r.PathPrefix, model, r.Name)
		}
	}
	for name, tier := range s.Tiers {
		if tier.Priority < 0 || tier.Priority > 40 || tier.MaxConcurrent <= 0 || tier.MonthlyBudget < 0 {
			t.Fatalf("invalid tier %q: %+v", name, tier)
		}
		for pool, l := range tier.ClientLimits {
			checkLimit(t, "tier "+name+" client limit "+pool, l)
		}
	}
	for id, c := range s.Clients {
		if c.Tier == nil || s.Tiers[c.Tier.Name] != c.Tier || c.MonthlyBudget < 0 {
			t.Fatalf("invalid client %q: %+v", id, c)
		}
	}
	if a := s.Defaults.UnmatchedRoute; a != policy.Allow && a != policy.Deny {
		t.Fatalf("unmatched_route is %q", a)
	}
	if a := s.Defaults.InvalidRequest; a != policy.Allow && a != policy.Deny {
		t.Fatalf("invalid_request is %q", a)
	}
	if a := s.Defaults.MissingClient; a != policy.Allow && a != policy.Deny {
		t.Fatalf("missing_client is %q", a)
	}
}

// checkLimit checks what a compiled limit promises the limiter: a capacity
// and a rate a second within MaxCapacity, a period of whole seconds that
// divides a day, the rate in lowest terms, and capacity × the period in
// seconds within MaxCapacity (levels stay below 2^53).
func checkLimit(t *testing.T, what string, l policy.Limit) {
	t.Helper()
	den := int64(l.Per / time.Second)
	if l.Per == 0 {
		den = 1
	}
	if l.Capacity <= 0 || l.Capacity > policy.MaxCapacity || l.Refill <= 0 || l.Per < 0 || l.Per == time.Second ||
		l.Per%time.Second != 0 || 86_400%den != 0 || l.Refill > policy.MaxCapacity*den || l.Capacity > policy.MaxCapacity/den {
		t.Fatalf("%s has limit %+v", what, l)
	}
	for d := int64(2); d <= den; d++ {
		if l.Refill%d == 0 && den%d == 0 {
			t.Fatalf("%s has limit %+v, not in lowest terms", what, l)
		}
	}
}

// FuzzParsePrice checks that ParsePrice never panics, that what it accepts
// is a usable price, and that String gives it back.
func FuzzParsePrice(f *testing.F) {
	for _, s := range []string{
		"0.03/1K", "0.0015/1K", "0.0001", "0.0075", "$2.50/1M", "0.15/1m", "1.2/1000", "0.0001/1",
		"0.0000001", "0.0000000001", "0.00000000015/1K", "-0.03/1K", "three cents", "", "/", "/1K",
		"0.03/0", "1/9223372036854775807", "9223372036.854775807", "$1,000.50/K", "1e3",
	} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		p, err := policy.ParsePrice(s)
		if err != nil {
			return
		}
		if p.Nanos < 0 || p.Per <= 0 {
			t.Fatalf("ParsePrice(%q) = %+v", s, p)
		}
		if c := p.Cost(1); c < 0 || (p.Nanos > 0 && c == 0) {
			t.Fatalf("ParsePrice(%q) = %+v costs %d for one unit", s, p, c)
		}
		back, err := policy.ParsePrice(p.String())
		if err != nil || back != p {
			t.Fatalf("ParsePrice(%q) = %+v, String %q parses back as %+v, %v", s, p, p.String(), back, err)
		}
	})
}

// checkSplit requires a split pool's parts to be valid buckets that sum to
// the pool exactly (capacity, and refill counted per day).
func checkSplit(t *testing.T, p *policy.Pool) {
	t.Helper()
	if len(p.Reserved) == 0 {
		if p.SharedLimit() != p.Limit {
			t.Fatalf("pool %q without reservations has shared part %+v", p.Name, p.SharedLimit())
		}
		return
	}
	perDay := func(l policy.Limit) int64 {
		per := int64(l.Per / time.Second)
		if per == 0 {
			per = 1
		}
		return l.Refill * (86400 / per)
	}
	parts := []policy.Limit{p.SharedLimit()}
	for _, r := range p.Reserved {
		parts = append(parts, r.Kept.Limit)
		if r.Lent != nil {
			parts = append(parts, r.Lent.Limit)
		}
	}
	var capSum, refSum int64
	for _, l := range parts {
		checkLimit(t, "a part of pool "+p.Name, l)
		capSum += l.Capacity
		refSum += perDay(l)
	}
	if capSum != p.Limit.Capacity || refSum != perDay(p.Limit) {
		t.Fatalf("pool %q: parts sum to %d refilling %d a day, the pool is %+v", p.Name, capSum, refSum, p.Limit)
	}
}
