package policy_test

import (
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/tollgate/tollgate/policy"
)

// routing is a policy whose routes exercise every way of matching.
var routing = withPool(
	"routes:",
	"  openai-gpt-4:",
	"    host: api.openai.com",
	"    path_prefix: /v1/",
	`    models: [gpt-4, "gpt-4-*"]`,
	"    pools: [p]",
	"  openai-other:",
	"    host: API.OpenAI.com", // hosts are matched without case
	"    path_prefix: /v1/",
	"    pools: [p]",
	"  wildcard:",
	`    host: "*.example.com"`,
	"    pools: [p]",
	"  any-host:",
	"    path_prefix: /any/",
	"    pools: [p]",
	"  short:",
	"    host: longest.test",
	"    path_prefix: /",
	"    pools: [p]",
	"  middle:",
	"    host: longest.test",
	"    path_prefix: /v1/",
	"    pools: [p]",
	"  long:",
	"    host: longest.test",
	"    path_prefix: /v1/chat/",
	"    pools: [p]",
	"  ipv6:",
	`    host: "::1"`,
	"    pools: [p]",
)

func TestMatchRoute(t *testing.T) {
	s := mustCompile(t, routing)
	tests := map[string]struct {
		host, path, model string
		want              string // route name, "" for nil
	}{
		"exact host":                        {"api.openai.com", "/v1/files", "", "openai-other"},
		"host in upper case":                {"API.OPENAI.COM", "/v1/files", "", "openai-other"},
		"host with port":                    {"api.openai.com:443", "/v1/files", "", "openai-other"},
		"exact host, wrong prefix":          {"api.openai.com", "/v2/files", "", ""},
		"wildcard subdomain":                {"eu.example.com", "/anything", "", "wildcard"},
		"wildcard nested subdomain":         {"a.b.example.com", "/", "", "wildcard"},
		"wildcard with port":                {"eu.example.com:8443", "/", "", "wildcard"},
		"wildcard does not match the apex":  {"example.com", "/x", "", ""},
		"wildcard does not match a lookali": {"notexample.com", "/x", "", ""},
		"empty route host matches any host": {"whatever.test", "/any/thing", "", "any-host"},
		"empty request host":                {"", "/any/thing", "", "any-host"},
		"empty request host, other path":    {"", "/v1/files", "", ""},
		"exact host beats any host":         {"longest.test", "/any/thing", "", "short"},
		"longest prefix wins":               {"longest.test", "/v1/chat/completions", "", "long"},
		"middle prefix":                     {"longest.test", "/v1/models", "", "middle"},
		"shortest prefix":                   {"longest.test", "/health", "", "short"},
		"model route beats model-less":      {"api.openai.com", "/v1/chat/completions", "gpt-4", "openai-gpt-4"},
		"glob matches gpt-4-turbo":          {"api.openai.com", "/v1/chat/completions", "gpt-4-turbo", "openai-gpt-4"},
		"glob does not match gpt-4o":        {"api.openai.com", "/v1/chat/completions", "gpt-4o", "openai-other"},
		"exact model is case sensitive":     {"api.openai.com", "/v1/chat/completions", "GPT-4", "openai-other"},
		"no model falls to model-less":      {"api.openai.com", "/v1/chat/completions", "", "openai-other"},
		"bracketed IPv6 with port":          {"[::1]:8080", "/", "", "ipv6"},
		"bare IPv6":                         {"::1", "/", "", "ipv6"},
		"no match":                          {"api.anthropic.com", "/v1/messages", "claude-3", ""},
	}
	for name, tc := range tests {
		t.Run(name, func(t *testing.T) {
			r := s.MatchRoute(tc.host, tc.path, tc.model)
			if tc.want == "" {
				assert.Nil(t, r, "matched %v", r)
				return
			}
			require.NotNil(t, r)
			assert.Equal(t, tc.want, r.Name)
		})
	}
}

