package policy_test

import (
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/tollgate/tollgate/policy"
)

// TestDefaultPools checks the bundled default against the Resource Manager's
// pool table.
func TestDefaultPools(t *testing.T) {
	s := policy.Default()
	tests := map[string]struct {
		unit     policy.Unit
		capacity int64
		refill   policy.Limit // its rate: Refill every Per
		price    policy.Price
		priceStr string
	}{
		// 10,000 a minute exactly: 500 every 3 s.
		"gpt-4":   {policy.UnitToken, 10000, policy.Limit{Refill: 500, Per: 3 * time.Second}, policy.Price{Nanos: 30_000_000, Per: 1000}, "0.03/1K"},
		"gpt-3.5": {policy.UnitToken, 90000, policy.Limit{Refill: 1500}, policy.Price{Nanos: 1_500_000, Per: 1000}, "0.0015/1K"},
		"email":   {policy.UnitEmail, 1000, policy.Limit{Refill: 16}, policy.Price{Nanos: 100_000, Per: 1}, "0.0001"},
		"sms":     {policy.UnitSegment, 500, policy.Limit{Refill: 8}, policy.Price{Nanos: 7_500_000, Per: 1}, "0.0075"},
		// Not in the Resource Manager's table: Anthropic is metered too.
		"claude": {policy.UnitToken, 40000, policy.Limit{Refill: 666}, policy.Price{Nanos: 3_000_000_000, Per: 1_000_000}, "3/1M"},
		// The seed's Cloudflare tables: D1 queries free, KV $0.0000005 a read.
		"d1": {policy.UnitRequest, 50000, policy.Limit{Refill: 833}, policy.Price{Nanos: 0, Per: 1}, "0"},
		"kv": {policy.UnitRequest, 100000, policy.Limit{Refill: 1666}, policy.Price{Nanos: 500, Per: 1}, "0.0000005"},
	}
	// Pools per current model family and per non-chat endpoint; their
	// sizes are tested by what they hold (default_traffic_test.go).
	others := []string{"gpt-5", "gpt-5-mini", "gpt-4.1", "gpt-4.1-mini", "gpt-4o", "gpt-4o-mini", "o-series", "o-mini",
		"openai-embeddings", "openai-files", "openai-batches", "openai-moderations", "openai-audio", "openai-images"}
	require.Len(t, s.Pools, len(tests)+len(others))
	for _, name := range others {
		require.Contains(t, s.Pools, name)
	}
	for name, tc := range tests {
		t.Run(name, func(t *testing.T) {
			p := s.Pools[name]
			require.NotNil(t, p)
			assert.Equal(t, name, p.Name)
			assert.Equal(t, tc.unit, p.Unit)
			assert.Equal(t, policy.Limit{Capacity: tc.capacity, Refill: tc.refill.Refill, Per: tc.refill.Per}, p.Limit)
			assert.Equal(t, tc.price, p.Price)
			assert.Equal(t, tc.priceStr, p.Price.String())
			assert.False(t, p.Shadow)
			assert.False(t, s.Shadowed(p))
		})
	}
}

func TestDefaultCosts(t *testing.T) {
	s := policy.Default()
	tests := map[string]struct {
		pool  string
		units int64
		want  policy.Money
	}{
		"1K gpt-4 tokens is 3 cents":     {"gpt-4", 1000, 30_000_000},
		"1 gpt-4 token rounds up":        {"gpt-4", 1, 30_000},
		"1 gpt-3.5 token is 1500 nanos":  {"gpt-3.5", 1, 1_500},
		"1M gpt-3.5 tokens is $1.50":     {"gpt-3.5", 1_000_000, 1_500_000_000},
		"one email is a hundredth cent":  {"email", 1, 100_000},
		"ten sms segments is 7.5 cents":  {"sms", 10, 75_000_000},
		"a full gpt-4 bucket is 30 cent": {"gpt-4", 10000, 300_000_000},
	}
	for name, tc := range tests {
		t.Run(name, func(t *testing.T) {
			assert.Equal(t, tc.want, s.Pools[tc.pool].Price.Cost(tc.units))
		})
	}
}

