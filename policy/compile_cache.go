package policy

import (
	"fmt"
	"slices"
	"time"
)

// cacheDoc is a cache: block as written; several files may each add rules.
type cacheDoc struct {
	file  string
	rules []cacheRuleDoc
}

// cacheRuleDoc is one cache.rules item as written.
type cacheRuleDoc struct {
	file, name       string
	line             int
	when             *cacheWhenDoc
	enabled          at[bool]
	ttl              at[string]
	scope, cacheable at[string]
	maxEntry         at[int64]
	idempotency      *idempotencyDoc
}

type cacheWhenDoc struct {
	line          int
	routes, tiers at[[]string]
}

type idempotencyDoc struct {
	line       int
	key        at[bool]
	ttl, since at[string]
}

func readCache(m *mapNode, _ int) cacheDoc {
	d := cacheDoc{file: m.d.file}
	d.rules, _ = readList(m, "rules", "rules such as - {name: llm, when: {routes: [openai]}, ttl: 1h}", readCacheRule)
	return d
}

func readCacheRule(m *mapNode, line int) cacheRuleDoc {
	r := cacheRuleDoc{file: m.d.file, line: line, name: m.str("name").v}
	if w, ok := readBlock(m, "when", readCacheWhen); ok {
		r.when = &w
	}
	r.enabled, r.ttl, r.scope = m.bool("enabled"), m.str("ttl"), m.str("scope")
	r.maxEntry, r.cacheable = m.int("max_entry_bytes"), m.str("cacheable")
	if i, ok := readBlock(m, "idempotency", readIdempotency); ok {
		r.idempotency = &i
	}
	return r
}

func readCacheWhen(m *mapNode, line int) cacheWhenDoc {
	return cacheWhenDoc{line: line, routes: m.strs("routes"), tiers: m.strs("tiers")}
}

func readIdempotency(m *mapNode, line int) idempotencyDoc {
	return idempotencyDoc{line: line, key: m.bool("key"), ttl: m.str("ttl"), since: m.str("body_window")}
}

// cache compiles the cache rules after routes and tiers, which they name.
func (c *compiler) cache(docs []cacheDoc) {
	out := &Cache{}
	seen := map[string]place{}
	for _, d := range docs {
		for i, rd := range d.rules {
			if rd.name == "" {
				c.add(rd.file, rd.line, fmt.Sprintf("cache.rules[%d].name", i), "is required (a name for policy check)")
				continue
			}
			path := "cache.rules." + rd.name
			if p, dup := seen[rd.name]; dup {
				c.add(rd.file, rd.line, path, "cache rule %q is already defined at %s", rd.name, p)
				continue
			}
			seen[rd.name] = place{rd.file, rd.line}
			out.Rules = append(out.Rules, c.cacheRule(path, rd))
		}
	}
	c.set.Cache = out
}

func (c *compiler) cacheRule(path string, rd cacheRuleDoc) *CacheRule {
	r := &CacheRule{Name: rd.name, File: rd.file, Line: rd.line, Enabled: true, TTL: DefaultCacheTTL, Scope: ScopeClient,
		MaxEntryBytes: DefaultMaxEntryBytes, Cacheable: CacheDeterministic,
		Idempotency: Idempotency{Key: true, TTL: DefaultIdempotencyTTL}}
	var routes []*Route
	if w := rd.when; w != nil {
		wp := path + ".when"
		r.Routes = c.routeNames(rd.file, wp+".routes", w.routes)
		r.Tiers = c.names(rd.file, wp+".tiers", w.tiers, "tier", c.set.Tiers)
		for _, n := range r.Routes {
			if rt := c.set.Route(n); rt != nil {
				routes = append(routes, rt)
			}
		}
	}
	if rd.enabled.set {
		r.Enabled = rd.enabled.v
		if r.Enabled {
			// A rule that says so of a route with side effects is a
			// mistake worth naming; a rule for every route simply never
			// caches those.
			for _, rt := range routes {
				if SideEffects(rt.Provider) {
					c.add(rd.file, rd.enabled.line, path+".enabled", "route %s (%s) is never response-cached: its calls have side effects or unknown semantics; idempotency still applies", rt.Name, rt.Provider)
				}
			}
		}
	}
	c.cacheDuration(rd.file, path+".ttl", rd.ttl, MaxCacheTTL, &r.TTL)
	if rd.scope.set {
		if s := CacheScope(rd.scope.v); slices.Contains(cacheScopes, s) {
			r.Scope = s
		} else {
			c.add(rd.file, rd.scope.line, path+".scope", "must be one of %s, got %q", joinNames(cacheScopes), rd.scope.v)
		}
	}
	if rd.cacheable.set {
		if v := Cacheable(rd.cacheable.v); slices.Contains(cacheables, v) {
			r.Cacheable = v
		} else {
			c.add(rd.file, rd.cacheable.line, path+".cacheable", "must be one of %s, got %q", joinNames(cacheables), rd.cacheable.v)
		}
	}
	if rd.maxEntry.set {
		if rd.maxEntry.v < 1 || rd.maxEntry.v > MaxEntryBytesLimit {
			c.add(rd.file, rd.maxEntry.line, path+".max_entry_bytes", "must be between 1 and %d, got %d", MaxEntryBytesLimit, rd.maxEntry.v)
		} else {
			r.MaxEntryBytes = rd.maxEntry.v
		}
	}
	if id := rd.idempotency; id != nil {
		ip := path + ".idempotency"
		if id.key.set {
			r.Idempotency.Key = id.key.v
		}
		c.cacheDuration(rd.file, ip+".ttl", id.ttl, MaxCacheTTL, &r.Idempotency.TTL)
		c.cacheDuration(rd.file, ip+".body_window", id.since, MaxBodyWindow, &r.Idempotency.BodyWindow)
		if id.since.set {
			for _, rt := range routes {
				if !Messaging(rt.Provider) {
					c.add(rd.file, id.since.line, ip+".body_window", "applies only to SMS and e-mail routes (twilio, sendgrid); route %s is %s", rt.Name, rt.Provider)
				}
			}
		}
	}
	if !r.Enabled && !r.Idempotency.Key && r.Idempotency.BodyWindow == 0 {
		c.add(rd.file, rd.line, path, "does nothing: enabled: false and no idempotency (key: false, no body_window)")
	}
	r.Fingerprint = r.fingerprint()
	return r
}

// cacheDuration reads a duration between a second and hi into dst.
func (c *compiler) cacheDuration(file, path string, v at[string], hi time.Duration, dst *time.Duration) {
	if !v.set {
		return
	}
	d, err := time.ParseDuration(v.v)
	switch {
	case err != nil:
		c.add(file, v.line, path, "must be a duration such as 10m or 24h, got %q", v.v)
	case d < time.Second || d > hi:
		c.add(file, v.line, path, "must be between 1s and %s, got %s", hi, v.v)
	default:
		*dst = d
	}
}