// TestMatchRouteMostSpecificModel: among routes of one rank with models,
// the most specific matching pattern wins, whatever the routes' names.
func TestMatchRouteMostSpecificModel(t *testing.T) {
	s := mustCompile(t, withPool(
		"routes:",
		"  a-broad:",
		"    host: api.openai.com",
		"    path_prefix: /v1/",
		`    models: ["gpt-4*"]`,
		"    pools: [p]",
		"  b-mini:",
		"    host: api.openai.com",
		"    path_prefix: /v1/",
		`    models: ["gpt-4o-mini*", "o4-mini"]`,
		"    pools: [p]",
		"  c-4o:",
		"    host: api.openai.com",
		"    path_prefix: /v1/",
		`    models: ["gpt-4o*"]`,
		"    pools: [p]",
		"  d-exact:",
		"    host: api.openai.com",
		"    path_prefix: /v1/",
		`    models: ["gpt-4o"]`,
		"    pools: [p]",
		"  e-other-host:",
		"    host: api.example.com",
		"    path_prefix: /v1/",
		`    models: ["gpt-4o-mini-2024*"]`,
		"    pools: [p]",
		"  rest:",
		"    host: api.openai.com",
		"    path_prefix: /v1/",
		"    pools: [p]",
		"  embeddings:",
		"    host: api.openai.com",
		"    path_prefix: /v1/embeddings",
		"    pools: [p]",
	))
	tests := map[string]struct{ model, path, want string }{
		"broad pattern":                   {"gpt-4.1", "/v1/chat/completions", "a-broad"},
		"longer pattern, later name":      {"gpt-4o-2024-08-06", "/v1/chat/completions", "c-4o"},
		"longest pattern":                 {"gpt-4o-mini-2024-07-18", "/v1/chat/completions", "b-mini"},
		"exact name beats its own prefix": {"gpt-4o", "/v1/chat/completions", "d-exact"},
		"exact in a list":                 {"o4-mini", "/v1/chat/completions", "b-mini"},
		"no model route matches":          {"o3", "/v1/chat/completions", "rest"},
		"a longer prefix still wins":      {"gpt-4o-mini", "/v1/embeddings", "embeddings"},
	}
	for name, tc := range tests {
		t.Run(name, func(t *testing.T) {
			r := s.MatchRoute("api.openai.com", tc.path, tc.model)
			require.NotNil(t, r)
			assert.Equal(t, tc.want, r.Name)
		})
	}
}

func TestRouteWantsModel(t *testing.T) {
	s := mustCompile(t, routing)
	tests := map[string]struct {
		host, path string
		want       bool
	}{
		"host with a model route":     {"api.openai.com", "/v1/chat/completions", true},
		"with port and upper case":    {"API.openai.com:443", "/v1/chat/completions", true},
		"outside the model prefix":    {"api.openai.com", "/v2/x", false},
		"host with no model route":    {"longest.test", "/v1/chat/completions", false},
		"wildcard host, no models":    {"eu.example.com", "/", false},
		"unknown host":                {"api.anthropic.com", "/v1/messages", false},
		"empty host, no model routes": {"", "/any/", false},
	}
	for name, tc := range tests {
		t.Run(name, func(t *testing.T) {
			assert.Equal(t, tc.want, s.RouteWantsModel(tc.host, tc.path))
		})
	}
}

func TestRouteOrder(t *testing.T) {
	s := mustCompile(t, routing)
	var names []string
	for _, r := range s.Routes {
		names = append(names, r.Name)
	}
	// Exact hosts first, then wildcards, then any host; within each, longer
	// prefixes first, then routes with models, then by name.
	assert.Equal(t, []string{"long", "openai-gpt-4", "middle", "openai-other", "ipv6", "short", "wildcard", "any-host"}, names)
}

func TestRouteDefaults(t *testing.T) {
	s := mustCompile(t, withPool(
		"  tok:",
		"    unit: token",
		"    capacity: 10",
		"    refill_per_second: 1",
		"routes:",
		"  bare:",
		"    pools: p", // a single name is a list of one
		"  llm:",
		"    host: llm.test",
		"    pools: [p, tok]",
		"    default_max_tokens: 256",
	))
	bare := s.MatchRoute("x", "/", "")
	require.NotNil(t, bare)
	assert.Equal(t, "bare", bare.Name)
	assert.Equal(t, "", bare.Host)
	assert.Equal(t, "/", bare.PathPrefix)
	assert.Equal(t, policy.ProviderGeneric, bare.Provider)
	assert.Equal(t, int64(policy.DefaultMaxTokens), bare.DefaultMaxTokens)
	assert.Empty(t, bare.Models)
	assert.False(t, bare.LLM())

	llm := s.MatchRoute("llm.test", "/v1", "")
	require.NotNil(t, llm)
	assert.Equal(t, int64(256), llm.DefaultMaxTokens)
	assert.True(t, llm.LLM())
	assert.Equal(t, []*policy.Pool{s.Pools["p"], s.Pools["tok"]}, llm.Pools)
}

