package admission

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"log/slog"
	"net/http"
	"strings"
	"sync/atomic"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/tollgate/tollgate/costing"
	"github.com/tollgate/tollgate/internal/metricset"
	"github.com/tollgate/tollgate/limiter"
	"github.com/tollgate/tollgate/limiter/respcache"
	"github.com/tollgate/tollgate/policy"
)

// Never paying twice. At Check, before anything is reserved, a call the
// policy's cache rules cover is looked up: an answer recorded for the same
// request (the response cache) or for the same retried call (an
// Idempotency-Key, or an SMS repeated within the body window) ends it
// there, at $0, with the savings booked; an identical call in flight is
// waited for (coalesced); otherwise the call leads: it goes upstream, and
// its answer is recorded when ext_proc has seen it whole. Every lead is
// completed or abandoned exactly once: when its call settles, when it is
// denied after all, when the API ends its reservation, or when its
// reservation lapses.

// Headers of the cache.
const (
	// HeaderCache: on a request, "skip" keeps the call out of the response
	// cache (no lookup, nothing stored); on an answer, how the cache
	// answered (CacheHit, CacheCoalesced, CacheReplayed, CacheMiss).
	HeaderCache = "x-tollgate-cache"
	// HeaderCacheKey names a response-cache entry (its hash), for
	// DELETE /api/cache/{scope}/{route}/{hash}.
	HeaderCacheKey = "x-tollgate-cache-key"
	// HeaderIdempotencyKey is the request header a retried call repeats.
	HeaderIdempotencyKey = "idempotency-key"
)

// CacheHow says how the cache answered a call.
type CacheHow string

// How the cache answers.
const (
	CacheHit       CacheHow = "hit"       // a recorded answer to the same request
	CacheCoalesced CacheHow = "coalesced" // the answer of an identical call in flight, waited for
	CacheReplayed  CacheHow = "replayed"  // the answer recorded for the call this one retries
	CacheMiss      CacheHow = "miss"      // looked up, not found: the call goes upstream
)

// Savings strategies of answers that cost nothing.
const (
	StrategyCache       = "cache"
	StrategyCoalesce    = "coalesce"
	StrategyIdempotency = "idempotency"
)

// CachedAnswer is a recorded upstream answer that ends a call at Check
// (outcome cached): the transport replays it as it was recorded.
type CachedAnswer struct {
	How   CacheHow
	Entry respcache.Entry
	// Age is how long ago the answer was recorded.
	Age time.Duration
	// Key is the response-cache entry's hash ("" for an idempotency
	// record).
	Key string
}

// ErrNoCache is returned by the cache's API when the service has no cache.
var ErrNoCache = errors.New("admission: no response cache is configured")

// cacheControls are what a worker asks of the cache for one call.
type cacheControls struct {
	noLookup bool // Cache-Control: no-cache: fetch afresh, store the answer
	skip     bool // Cache-Control: no-store, x-tollgate-cache: skip: neither
}

func controlsOf(h map[string]string) cacheControls {
	var c cacheControls
	for _, d := range strings.Split(h["cache-control"], ",") {
		switch strings.ToLower(strings.TrimSpace(d)) {
		case "no-cache":
			c.noLookup = true
		case "no-store":
			c.skip = true
		}
	}
	if strings.EqualFold(strings.TrimSpace(h[HeaderCache]), "skip") {
		c.skip = true
	}
	return c
}

// leadKey is one entry a call records once its answer is whole.
type leadKey struct {
	key respcache.Key
	ttl time.Duration
	// flight: the call holds the key's flight (Begin said Lead) and must
	// end it; false for Cache-Control: no-cache, which only stores.
	flight bool
}

// cacheLead is what an admitted call must record: the keys it leads, and
// how large an answer may be kept. Its end (finish or abandon) runs once.
type cacheLead struct {
	cache respcache.Cache
	m     *cacheMetrics
	log   *slog.Logger
	keys  []leadKey
	max   int64
	done  atomic.Bool
}