// TestDefaultTiers checks the bundled default against the Resource Manager's
// tier table.
func TestDefaultTiers(t *testing.T) {
	s := policy.Default()
	tests := map[string]struct {
		priority      int
		maxConcurrent int64
		budgeted      bool
		budget        policy.Money
	}{
		"enterprise": {40, 100, false, 0},
		"premium":    {30, 50, true, 1_000_000_000_000},
		"standard":   {20, 20, true, 500 * policy.NanosPerDollar},
		"basic":      {10, 5, true, 100 * policy.NanosPerDollar},
	}
	require.Len(t, s.Tiers, len(tests))
	for name, tc := range tests {
		t.Run(name, func(t *testing.T) {
			tier := s.Tiers[name]
			require.NotNil(t, tier)
			assert.Equal(t, name, tier.Name)
			assert.Equal(t, tc.priority, tier.Priority)
			assert.Equal(t, tc.maxConcurrent, tier.MaxConcurrent)
			assert.Equal(t, tc.budgeted, tier.Budgeted)
			assert.Equal(t, tc.budget, tier.MonthlyBudget)
			assert.Empty(t, tier.ClientLimits)
		})
	}
}

func TestDefaultDefaults(t *testing.T) {
	s := policy.Default()
	assert.Same(t, s.Tiers["basic"], s.Defaults.UnknownClientTier)
	assert.Equal(t, policy.Allow, s.Defaults.UnmatchedRoute)
	assert.Equal(t, policy.Allow, s.Defaults.MissingClient, "a call without an id is the client \"\" by default")
	assert.Equal(t, policy.Deny, s.Defaults.InvalidRequest)
	assert.False(t, s.Defaults.Shadow)
	assert.Empty(t, s.Clients)
	assert.Equal(t, []string{policy.DefaultSource().Name}, s.Files)

	c, ok := s.Client("someone")
	require.True(t, ok)
	assert.Equal(t, "someone", c.ID)
	b, budgeted := c.Budget()
	assert.True(t, budgeted)
	assert.Equal(t, 100*policy.NanosPerDollar, b)
}

func TestDefaultRoutes(t *testing.T) {
	s := policy.Default()
	tests := map[string]struct {
		host, path, model string
		route             string // "" for no match
		pool              string
		provider          policy.Provider
	}{
		"gpt-4":               {"api.openai.com", "/v1/chat/completions", "gpt-4", "openai-gpt-4", "gpt-4", policy.ProviderOpenAI},
		"gpt-4-turbo":         {"api.openai.com", "/v1/chat/completions", "gpt-4-turbo", "openai-gpt-4", "gpt-4", policy.ProviderOpenAI},
		"gpt-3.5-turbo":       {"api.openai.com", "/v1/chat/completions", "gpt-3.5-turbo-0125", "openai-gpt-3.5", "gpt-3.5", policy.ProviderOpenAI},
		"other model":         {"api.openai.com", "/v1/chat/completions", "mistral-large", "openai-other", "gpt-4", policy.ProviderOpenAI},
		"gpt-4o":              {"api.openai.com", "/v1/chat/completions", "gpt-4o", "openai-gpt-4o", "gpt-4o", policy.ProviderOpenAI},
		"gpt-4o-mini":         {"api.openai.com", "/v1/responses", "gpt-4o-mini-2024-07-18", "openai-gpt-4o-mini", "gpt-4o-mini", policy.ProviderOpenAI},
		"gpt-5":               {"api.openai.com", "/v1/responses", "gpt-5.4", "openai-gpt-5", "gpt-5", policy.ProviderOpenAI},
		"gpt-5-nano":          {"api.openai.com", "/v1/responses", "gpt-5-nano", "openai-gpt-5-mini", "gpt-5-mini", policy.ProviderOpenAI},
		"gpt-4.1-nano":        {"api.openai.com", "/v1/chat/completions", "gpt-4.1-nano", "openai-gpt-4.1-mini", "gpt-4.1-mini", policy.ProviderOpenAI},
		"o3":                  {"api.openai.com", "/v1/chat/completions", "o3", "openai-o-series", "o-series", policy.ProviderOpenAI},
		"o3-mini":             {"api.openai.com", "/v1/chat/completions", "o3-mini", "openai-o-mini", "o-mini", policy.ProviderOpenAI},
		"embeddings":          {"api.openai.com", "/v1/embeddings", "text-embedding-3-small", "openai-embeddings", "openai-embeddings", policy.ProviderOpenAI},
		"files":               {"api.openai.com", "/v1/files", "", "openai-files", "openai-files", policy.ProviderOpenAI},
		"audio":               {"api.openai.com", "/v1/audio/transcriptions", "", "openai-audio", "openai-audio", policy.ProviderOpenAI},
		"images":              {"api.openai.com", "/v1/images/generations", "dall-e-3", "openai-images", "openai-images", policy.ProviderOpenAI},
		"batches":             {"api.openai.com", "/v1/batches", "", "openai-batches", "openai-batches", policy.ProviderOpenAI},
		"moderations":         {"api.openai.com", "/v1/moderations", "omni-moderation-latest", "openai-moderations", "openai-moderations", policy.ProviderOpenAI},
		"d1":                  {"api.cloudflare.com", "/client/v4/accounts/acc/d1/database/db/query", "", "cloudflare-d1", "d1", policy.ProviderGeneric},
		"kv":                  {"api.cloudflare.com", "/client/v4/accounts/acc/storage/kv/namespaces/ns/values/k", "", "cloudflare-kv", "kv", policy.ProviderGeneric},
		"no model":            {"api.openai.com", "/v1/models", "", "openai-other", "gpt-4", policy.ProviderOpenAI},
		"twilio":              {"api.twilio.com", "/2010-04-01/Accounts/AC123/Messages.json", "", "twilio-sms", "sms", policy.ProviderTwilio},
		"sendgrid":            {"api.sendgrid.com:443", "/v3/mail/send", "", "sendgrid-mail", "email", policy.ProviderSendGrid},
		"anthropic":           {"api.anthropic.com", "/v1/messages", "claude-sonnet-4-5", "anthropic-messages", "claude", policy.ProviderAnthropic},
		"anthropic elsewhere": {"api.anthropic.com", "/v1/models", "", "", "", ""},
	}
	for name, tc := range tests {
		t.Run(name, func(t *testing.T) {
			r := s.MatchRoute(tc.host, tc.path, tc.model)
			if tc.route == "" {
				assert.Nil(t, r)
				return
			}
			require.NotNil(t, r)
			assert.Equal(t, tc.route, r.Name)
			assert.Equal(t, tc.provider, r.Provider)
			require.Len(t, r.Pools, 1)
			assert.Same(t, s.Pools[tc.pool], r.Pools[0])
			assert.Equal(t, int64(policy.DefaultMaxTokens), r.DefaultMaxTokens)
		})
	}
}