func TestSetClient(t *testing.T) {
	tiers := []string{
		"tiers:",
		"  gold:",
		"    priority: 30",
		"    max_concurrent: 10",
		"    monthly_budget: custom",
		"  free:",
		"    priority: 0",
		"    max_concurrent: 1",
		`    monthly_budget: "1"`,
		"clients:",
		"  acme:",
		"    tier: gold",
		`    monthly_budget: "$1,000"`,
		"  beta:",
		"    tier: gold",
	}
	tests := map[string]struct {
		defaults []string
		id       string
		ok       bool
		tier     string
		budget   policy.Money
		budgeted bool
	}{
		"known client with own budget":  {nil, "acme", true, "gold", 1000 * policy.NanosPerDollar, true},
		"known client of a custom tier": {nil, "beta", true, "gold", 0, false},
		"unknown client, default tier":  {[]string{"defaults:", "  unknown_client: free"}, "stranger", true, "free", policy.NanosPerDollar, true},
		"unknown client, deny":          {[]string{"defaults:", "  unknown_client: deny"}, "stranger", false, "", 0, false},
		"unknown client, no default":    {nil, "stranger", false, "", 0, false},
		"known client despite deny":     {[]string{"defaults:", "  unknown_client: deny"}, "acme", true, "gold", 1000 * policy.NanosPerDollar, true},
	}
	for name, tc := range tests {
		t.Run(name, func(t *testing.T) {
			s := mustCompile(t, withPool(append(append([]string{}, tiers...), tc.defaults...)...))
			c, ok := s.Client(tc.id)
			assert.Equal(t, tc.ok, ok)
			if !tc.ok {
				assert.Nil(t, c)
				return
			}
			require.NotNil(t, c)
			assert.Equal(t, tc.id, c.ID)
			assert.Same(t, s.Tiers[tc.tier], c.Tier)
			b, budgeted := c.Budget()
			assert.Equal(t, tc.budget, b)
			assert.Equal(t, tc.budgeted, budgeted)
		})
	}
}

func TestShadowed(t *testing.T) {
	tests := map[string]struct {
		src  []byte
		want map[string]bool
	}{
		"per pool": {
			src:  withPool("  s:", "    unit: request", "    capacity: 1", "    refill_per_second: 1", "    shadow: true"),
			want: map[string]bool{"p": false, "s": true},
		},
		"policy wide": {
			src:  withPool("defaults:", "  shadow: true"),
			want: map[string]bool{"p": true},
		},
	}
	for name, tc := range tests {
		t.Run(name, func(t *testing.T) {
			s := mustCompile(t, tc.src)
			for pool, want := range tc.want {
				assert.Equal(t, want, s.Shadowed(s.Pools[pool]), pool)
			}
		})
	}
}

// TestMatchRouteSegmentWildcard: a "*" segment of a path prefix stands for
// one segment of the path (Cloudflare's account and database ids).
func TestMatchRouteSegmentWildcard(t *testing.T) {
	s := mustCompile(t, withPool(
		"routes:",
		"  d1:",
		"    host: api.cloudflare.com",
		"    path_prefix: /client/v4/accounts/*/d1/database/*/query",
		"    pools: [p]",
		"  kv:",
		"    host: api.cloudflare.com",
		"    path_prefix: /client/v4/accounts/*/storage/kv/namespaces/*/values/",
		"    pools: [p]",
		"  rest:",
		"    host: api.cloudflare.com",
		"    path_prefix: /client/v4/",
		"    pools: [p]",
	))
	tests := map[string]struct{ path, want string }{
		"d1 query":                 {"/client/v4/accounts/023e105f/d1/database/a1b2/query", "d1"},
		"d1 raw query":             {"/client/v4/accounts/023e105f/d1/database/a1b2/raw", "rest"},
		"kv value":                 {"/client/v4/accounts/023e105f/storage/kv/namespaces/0f2a/values/my-key", "kv"},
		"kv key list":              {"/client/v4/accounts/023e105f/storage/kv/namespaces/0f2a/keys", "rest"},
		"empty account segment":    {"/client/v4/accounts//d1/database/a1b2/query", "rest"},
		"two segments for one":     {"/client/v4/accounts/a/b/d1/database/a1b2/query", "rest"},
		"the wildcard is no slash": {"/client/v4/accounts/a", "rest"},
	}
	for name, tc := range tests {
		t.Run(name, func(t *testing.T) {
			r := s.MatchRoute("api.cloudflare.com", tc.path, "")
			require.NotNil(t, r)
			assert.Equal(t, tc.want, r.Name)
		})
	}
	assert.Equal(t, "d1", s.MatchRouteFold("api.cloudflare.com", "/client/v4/Accounts/x/D1/database/y/query").Name,
		"a wrong-case spelling is found")
}

func TestRoutePricing(t *testing.T) {
	s := mustCompile(t, withPool(
		"routes:",
		"  a: {pools: [p], path_prefix: /a, pricing: pool}",
		"  b: {pools: [p], path_prefix: /b, pricing: model}",
		"  c: {pools: [p], path_prefix: /c}",
	))
	assert.Equal(t, policy.PricingPool, s.Route("a").Pricing)
	assert.Equal(t, policy.PricingModel, s.Route("b").Pricing)
	assert.Equal(t, policy.PricingModel, s.Route("c").Pricing)

	_, err := compile(withPool("routes:", "  a: {pools: [p], pricing: tokens}"))
	require.Error(t, err)
	assert.Contains(t, err.Error(), `routes.a.pricing: must be model or pool, got "tokens"`)
}