// abandon ends every flight of l without an entry (the call never ran, or
// its answer is not to be kept): one waiter of each leads instead.
func (l *cacheLead) abandon(ctx context.Context, why string) {
	if l == nil || !l.done.CompareAndSwap(false, true) {
		return
	}
	ctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), settleTimeout)
	defer cancel()
	for _, k := range l.keys {
		if k.flight {
			l.cache.Abandon(ctx, k.key)
		}
	}
	l.m.records.WithLabelValues(why).Inc()
}

// finish records the answer rec for each key whose kind keeps it, and
// abandons the others.
func (l *cacheLead) finish(ctx context.Context, rec *recording, cost policy.Money, now time.Time) {
	if l == nil || !l.done.CompareAndSwap(false, true) {
		return
	}
	ctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), settleTimeout)
	defer cancel()
	e := respcache.Entry{Status: rec.status, Headers: rec.headers, Body: rec.body, Cost: cost, Stored: now}
	for _, k := range l.keys {
		why := rec.keeps(k.key.Kind)
		if why == "" {
			err := l.cache.Complete(ctx, k.key, e, k.ttl)
			if err == nil {
				l.m.records.WithLabelValues("stored").Inc()
				continue
			}
			why = "error"
			if errors.Is(err, respcache.ErrTooLarge) {
				why = "too_large"
			} else {
				l.log.LogAttrs(ctx, slog.LevelWarn, "cache: answer not recorded", slog.String("route", k.key.Route), slog.Any("error", err))
			}
			// Complete ends the flight, recorded or not.
			l.m.records.WithLabelValues(why).Inc()
			continue
		}
		if k.flight {
			l.cache.Abandon(ctx, k.key)
		}
		l.m.records.WithLabelValues(why).Inc()
	}
}

// recording is the answer of a leading call as ext_proc sees it go to the
// worker: status, headers worth replaying, and the body up to the cap.
type recording struct {
	status   int
	headers  map[string]string
	body     []byte
	max      int64
	over     bool // the body outgrew max: nothing is kept
	complete bool // the response ended, as opposed to being cut
}

func newRecording(status int, headers map[string]string, max int64) *recording {
	r := &recording{status: status, max: max, headers: make(map[string]string, len(headers))}
	for k, v := range headers {
		if replayable(k) {
			r.headers[k] = v
		}
	}
	return r
}

func (r *recording) write(b []byte) {
	if r.over || len(b) == 0 {
		return
	}
	if int64(len(r.body))+int64(len(b)) > r.max {
		r.over, r.body = true, nil
		return
	}
	r.body = append(r.body, b...)
}

// keeps says why an entry of kind is not kept from this answer, or "" when
// it is: the response cache keeps whole 2xx answers; an idempotency record
// keeps any whole final answer, but not one the SDKs retry (408, 409, 429,
// 5xx: the upstream did not, or may not have, done the work, and the retry
// must reach it).
func (r *recording) keeps(kind respcache.Kind) string {
	switch {
	case r == nil || !r.complete || r.status == 0:
		return "incomplete"
	case r.over:
		return "too_large"
	case kind == respcache.Response && (r.status < 200 || r.status > 299):
		return "not_ok"
	case kind == respcache.Idempotency && retried(r.status):
		return "not_ok"
	}
	return ""
}

// retried reports a status the OpenAI and Anthropic SDKs retry.
func retried(status int) bool {
	return status == http.StatusRequestTimeout || status == http.StatusConflict || status == http.StatusTooManyRequests ||
		status >= 500 || status < 200
}

