package policy_test

import (
	"bytes"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/tollgate/tollgate/policy"
)

// cacheBase is a valid policy with an LLM route, an SMS route and two
// tiers; cache rules follow it from line 17.
var cacheBase = []string{
	"pools:", // 1
	"  p: {unit: token, capacity: 100000, refill_per_second: 1000}", // 2
	"  s: {unit: segment, capacity: 100, refill_per_second: 1}",     // 3
	"routes:",                  // 4
	"  llm:",                   // 5
	"    host: api.openai.com", // 6
	"    provider: openai",     // 7
	"    pools: [p]",           // 8
	"  sms:",                   // 9
	"    host: api.twilio.com", // 10
	"    provider: twilio",     // 11
	"    pools: [s]",           // 12
	"tiers:",                   // 13
	"  basic: {priority: 10, max_concurrent: 5}", // 14
	"cache:",   // 15
	"  rules:", // 16
}

func withCacheRules(ls ...string) []byte {
	return lines(append(append([]string{}, cacheBase...), ls...)...)
}

func TestCacheCompiles(t *testing.T) {
	s := mustCompile(t, withCacheRules(
		"    - name: llm", // 17
		"      when: {routes: [llm], tiers: [basic]}",
		"      ttl: 10m",
		"      scope: parent",
		"      max_entry_bytes: 4096",
		"      cacheable: any_temperature",
		"      idempotency: {key: false}",
		"    - name: sms", // 24
		"      when: {routes: [sms]}",
		"      idempotency: {ttl: 48h, body_window: 10m}",
		"    - name: rest", // 27
		"      enabled: false",
	))
	c := s.Cache
	require.NotNil(t, c)
	require.Len(t, c.Rules, 3)
	llm := c.Rules[0]
	assert.Equal(t, &policy.CacheRule{Name: "llm", File: "x.yaml", Line: 17, Routes: []string{"llm"}, Tiers: []string{"basic"},
		Enabled: true, TTL: 10 * time.Minute, Scope: policy.ScopeParent, MaxEntryBytes: 4096, Cacheable: policy.CacheAnyTemperature,
		Idempotency: policy.Idempotency{TTL: policy.DefaultIdempotencyTTL}, Fingerprint: llm.Fingerprint}, llm)
	assert.Len(t, llm.Fingerprint, 16)

	sms := c.Rules[1]
	assert.True(t, sms.Enabled, "enabled by default: the response cache simply never applies to SMS")
	assert.Equal(t, policy.Idempotency{Key: true, TTL: 48 * time.Hour, BodyWindow: 10 * time.Minute}, sms.Idempotency)
	assert.Equal(t, policy.DefaultCacheTTL, sms.TTL)
	assert.Equal(t, policy.ScopeClient, sms.Scope)
	assert.Equal(t, int64(policy.DefaultMaxEntryBytes), sms.MaxEntryBytes)
	assert.Equal(t, policy.CacheDeterministic, sms.Cacheable)

	assert.Same(t, llm, c.For("llm", "basic"))
	assert.Same(t, c.Rules[2], c.For("llm", "premium"), "first match: llm names only basic")
	assert.Same(t, sms, c.For("sms", "basic"))
	assert.Nil(t, mustCompile(t, withPool()).Cache.For("llm", "basic"), "no rules: nothing cached")
	assert.Nil(t, (*policy.Cache)(nil).For("llm", "basic"))

	sum := s.Summary().Cache
	assert.Equal(t, []policy.SummaryCacheRule{
		{Name: "llm", When: "routes llm; tiers basic", Responses: "any_temperature calls for 10m0s, parent scope, up to 4096 bytes", Idempotency: "off"},
		{Name: "sms", When: "routes sms", Responses: "never (calls with side effects)",
			Idempotency: "Idempotency-Key, answers kept 48h0m0s; the same SMS/e-mail within 10m0s"},
		{Name: "rest", When: "every call", Responses: "off", Idempotency: "Idempotency-Key, answers kept 24h0m0s"},
	}, sum.Rules)
	var out bytes.Buffer
	require.NoError(t, s.Summary().WriteText(&out))
	assert.Contains(t, out.String(), "CACHE RULE")
	assert.Contains(t, out.String(), "routes llm; tiers basic")
}

// TestCacheFingerprint: the settings that shape entries change the
// fingerprint; the name, the conditions and idempotency do not.
func TestCacheFingerprint(t *testing.T) {
	fp := func(rule ...string) string {
		s := mustCompile(t, withCacheRules(append([]string{"    - name: r"}, rule...)...))
		return s.Cache.Rules[0].Fingerprint
	}
	base := fp("      ttl: 1h")
	assert.Equal(t, base, fp(), "the default ttl is 1h")
	assert.Equal(t, base, fp("      when: {routes: [llm]}", "      idempotency: {key: false}"))
	for name, rule := range map[string]string{
		"ttl":       "      ttl: 2h",
		"scope":     "      scope: parent",
		"max":       "      max_entry_bytes: 10",
		"cacheable": "      cacheable: any_temperature",
		"enabled":   "      enabled: false",
	} {
		assert.NotEqual(t, base, fp(rule), name)
	}
}