func TestDefaultIsFreshEachCall(t *testing.T) {
	a, b := policy.Default(), policy.Default()
	assert.NotSame(t, a, b)
	assert.NotSame(t, a.Pools["gpt-4"], b.Pools["gpt-4"])
}

// TestDefaultModels: the bundled prices pick the right entry for current
// model names (longest prefix wins) and price them exactly.
func TestDefaultModels(t *testing.T) {
	s := policy.Default()
	tests := map[string]struct {
		model, entry string
		known        bool
		perMillionIn policy.Money // the input price of a million tokens
	}{
		"gpt-4o":              {"gpt-4o", "gpt-4o*", true, 2_500_000_000},
		"gpt-4o snapshot":     {"gpt-4o-2024-08-06", "gpt-4o*", true, 2_500_000_000},
		"gpt-4o-mini":         {"gpt-4o-mini", "gpt-4o-mini*", true, 150_000_000},
		"gpt-4":               {"gpt-4", "gpt-4*", true, 30_000_000_000},
		"gpt-4-turbo":         {"gpt-4-turbo-2024-04-09", "gpt-4-turbo*", true, 10_000_000_000},
		"gpt-4.1-mini":        {"gpt-4.1-mini", "gpt-4.1-mini*", true, 400_000_000},
		"gpt-5":               {"gpt-5", "gpt-5*", true, 1_250_000_000},
		"gpt-5-mini":          {"gpt-5-mini-2025-08-07", "gpt-5-mini*", true, 250_000_000},
		"gpt-5.4-mini":        {"gpt-5.4-mini", "gpt-5.4-mini*", true, 750_000_000},
		"o3-mini is not o3":   {"o3-mini", "o3-mini*", true, 1_100_000_000},
		"embedding":           {"text-embedding-3-small", "text-embedding-3-small", true, 20_000_000},
		"claude sonnet 4.5":   {"claude-sonnet-4-5-20250929", "claude-sonnet-4*", true, 3_000_000_000},
		"claude opus 4.5":     {"claude-opus-4-5", "claude-opus-4-5*", true, 5_000_000_000},
		"claude opus 4.1":     {"claude-opus-4-1-20250805", "claude-opus-4*", true, 15_000_000_000},
		"unknown is priced *": {"mistral-large", "*", false, 5_000_000_000},
	}
	for name, tc := range tests {
		t.Run(name, func(t *testing.T) {
			m, known := s.Model(tc.model)
			require.NotNil(t, m)
			assert.Equal(t, tc.entry, m.Name)
			assert.Equal(t, tc.known, known)
			assert.Equal(t, tc.perMillionIn, m.Input.Cost(1_000_000))
			assert.LessOrEqual(t, m.CachedInput.Cost(1_000_000), m.Input.Cost(1_000_000), "cached input never costs more")
		})
	}
	opus, _ := s.Model("claude-opus-4-5")
	assert.Equal(t, policy.Money(6_250_000_000), opus.CacheWrite.Cost(1_000_000))
}
