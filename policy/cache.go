package policy

import (
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"slices"
	"strings"
	"time"
)

// Cache is the policy's cache: block: rules that say, per route and client
// tier, whether upstream answers are kept and replayed to identical calls
// (the response cache) and how a retried call is recognised (idempotency).
// Without rules nothing is cached and no retry is recognised.
type Cache struct {
	// Rules in the order written: the first rule whose when matches a call
	// decides all of its settings.
	Rules []*CacheRule
}

// For returns the rule that applies to a call of route by a client of
// tier: the first that matches, or nil.
func (c *Cache) For(route, tier string) *CacheRule {
	if c == nil {
		return nil
	}
	for _, r := range c.Rules {
		if (len(r.Routes) == 0 || slices.Contains(r.Routes, route)) && (len(r.Tiers) == 0 || slices.Contains(r.Tiers, tier)) {
			return r
		}
	}
	return nil
}

// CacheScope says whose calls share the response cache's entries.
type CacheScope string

// Cache scopes.
const (
	// ScopeClient: a client's own calls only.
	ScopeClient CacheScope = "client"
	// ScopeParent: the client's parent (clients: parent:) and every client
	// under it that shares the parent's scope; a client without a parent
	// keeps its own.
	ScopeParent CacheScope = "parent"
)

var cacheScopes = []CacheScope{ScopeClient, ScopeParent}

// Cacheable says which calls of a route the response cache keeps.
type Cacheable string

// What is cacheable.
const (
	// CacheDeterministic: calls whose answer the request decides: OpenAI
	// chat, completions and responses calls at temperature 0 or with a
	// seed, embeddings and moderations; Anthropic messages at temperature
	// 0.
	CacheDeterministic Cacheable = "deterministic"
	// CacheAnyTemperature: every such call whatever its temperature: the
	// first answer to a question is the answer to its repeats.
	CacheAnyTemperature Cacheable = "any_temperature"
)

var cacheables = []Cacheable{CacheDeterministic, CacheAnyTemperature}

// Defaults and bounds of a cache rule.
const (
	DefaultCacheTTL       = time.Hour
	DefaultMaxEntryBytes  = 1 << 20
	DefaultIdempotencyTTL = 24 * time.Hour
	// MaxCacheTTL bounds ttl and idempotency.ttl; MaxBodyWindow bounds
	// idempotency.body_window.
	MaxCacheTTL   = 7 * 24 * time.Hour
	MaxBodyWindow = 24 * time.Hour
	// MaxEntryBytesLimit bounds max_entry_bytes.
	MaxEntryBytesLimit = 64 << 20
)

// CacheRule is one cache.rules entry.
type CacheRule struct {
	Name string
	File string
	Line int

	// When: every list given must match (empty: any).
	Routes, Tiers []string

	// Enabled turns the response cache on for the rule's calls. Calls to
	// SMS and e-mail providers (twilio, sendgrid), and to generic routes,
	// have side effects or unknown semantics: they are never
	// response-cached, whatever the rule says.
	Enabled bool
	// TTL is how long an answer is replayed.
	TTL   time.Duration
	Scope CacheScope
	// MaxEntryBytes bounds the body of an answer kept (a larger one goes
	// to its caller and is not kept).
	MaxEntryBytes int64
	Cacheable     Cacheable

	Idempotency Idempotency

	// Fingerprint names the settings that shape the response cache's
	// entries (enabled, ttl, scope, max_entry_bytes, cacheable): it is
	// part of each entry's key, so after a reload that changes them the
	// entries stored under the old ones are never found again.
	Fingerprint string
}

// Idempotency is how a rule recognises a retried call.
type Idempotency struct {
	// Key honours the Idempotency-Key request header: a call repeating a
	// key (with the same request) gets the answer recorded for the first,
	// or waits for it.
	Key bool
	// TTL is how long a recorded answer is replayed to a retry.
	TTL time.Duration
	// BodyWindow, for SMS and e-mail routes (twilio, sendgrid), treats a
	// call without a key whose request repeats one made within the window
	// as its retry; zero: off.
	BodyWindow time.Duration
}

// SideEffects reports whether calls of provider p change the world (send
// a message or an e-mail), or may (a generic API): never response-cached.
func SideEffects(p Provider) bool {
	return p != ProviderOpenAI && p != ProviderAnthropic
}

// Messaging reports whether p sends SMS or e-mail: the providers whose
// calls idempotency.body_window applies to.
func Messaging(p Provider) bool { return p == ProviderTwilio || p == ProviderSendGrid }

// fingerprint hashes the settings of the response cache that an entry
// depends on.
func (r *CacheRule) fingerprint() string {
	h := sha256.Sum256(fmt.Appendf(nil, "cache-v1|%t|%d|%s|%d|%s", r.Enabled, r.TTL, r.Scope, r.MaxEntryBytes, r.Cacheable))
	return hex.EncodeToString(h[:8])
}

// SummaryCache mirrors Cache.
type SummaryCache struct {
	Rules []SummaryCacheRule `json:"rules,omitempty"`
}

// SummaryCacheRule mirrors CacheRule: its conditions, its response cache
// and its idempotency as one line of text each.
type SummaryCacheRule struct {
	Name        string `json:"name"`
	When        string `json:"when"`
	Responses   string `json:"responses"`
	Idempotency string `json:"idempotency"`
}

func (c *Cache) summary(set *Set) SummaryCache {
	var out SummaryCache
	if c == nil {
		return out
	}
	for _, r := range c.Rules {
		out.Rules = append(out.Rules, SummaryCacheRule{Name: r.Name, When: r.when(), Responses: r.responses(set), Idempotency: r.idempotency()})
	}
	return out
}

func (r *CacheRule) when() string {
	var parts []string
	if len(r.Routes) > 0 {
		parts = append(parts, "routes "+strings.Join(r.Routes, ","))
	}
	if len(r.Tiers) > 0 {
		parts = append(parts, "tiers "+strings.Join(r.Tiers, ","))
	}
	if len(parts) == 0 {
		return "every call"
	}
	return strings.Join(parts, "; ")
}

func (r *CacheRule) responses(set *Set) string {
	if !r.Enabled {
		return "off"
	}
	never := len(r.Routes) > 0
	for _, name := range r.Routes {
		if rt := set.Route(name); rt == nil || !SideEffects(rt.Provider) {
			never = false
		}
	}
	if never {
		return "never (calls with side effects)"
	}
	return fmt.Sprintf("%s calls for %s, %s scope, up to %d bytes", r.Cacheable, r.TTL, r.Scope, r.MaxEntryBytes)
}

func (r *CacheRule) idempotency() string {
	var parts []string
	if r.Idempotency.Key {
		parts = append(parts, "Idempotency-Key, answers kept "+r.Idempotency.TTL.String())
	}
	if r.Idempotency.BodyWindow > 0 {
		parts = append(parts, "the same SMS/e-mail within "+r.Idempotency.BodyWindow.String())
	}
	if len(parts) == 0 {
		return "off"
	}
	return strings.Join(parts, "; ")
}