func TestCacheRefusals(t *testing.T) {
	tests := map[string]struct {
		src  []byte
		want wantErr
	}{
		"no name": {
			src:  withCacheRules("    - ttl: 1h"),
			want: wantErr{line: 17, path: "cache.rules[0].name", msg: "is required (a name for policy check)"},
		},
		"two rules of one name": {
			src:  withCacheRules("    - name: a", "    - name: a"),
			want: wantErr{line: 18, path: "cache.rules.a", msg: `cache rule "a" is already defined at x.yaml:17`},
		},
		"unknown route": {
			src:  withCacheRules("    - name: a", "      when: {routes: [nope]}"),
			want: wantErr{line: 18, path: "cache.rules.a.when.routes", msg: `route "nope" does not exist`},
		},
		"unknown tier": {
			src:  withCacheRules("    - name: a", "      when: {tiers: [gold]}"),
			want: wantErr{line: 18, path: "cache.rules.a.when.tiers", msg: `tier "gold" does not exist`},
		},
		"ttl without a unit": {
			src:  withCacheRules("    - name: a", "      ttl: 3600"),
			want: wantErr{line: 18, path: "cache.rules.a.ttl", msg: `must be a duration such as 10m or 24h, got "3600"`},
		},
		"ttl too long": {
			src:  withCacheRules("    - name: a", "      ttl: 200h"),
			want: wantErr{line: 18, path: "cache.rules.a.ttl", msg: "must be between 1s and 168h0m0s, got 200h"},
		},
		"ttl under a second": {
			src:  withCacheRules("    - name: a", "      ttl: 10ms"),
			want: wantErr{line: 18, path: "cache.rules.a.ttl", msg: "must be between 1s and 168h0m0s, got 10ms"},
		},
		"unknown scope": {
			src:  withCacheRules("    - name: a", "      scope: everyone"),
			want: wantErr{line: 18, path: "cache.rules.a.scope", msg: `must be one of client, parent, got "everyone"`},
		},
		"unknown cacheable": {
			src:  withCacheRules("    - name: a", "      cacheable: all"),
			want: wantErr{line: 18, path: "cache.rules.a.cacheable", msg: `must be one of deterministic, any_temperature, got "all"`},
		},
		"zero entry size": {
			src:  withCacheRules("    - name: a", "      max_entry_bytes: 0"),
			want: wantErr{line: 18, path: "cache.rules.a.max_entry_bytes", msg: "must be between 1 and 67108864, got 0"},
		},
		"SMS response-cached": {
			src:  withCacheRules("    - name: a", "      when: {routes: [sms]}", "      enabled: true"),
			want: wantErr{line: 19, path: "cache.rules.a.enabled", msg: "route sms (twilio) is never response-cached: its calls have side effects or unknown semantics; idempotency still applies"},
		},
		"body window on an LLM route": {
			src:  withCacheRules("    - name: a", "      when: {routes: [llm, sms]}", "      idempotency: {body_window: 5m}"),
			want: wantErr{line: 19, path: "cache.rules.a.idempotency.body_window", msg: "applies only to SMS and e-mail routes (twilio, sendgrid); route llm is openai"},
		},
		"body window too long": {
			src:  withCacheRules("    - name: a", "      idempotency: {body_window: 48h}"),
			want: wantErr{line: 18, path: "cache.rules.a.idempotency.body_window", msg: "must be between 1s and 24h0m0s, got 48h"},
		},
		"does nothing": {
			src:  withCacheRules("    - name: a", "      enabled: false", "      idempotency: {key: false}"),
			want: wantErr{line: 17, path: "cache.rules.a", msg: "does nothing: enabled: false and no idempotency (key: false, no body_window)"},
		},
		"unknown key": {
			src:  withCacheRules("    - name: a", "      tll: 1h"),
			want: wantErr{line: 18, path: "cache.rules[0]", msg: `unknown field "tll" (did you mean "ttl"?)`},
		},
		"unknown idempotency key": {
			src:  withCacheRules("    - name: a", "      idempotency: {window: 5m}"),
			want: wantErr{line: 18, path: "cache.rules[0].idempotency"},
		},
		"rules not a list": {
			src:  withCacheRules("    name: a"),
			want: wantErr{line: 17, path: "cache.rules"},
		},
	}
	for name, tc := range tests {
		t.Run(name, func(t *testing.T) {
			_, err := compile(tc.src)
			errs := policyErrors(t, err)
			tc.want.file = "x.yaml"
			requireHasError(t, errs, tc.want)
		})
	}
}

func TestCacheSideEffects(t *testing.T) {
	for p, want := range map[policy.Provider]bool{policy.ProviderOpenAI: false, policy.ProviderAnthropic: false,
		policy.ProviderTwilio: true, policy.ProviderSendGrid: true, policy.ProviderGeneric: true} {
		assert.Equal(t, want, policy.SideEffects(p), p)
		assert.Equal(t, p == policy.ProviderTwilio || p == policy.ProviderSendGrid, policy.Messaging(p), p)
	}
}
