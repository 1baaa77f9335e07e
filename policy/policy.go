// Package policy decodes, validates and compiles Tollgate's YAML policy: the
// resource pools, the routes that map calls onto them, the client tiers and
// the clients. A compiled *Set is immutable and safe to share; a reload
// builds a new Set off to the side.
package policy

import (
	"strings"
	"time"
)

// Unit is what a pool counts.
type Unit string

// The units a pool can count. Token pools are charged the estimated LLM
// tokens of a call; the others are charged per call (the costing package
// refines SMS segments and e-mail recipients).
const (
	UnitToken   Unit = "token"
	UnitRequest Unit = "request"
	UnitSegment Unit = "segment"
	UnitEmail   Unit = "email"
)

var units = []Unit{UnitToken, UnitRequest, UnitSegment, UnitEmail}

// Provider names the upstream API family of a route; it decides the shape of
// a denial body so that the provider's own SDK recognises it.
type Provider string

// Known providers. Generic gets a plain JSON error.
const (
	ProviderGeneric   Provider = "generic"
	ProviderOpenAI    Provider = "openai"
	ProviderAnthropic Provider = "anthropic"
	ProviderTwilio    Provider = "twilio"
	ProviderSendGrid  Provider = "sendgrid"
)

var providers = []Provider{ProviderGeneric, ProviderOpenAI, ProviderAnthropic, ProviderTwilio, ProviderSendGrid}

// Action is what to do with a call the policy has no answer for.
type Action string

// Actions for unmatched routes and invalid requests.
const (
	Allow Action = "allow"
	Deny  Action = "deny"
)

// Limit is a token bucket's shape: it holds at most Capacity units and gains
// Refill units every Per (a zero Per is a second).
type Limit struct {
	Capacity int64
	Refill   int64
	Per      time.Duration
}

// Pool is a shared resource: a provider quota such as GPT-4 tokens per
// minute, with its bucket and price.
type Pool struct {
	Name  string
	Unit  Unit
	Limit Limit
	Price Price
	// Shadow makes the pool decide and count but never deny.
	Shadow bool
	// Reserved are the shares of the pool guaranteed to tiers or clients
	// (see reserve.go); shared is what is left for everyone.
	Reserved []*Reservation
	shared   Limit
	// Dedicated, when set, makes the pool one client's own.
	Dedicated *Dedicated
}

// Route maps calls (host, path prefix, optionally the body's model) onto
// pools.
type Route struct {
	Name       string
	Host       string // exact, "*.suffix", or "" for any host
	PathPrefix string
	Models     []string // exact names or "prefix*"; empty matches any model
	Provider   Provider
	Pools      []*Pool
	// DefaultMaxTokens is the output allowance assumed for an LLM call that
	// states none.
	DefaultMaxTokens int64
	// Class is the priority class of a call that asks for none.
	Class Class
	// Pricing says where a call's money comes from: PricingModel (the
	// default) prices an OpenAI or Anthropic call by its model's entry in
	// models:, PricingPool by the pools' unit prices alone (files,
	// batches, moderations, audio, images: calls whose body is no prompt).
	Pricing Pricing
}

// Pricing is a route's source of prices.
type Pricing string

// Pricings.
const (
	PricingModel Pricing = "model"
	PricingPool  Pricing = "pool"
)

// LLM reports whether any of the route's pools counts tokens, i.e. whether
// the request body must be read to estimate the call.
func (r *Route) LLM() bool {
	for _, p := range r.Pools {
		if p.Unit == UnitToken {
			return true
		}
	}
	return false
}

// Tier is a class of client.
type Tier struct {
	Name          string
	Priority      int // 0–40 points in the queue score
	MaxConcurrent int64
	// MonthlyBudget applies when Budgeted; an unbudgeted tier ("custom")
	// relies on each client's own budget.
	MonthlyBudget Money
	Budgeted      bool
	// ClientLimits caps each client of this tier within a pool: a bucket per
	// (pool, client), keyed by pool name.
	ClientLimits map[string]Limit
	// MaxClass is the most urgent class its clients may ask for; a more
	// urgent request is lowered to it.
	MaxClass Class
}

