package policy

import (
	"fmt"
	"net"
	"slices"
	"sort"
	"strings"
)

// DefaultMaxTokens is the output allowance of an LLM route that states none.
const DefaultMaxTokens = 1024

// routeDoc is a routes: entry as written.
type routeDoc struct {
	file, name       string
	line             int
	host, prefix     at[string]
	models, pools    at[[]string]
	provider         at[string]
	defaultMaxTokens at[int64]
	class            at[string]
	pricing          at[string]
}

func readRoute(m *mapNode, name string, line int) routeDoc {
	return routeDoc{
		file: m.d.file, name: name, line: line,
		host: m.str("host"), prefix: m.str("path_prefix"), models: m.strs("models"),
		provider: m.str("provider"), pools: m.strs("pools"), defaultMaxTokens: m.int("default_max_tokens"),
		class: m.str("class"), pricing: m.str("pricing"),
	}
}

// routes compiles the routes in match order.
func (c *compiler) routes(docs []routeDoc) {
	for _, r := range docs {
		if !c.unique("route", r.name, r.file, r.line) {
			continue
		}
		c.set.Routes = append(c.set.Routes, c.route(r))
	}
	sortRoutes(c.set.Routes)
}

func (c *compiler) route(r routeDoc) *Route {
	path := "routes." + r.name
	rt := &Route{Name: r.name, Host: strings.ToLower(r.host.v), PathPrefix: r.prefix.v, Models: r.models.v,
		Provider: Provider(r.provider.v), DefaultMaxTokens: r.defaultMaxTokens.v}
	if rt.PathPrefix == "" {
		rt.PathPrefix = "/"
	} else if !strings.HasPrefix(rt.PathPrefix, "/") {
		c.add(r.file, r.prefix.line, path+".path_prefix", "must start with /, got %q", rt.PathPrefix)
	}
	if msg := checkHost(rt.Host); msg != "" {
		c.add(r.file, r.host.line, path+".host", "%s, got %q", msg, r.host.v)
	}
	rt.Host = strings.TrimSuffix(strings.TrimPrefix(rt.Host, "["), "]")
	if rt.Provider == "" {
		rt.Provider = ProviderGeneric
	} else if !slices.Contains(providers, rt.Provider) {
		c.add(r.file, r.provider.line, path+".provider", "unknown provider %q (one of %s)", r.provider.v, joinNames(providers))
	}
	switch {
	case r.defaultMaxTokens.set && rt.DefaultMaxTokens <= 0:
		c.add(r.file, r.defaultMaxTokens.line, path+".default_max_tokens", "must be positive, got %d", rt.DefaultMaxTokens)
	case !r.defaultMaxTokens.set:
		rt.DefaultMaxTokens = DefaultMaxTokens
	}
	rt.Class = c.class(r.file, path+".class", r.class, Normal)
	switch rt.Pricing = Pricing(r.pricing.v); rt.Pricing {
	case "":
		rt.Pricing = PricingModel
	case PricingModel, PricingPool:
	default:
		c.add(r.file, r.pricing.line, path+".pricing", "must be model or pool, got %q", r.pricing.v)
	}
	for i, m := range rt.Models {
		if m == "" || strings.Contains(strings.TrimSuffix(m, "*"), "*") {
			c.add(r.file, r.models.line, fmt.Sprintf("%s.models[%d]", path, i), "must be a model name or a prefix ending in *, got %q", m)
		}
	}
	rt.Pools = c.routePools(r, path)
	return rt
}

// routePools resolves a route's pool names, each at most once.
func (c *compiler) routePools(r routeDoc, path string) []*Pool {
	if len(r.pools.v) == 0 && !r.pools.bad {
		c.add(r.file, lineOr(r.pools, r.line), path+".pools", "a route needs at least one pool")
	}
	var pools []*Pool
	for _, name := range r.pools.v {
		p, ok := c.set.Pools[name]
		if !ok {
			c.add(r.file, r.pools.line, path+".pools", "pool %q does not exist%s", name, known(c.set.Pools))
			continue
		}
		if p.Dedicated != nil {
			c.add(r.file, r.pools.line, path+".pools", "pool %q is dedicated to client %q: a route names the shared pool it replaces, never the dedicated one",
				name, p.Dedicated.Client)
			continue
		}
		if slices.Contains(pools, p) {
			c.add(r.file, r.pools.line, path+".pools", "pool %q is listed twice", name)
			continue
		}
		pools = append(pools, p)
	}
	return pools
}

// checkHost explains what is wrong with a route's host pattern, or returns "".
func checkHost(h string) string {
	if h == "" {
		return ""
	}
	if ip := strings.TrimSuffix(strings.TrimPrefix(h, "["), "]"); net.ParseIP(ip) != nil {
		return ""
	}
	const want = "must be a host name, \"*.domain\" or empty for any host"
	rest := strings.TrimPrefix(h, "*.")
	switch {
	case strings.ContainsAny(h, "/ []") || strings.Contains(rest, "*") || strings.Trim(rest, ".") == "" ||
		strings.HasPrefix(rest, ".") || strings.Contains(h, ".."):
		return want
	case strings.Contains(h, ":"):
		return "must not include a port (requests are matched on the host name alone)"
	}
	return ""
}

// routeHostRank orders host patterns: exact, then wildcard, then any.
func routeHostRank(h string) int {
	switch {
	case h == "":
		return 0
	case strings.HasPrefix(h, "*."):
		return 1
	}
	return 2
}

// sortRoutes puts the most specific route first (exact host, then wildcard,
// then any; longer path prefix; with models before without), so the first
// match is the best one whatever the order of the files.
func sortRoutes(rs []*Route) {
	hostRank := routeHostRank
	sort.SliceStable(rs, func(i, j int) bool {
		a, b := rs[i], rs[j]
		if ha, hb := hostRank(a.Host), hostRank(b.Host); ha != hb {
			return ha > hb
		}
		if len(a.PathPrefix) != len(b.PathPrefix) {
			return len(a.PathPrefix) > len(b.PathPrefix)
		}
		if (len(a.Models) > 0) != (len(b.Models) > 0) {
			return len(a.Models) > 0
		}
		return a.Name < b.Name
	})
}