// replayable reports whether a response header is worth replaying: not a
// pseudo-header, hop-by-hop or framing header, date, request id, cookie,
// the upstream's rate limits of that moment, or Tollgate's own.
func replayable(name string) bool {
	switch name {
	case "connection", "keep-alive", "proxy-connection", "proxy-authenticate", "proxy-authorization", "te", "trailer",
		"transfer-encoding", "upgrade", "content-length", "date", "age", "expires", "set-cookie", "server", "via",
		"x-request-id", "request-id", "x-amzn-requestid", "cf-ray", "x-envoy-upstream-service-time", "retry-after", "retry-after-ms",
		"alt-svc", "strict-transport-security":
		return false
	}
	return !strings.HasPrefix(name, ":") && !strings.HasPrefix(name, "x-ratelimit-") &&
		!strings.HasPrefix(name, "anthropic-ratelimit-") && !strings.HasPrefix(name, "x-tollgate-") &&
		!strings.HasPrefix(name, "x-envoy-")
}

// cacheStep runs the policy's cache rules for an admission about to
// estimate and reserve call on route. It returns true when v is final: an
// answer from the cache (outcome cached) or a refusal (a retry whose first
// call is still in flight). Otherwise v may carry the keys the call leads.
func (s *Service) cacheStep(ctx context.Context, set *policy.Set, r *Request, path string, route *policy.Route,
	client *policy.Client, call costing.Call, v *Verdict) bool {
	if s.cache == nil || s.settle != SettleDeferred {
		return false
	}
	rule := set.Cache.For(route.Name, client.Tier.Name)
	if rule == nil {
		return false
	}
	ctl := controlsOf(r.Headers)
	// The request's identity, computed once and only when a key needs it
	// (canonicalizing a large body is the step's one real cost).
	var id *costing.Identity
	identity := func() costing.Identity {
		if id == nil {
			v := costing.Identify(route, r.Method, path, call)
			id = &v
		}
		return *id
	}
	wait := s.coalesceWait(ctx, set, v.Class)
	lease := set.Queue.Class(v.Class).MaxWait + set.Defaults.ReservationTTL
	lead := &cacheLead{cache: s.cache, m: s.m.cache, log: s.log, max: rule.MaxEntryBytes}
	if s.cacheMaxEntry > 0 {
		lead.max = min(lead.max, s.cacheMaxEntry)
	}

	// Idempotency first: a retry gets what its first call got.
	var ik *leadKey
	if k, ttl, ok := idempotencyKey(rule, route, r, client, identity, ctl); ok {
		e, st := s.begin(ctx, k, wait, lease)
		switch {
		case st == respcache.Found && validEntry(e):
			s.answer(ctx, set, client, route, v, CacheReplayed, e, "")
			return true
		case st == respcache.Lead:
			ik = &leadKey{key: k, ttl: ttl, flight: true}
			lead.keys = append(lead.keys, *ik)
		case st == respcache.Busy:
			v.Outcome, v.Reason, v.RetryAfter, v.Pool = OutcomeDenied, ReasonIdempotencyInFlight, time.Second, route.Pools[0].Name
			return true
		}
	}

	// The response cache.
	if rule.Enabled && !policy.SideEffects(route.Provider) {
		switch {
		case ctl.skip:
			s.m.cache.answers.WithLabelValues("skipped", route.Name).Inc()
		case cacheable(rule, identity()):
			k := respcache.Key{Kind: respcache.Response, Scope: scopeOf(rule, client), Route: route.Name, Hash: entryHash(identity().Hash, rule.Fingerprint)}
			if how, e, found := s.lookup(ctx, k, rule.TTL, ctl, wait, lease, lead); found {
				if ik != nil {
					// The retry of this call now has its answer.
					cctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), settleTimeout)
					if err := s.cache.Complete(cctx, ik.key, e, ik.ttl); err == nil {
						s.m.cache.records.WithLabelValues("stored").Inc()
					}
					cancel()
					lead.done.Store(true)
				}
				s.answer(ctx, set, client, route, v, how, e, k.Hash)
				return true
			}
			s.m.cache.answers.WithLabelValues(string(CacheMiss), route.Name).Inc()
			v.CacheMiss = k.Hash
		}
	}
	if len(lead.keys) > 0 {
		v.lead = lead
	}
	return false
}