// Client is a known caller.
type Client struct {
	ID   string
	Tier *Tier
	// Parent is the client whose budget also pays for this one's calls
	// (acme/marketing under acme); nil at the top.
	Parent        *Client
	MonthlyBudget Money
	Budgeted      bool
	// Dedicated maps a shared pool's name to the dedicated pool this
	// client spends instead (see reserve.go).
	Dedicated map[string]*Pool
}

// Budget returns the client's monthly budget: its own, else its tier's.
func (c *Client) Budget() (Money, bool) {
	if c.Budgeted {
		return c.MonthlyBudget, true
	}
	return c.Tier.MonthlyBudget, c.Tier.Budgeted
}

// Defaults are the policy-wide answers for calls the rest does not cover.
type Defaults struct {
	// UnknownClientTier is the tier given to a client not listed; nil means
	// unknown clients are denied.
	UnknownClientTier *Tier
	// MissingClient is what happens to a call that names no client: Allow
	// treats it as the client "" (so unknown_client decides), Deny refuses
	// it (missing_client).
	MissingClient  Action
	UnmatchedRoute Action
	InvalidRequest Action
	// StoreUnavailable is what happens when the limiter store cannot be
	// asked: Deny fails closed (503), Allow fails open.
	StoreUnavailable Action
	// Location is the time zone whose calendar months budgets follow.
	Location *time.Location
	// ReservationTTL bounds how long an admitted call may stay unsettled;
	// then it is committed at its estimate.
	ReservationTTL time.Duration
	// Reservation is how much beyond its estimate an admission reserves;
	// Adaptive tunes the adaptive strategy.
	Reservation Strategy
	Adaptive    AdaptiveConfig
	// Shadow puts every pool in shadow mode.
	Shadow bool
}

// Period names the budget period (calendar month in the policy's zone)
// that t falls in, e.g. "2026-11".
func (d Defaults) Period(t time.Time) string { return t.In(d.Location).Format("2006-01") }

// PeriodEnd is when the period holding t ends.
func (d Defaults) PeriodEnd(t time.Time) time.Time {
	l := t.In(d.Location)
	return time.Date(l.Year(), l.Month()+1, 1, 0, 0, 0, 0, d.Location)
}

// Set is a compiled, validated policy. It is immutable once built.
type Set struct {
	Pools   map[string]*Pool
	Routes  []*Route // in match order: most specific first
	Tiers   map[string]*Tier
	Clients map[string]*Client
	// Models prices LLM models by name (see Set.Model).
	Models   map[string]*Model
	Defaults Defaults
	// Queue is how calls are held for capacity.
	Queue Queue
	// Optimize holds the rules that rewrite calls to cost less.
	Optimize *Optimize
	// Cache holds the rules of the response cache and idempotency.
	Cache *Cache
	// Alerts are the thresholds of the alerts GET /admin/alerts evaluates.
	Alerts Alerts
	// Files are the files the set was loaded from, in load order.
	Files    []string
	LoadedAt time.Time
	// dedicatedRoutes holds, per client with dedicated pools, the routes
	// rewritten to name them (see RouteFor).
	dedicatedRoutes map[string]map[*Route]*Route
}

// MatchRoute returns the first route matching the call, or nil. model is the
// body's "model" field, "" if none.
//
// Among routes of equal rank that name models (same kind of host, same
// prefix length), the one whose matching pattern is the most specific wins:
// an exact name, then the longest "prefix*". So "gpt-4o-mini*" takes
// gpt-4o-mini from "gpt-4o*" whatever the routes are called.
func (s *Set) MatchRoute(host, path, model string) *Route {
	host = stripPort(strings.ToLower(host))
	var best *Route
	bestRank := -1
	for _, r := range s.Routes {
		if best != nil && !sameRank(best, r) {
			break
		}
		if !r.matches(host, path, model) {
			continue
		}
		if len(r.Models) == 0 {
			return r // sorted after every route of its rank with models
		}
		if n := r.modelRank(model); n > bestRank {
			best, bestRank = r, n
		}
	}
	return best
}

// sameRank says whether b sorts level with a route a that names models:
// routes of one rank are contiguous (sortRoutes).
func sameRank(a, b *Route) bool {
	return routeHostRank(a.Host) == routeHostRank(b.Host) && len(a.PathPrefix) == len(b.PathPrefix) && len(b.Models) > 0
}

// modelRank is how specifically r's patterns match model: twice the
// length of the longest matching prefix, plus one for an exact name.
func (r *Route) modelRank(model string) int {
	best := -1
	for _, m := range r.Models {
		if !modelMatches(m, model) {
			continue
		}
		n := 2*len(m) + 1
		if p, ok := strings.CutSuffix(m, "*"); ok {
			n = 2 * len(p)
		}
		best = max(best, n)
	}
	return best
}

// MatchRouteFold returns the first route whose host matches and whose path
// prefix matches path when letter case is ignored (models aside), or nil.
// A path that matches no route but this one names a metered route in the
// wrong case.
func (s *Set) MatchRouteFold(host, path string) *Route {
	host = stripPort(strings.ToLower(host))
	for _, r := range s.Routes {
		if hostMatches(r.Host, host) && prefixMatches(strings.ToLower(r.PathPrefix), strings.ToLower(path)) {
			return r
		}
	}
	return nil
}

// Route returns the route named name, or nil.
func (s *Set) Route(name string) *Route {
	for _, r := range s.Routes {
		if r.Name == name {
			return r
		}
	}
	return nil
}

// RouteWantsModel reports whether any route that could match host and path
// distinguishes calls by model, so the caller knows whether to read the body.
func (s *Set) RouteWantsModel(host, path string) bool {
	host = stripPort(strings.ToLower(host))
	for _, r := range s.Routes {
		if len(r.Models) > 0 && hostMatches(r.Host, host) && prefixMatches(r.PathPrefix, path) {
			return true
		}
	}
	return false
}

// Client resolves a client id to its policy entry. An unknown id gets a
// synthetic client of the default tier; ok is false when unknown clients are
// denied.
func (s *Set) Client(id string) (c *Client, ok bool) {
	if c, found := s.Clients[id]; found {
		return c, true
	}
	if s.Defaults.UnknownClientTier == nil {
		return nil, false
	}
	return &Client{ID: id, Tier: s.Defaults.UnknownClientTier}, true
}

// Shadowed reports whether a denial by pool p is only to be reported.
func (s *Set) Shadowed(p *Pool) bool { return s.Defaults.Shadow || p.Shadow }

func (r *Route) matches(host, path, model string) bool {
	if !hostMatches(r.Host, host) || !prefixMatches(r.PathPrefix, path) {
		return false
	}
	if len(r.Models) == 0 {
		return true
	}
	for _, m := range r.Models {
		if modelMatches(m, model) {
			return true
		}
	}
	return false
}

// prefixMatches says whether path starts with prefix, where a segment "*"
// of prefix followed by "/" ("/accounts/*/d1/") stands for any one
// non-empty segment of path.
func prefixMatches(prefix, path string) bool {
	for {
		i := strings.Index(prefix, "/*/")
		if i < 0 {
			return strings.HasPrefix(path, prefix)
		}
		head := prefix[:i+1]
		if !strings.HasPrefix(path, head) {
			return false
		}
		path = path[len(head):]
		j := strings.IndexByte(path, '/')
		if j <= 0 {
			return false
		}
		path, prefix = path[j:], prefix[i+2:]
	}
}

func hostMatches(pattern, host string) bool {
	switch {
	case pattern == "":
		return true
	case strings.HasPrefix(pattern, "*."):
		return strings.HasSuffix(host, pattern[1:])
	default:
		return pattern == host
	}
}

func modelMatches(pattern, model string) bool {
	if model == "" {
		return false
	}
	if p, ok := strings.CutSuffix(pattern, "*"); ok {
		return strings.HasPrefix(model, p)
	}
	return pattern == model
}

func stripPort(host string) string {
	if strings.HasPrefix(host, "[") { // [::1]:443
		if i := strings.LastIndexByte(host, ']'); i > 0 {
			return host[1:i]
		}
		return host
	}
	if i := strings.LastIndexByte(host, ':'); i >= 0 && strings.Count(host, ":") == 1 {
		return host[:i]
	}
	return host
}