// lookup finds k's answer, or waits for an identical call in flight, or
// makes this call the leader (added to lead).
func (s *Service) lookup(ctx context.Context, k respcache.Key, ttl time.Duration, ctl cacheControls, wait, lease time.Duration,
	lead *cacheLead) (CacheHow, respcache.Entry, bool) {
	if ctl.noLookup {
		lead.keys = append(lead.keys, leadKey{key: k, ttl: ttl})
		return "", respcache.Entry{}, false
	}
	if e, ok := s.cache.Get(ctx, k); ok && validEntry(e) {
		return CacheHit, e, true
	}
	e, st := s.begin(ctx, k, wait, lease)
	switch {
	case st == respcache.Found && validEntry(e):
		return CacheCoalesced, e, true
	case st == respcache.Lead:
		lead.keys = append(lead.keys, leadKey{key: k, ttl: ttl, flight: true})
	}
	// Busy: the identical call in flight did not finish in time; this one
	// goes upstream uncached.
	return "", respcache.Entry{}, false
}

// begin is Cache.Begin, counted while it looks up or waits.
func (s *Service) begin(ctx context.Context, k respcache.Key, wait, lease time.Duration) (respcache.Entry, respcache.State) {
	s.m.cache.waiting.Inc()
	defer s.m.cache.waiting.Dec()
	return s.cache.Begin(ctx, k, wait, lease)
}

// coalesceWait is how long a call may wait for an identical one in
// flight: its class's max_wait, answered a margin before Envoy's deadline.
func (s *Service) coalesceWait(ctx context.Context, set *policy.Set, class policy.Class) time.Duration {
	w := set.Queue.Class(class).MaxWait
	if class == policy.Immediate {
		w = 0
	}
	if dl, ok := ctx.Deadline(); ok {
		w = min(w, time.Until(dl)-deadlineMargin)
	}
	return max(w, 0)
}

// answer makes v the cached answer e, and books what it saved the client.
func (s *Service) answer(ctx context.Context, set *policy.Set, client *policy.Client, route *policy.Route, v *Verdict,
	how CacheHow, e respcache.Entry, key string) {
	now := s.clock.Now()
	v.Allowed, v.Outcome, v.Pool = false, OutcomeCached, route.Pools[0].Name
	v.Cached = &CachedAnswer{How: how, Entry: e, Age: max(now.Sub(e.Stored), 0), Key: key}
	strategy := StrategyCache
	switch how {
	case CacheCoalesced:
		v.Reason, strategy = ReasonCoalesced, StrategyCoalesce
	case CacheReplayed:
		v.Reason, strategy = ReasonReplayed, StrategyIdempotency
	default:
		v.Reason = ReasonCacheHit
	}
	s.m.cache.answers.WithLabelValues(string(how), route.Name).Inc()
	if e.Cost > 0 {
		s.cacheSavings.add(savingsKey{owner: client.ID, period: set.Defaults.Period(now), tier: client.Tier.Name}, strategy, e.Cost)
	}
}

// cacheable reports whether the response cache keeps a call of identity
// id under rule: a whole, pure call, deterministic unless the rule takes
// any temperature.
func cacheable(rule *policy.CacheRule, id costing.Identity) bool {
	return id.Whole && id.Pure && (id.Deterministic || rule.Cacheable == policy.CacheAnyTemperature)
}

// validEntry refuses an entry no worker could be answered with.
func validEntry(e respcache.Entry) bool { return e.Status >= 200 && e.Status <= 599 }

// scopeOf is whose entries a client's calls share: its own id, or its
// parent's when the rule shares the parent's scope.
func scopeOf(rule *policy.CacheRule, c *policy.Client) string {
	if rule.Scope == policy.ScopeParent && c.Parent != nil {
		return c.Parent.ID
	}
	return c.ID
}

// entryHash keys a response-cache entry: the request's identity and the
// settings of the rule it was stored under.
func entryHash(request, fingerprint string) string {
	h := sha256.Sum256([]byte("response\x00" + request + "\x00" + fingerprint))
	return hex.EncodeToString(h[:])
}

// idempotencyKey is the record a call is a retry of, when the rule
// recognises one: its Idempotency-Key with its request (the same key on
// another request is another call), else, on an SMS or e-mail route with a
// body window, its request alone.
func idempotencyKey(rule *policy.CacheRule, route *policy.Route, r *Request, client *policy.Client, identity func() costing.Identity,
	ctl cacheControls) (respcache.Key, time.Duration, bool) {
	switch strings.ToUpper(r.Method) {
	case http.MethodGet, http.MethodHead, http.MethodOptions:
		return respcache.Key{}, 0, false
	}
	var seed string
	var ttl time.Duration
	switch key := strings.TrimSpace(r.Headers[HeaderIdempotencyKey]); {
	case key != "" && rule.Idempotency.Key:
		seed, ttl = "key\x00"+key+"\x00"+identity().Hash, rule.Idempotency.TTL
	case key == "" && rule.Idempotency.BodyWindow > 0 && policy.Messaging(route.Provider) && !ctl.skip:
		seed, ttl = "body\x00"+identity().Hash, rule.Idempotency.BodyWindow
	default:
		return respcache.Key{}, 0, false
	}
	h := sha256.Sum256([]byte(seed))
	return respcache.Key{Kind: respcache.Idempotency, Scope: client.ID, Route: route.Name, Hash: hex.EncodeToString(h[:])}, ttl, true
}

// InvalidateCache drops the response cache's entries of scope (a client
// id, or a parent whose scope its clients share), of route or ("") every
// route, and returns how many it dropped.
func (s *Service) InvalidateCache(ctx context.Context, scope, route string) (int, error) {
	if s.cache == nil {
		return 0, ErrNoCache
	}
	return s.cache.Invalidate(ctx, respcache.Response, scope, route)
}

// DeleteCacheEntry drops one entry of the response cache (the hash an
// answer's x-tollgate-cache-key names).
func (s *Service) DeleteCacheEntry(ctx context.Context, scope, route, hash string) (bool, error) {
	if s.cache == nil {
		return false, ErrNoCache
	}
	return s.cache.Delete(ctx, respcache.Key{Kind: respcache.Response, Scope: scope, Route: route, Hash: hash})
}

// cacheMetrics count what the cache does.
type cacheMetrics struct {
	answers *prometheus.CounterVec
	records *prometheus.CounterVec
	waiting prometheus.Gauge
}

func newCacheMetrics(f *metricset.Set) *cacheMetrics {
	return &cacheMetrics{
		answers: f.CounterVec(prometheus.CounterOpts{
			Name: "tollgate_cache_answers_total",
			Help: "Calls a cache rule covers, by how the cache answered (hit, coalesced, replayed: answered at Check for $0; miss: sent upstream, its answer recorded; skipped: the worker said no-store or x-tollgate-cache: skip) and route.",
		}, []string{"outcome", "route"}),
		records: f.CounterVec(prometheus.CounterOpts{
			Name: "tollgate_cache_records_total",
			Help: "Answers of calls that led a cache flight or record, by result: stored, or not (too_large; not_ok: a status not kept; incomplete: cut short; denied: the call was refused after all; ended: settled through the API; lapsed: never settled; error).",
		}, []string{"result"}),
		waiting: f.Gauge(prometheus.GaugeOpts{
			Name: "tollgate_cache_waiting_calls",
			Help: "Checks looking up the cache or waiting for an identical call in flight (a retry's first call, or a call to coalesce with).",
		}),
	}
}

// endLead records the call's answer for the keys it leads, at what the
// call cost (nothing, when released), or abandons them: a response cut
// short, or a body that did not go as admitted (the optimizer's edits no
// longer applied), is not an answer to the request it was keyed by.
func (c *Call) endLead(ctx context.Context, p *pendingCall, e limiter.Ending) {
	if p.opt != nil && !c.rewritten {
		p.lead.abandon(ctx, "incomplete")
		return
	}
	rec := c.rec
	if rec == nil {
		rec = &recording{}
	}
	p.lead.finish(ctx, rec, e.Outcome.Spend(0, e.Actual), c.s.clock.Now())
}
