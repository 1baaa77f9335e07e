package respcache

import (
	"context"
	crand "crypto/rand"
	_ "embed"
	"encoding/hex"
	"errors"
	"fmt"
	"math/rand/v2"
	"strconv"
	"strings"
	"time"

	"github.com/redis/go-redis/v9"
)

var _ Cache = (*Redis)(nil)

var (
	//go:embed begin.lua
	beginLua string
	//go:embed complete.lua
	completeLua string
	//go:embed release.lua
	releaseLua string
	//go:embed delete.lua
	deleteLua string

	beginScript    = redis.NewScript(beginLua)
	completeScript = redis.NewScript(completeLua)
	releaseScript  = redis.NewScript(releaseLua)
	deleteScript   = redis.NewScript(deleteLua)
)

// Scripts lists the embedded scripts, for loading ahead of use.
var Scripts = map[string]*redis.Script{
	"begin": beginScript, "complete": completeScript, "release": releaseScript, "delete": deleteScript,
}

// RedisConfig configures the Redis level.
type RedisConfig struct {
	// Prefix starts every key and is their hash tag ("{tollgate}:rc:…"),
	// as the limiter store's: the cache of a fleet lives in its slot.
	Prefix string
	// MaxEntryBytes is the largest entry kept (Size, before compression);
	// Complete refuses a larger one with ErrTooLarge. Zero means 1 MiB.
	MaxEntryBytes int64
	// LocalTTL caps how long a Tiered cache keeps its in-process copy of
	// an entry: so long may an Invalidate or Delete made on another member
	// go unseen here. Zero means a minute.
	LocalTTL time.Duration
	// PollMin and PollMax bound the backoff of a call waiting for another
	// member's flight (it looks again after PollMin, doubling, at most
	// PollMax, with jitter). Zero means 5 ms and 50 ms.
	PollMin, PollMax time.Duration
	// Clock tells entries' expiry (written into each entry, checked on
	// reading, beside the key's own TTL in Redis) and Stored; nil means
	// the system clock.
	Clock Clock
	// Metrics counts lookups at level l2, waits and errors; nil counts
	// nothing.
	Metrics *Metrics
}

// Defaults of RedisConfig.
const (
	DefaultLocalTTL = time.Minute
	DefaultPollMin  = 5 * time.Millisecond
	DefaultPollMax  = 50 * time.Millisecond
)

// DefaultRedisConfig returns the prefix "tollgate" and the defaults.
func DefaultRedisConfig() RedisConfig {
	return RedisConfig{Prefix: "tollgate", MaxEntryBytes: DefaultMaxEntryBytes, LocalTTL: DefaultLocalTTL,
		PollMin: DefaultPollMin, PollMax: DefaultPollMax}
}

// Validate reports a configuration that cannot work.
func (c RedisConfig) Validate() error {
	var errs []error
	if c.Prefix == "" || strings.ContainsAny(c.Prefix, "{}\n ") {
		errs = append(errs, fmt.Errorf("respcache: redis: prefix %q must be non-empty, without braces, spaces or newlines", c.Prefix))
	}
	if c.MaxEntryBytes < 0 || c.LocalTTL < 0 || c.PollMin < 0 || c.PollMax < 0 {
		errs = append(errs, errors.New("respcache: redis: entry bytes, local ttl and poll intervals must not be negative"))
	}
	if c.PollMin > 0 && c.PollMax > 0 && c.PollMin > c.PollMax {
		errs = append(errs, fmt.Errorf("respcache: redis: poll from %v to %v: the least is more than the most", c.PollMin, c.PollMax))
	}
	return errors.Join(errs...)
}

// tooLargeMark is how long a flight whose answer could not be kept stays
// marked, sending its waiters (and new calls) upstream without a claim:
// long enough for every waiter's next look at PollMax.
const tooLargeMark = time.Second

// Redis is the level a fleet shares. Entries, claims and indexes live
// under the prefix's hash tag; each change is one Lua script, each lookup
// one GET. Every call is bounded by ctx (and the client's timeouts); a
// failing Redis degrades: Get misses, Begin leads, the rest return the
// error. Redis does not own the client; the caller closes it.
type Redis struct {
	c        redis.UniversalClient
	p        string // "{prefix}:rc:"
	id       string // this member's claims
	clock    Clock
	m        *Metrics
	cap      int64
	localTTL time.Duration
	pollMin  time.Duration
	pollMax  time.Duration
}

// NewRedis returns the Redis level on client c.
func NewRedis(c redis.UniversalClient, cfg RedisConfig) (*Redis, error) {
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	if c == nil {
		return nil, errors.New("respcache: redis: nil client")
	}
	def := DefaultRedisConfig()
	if cfg.MaxEntryBytes == 0 {
		cfg.MaxEntryBytes = def.MaxEntryBytes
	}
	if cfg.LocalTTL == 0 {
		cfg.LocalTTL = def.LocalTTL
	}
	if cfg.PollMin == 0 {
		cfg.PollMin = min(def.PollMin, max(cfg.PollMax, time.Millisecond))
	}
	if cfg.PollMax == 0 {
		cfg.PollMax = max(def.PollMax, cfg.PollMin)
	}
	if cfg.Clock == nil {
		cfg.Clock = systemClock{}
	}
	var id [8]byte
	_, _ = crand.Read(id[:]) // never fails
	return &Redis{c: c, p: "{" + cfg.Prefix + "}:rc:", id: hex.EncodeToString(id[:]), clock: cfg.Clock, m: cfg.Metrics,
		cap: cfg.MaxEntryBytes, localTTL: cfg.LocalTTL, pollMin: cfg.PollMin, pollMax: cfg.PollMax}, nil
}

// Load puts the scripts into Redis's script cache, so the first call does
// not pay for an EVAL. A failure is not fatal: scripts load themselves on
// NOSCRIPT.
func (r *Redis) Load(ctx context.Context) error {
	var errs []error
	for name, sc := range Scripts {
		if err := sc.Load(ctx, r.c).Err(); err != nil {
			errs = append(errs, fmt.Errorf("respcache: load %s: %w", name, err))
		}
	}
	return errors.Join(errs...)
}

// Close does nothing: the client belongs to the caller.
func (r *Redis) Close() error { return nil }

func lenPrefixed(s string) string { return strconv.Itoa(len(s)) + ":" + s }

func (r *Redis) pair(kind Kind, scope, route string) string {
	return strconv.Itoa(int(kind)) + ":" + lenPrefixed(scope) + ":" + lenPrefixed(route)
}

// Keys of one entry: {P}:rc:e:<kind>:<len>:<scope>:<len>:<route>:<hash>,
// its claim under f:, the index of its scope and route under i:.
func (r *Redis) entryKey(k Key) string {
	return r.p + "e:" + r.pair(k.Kind, k.Scope, k.Route) + ":" + k.Hash
}
func (r *Redis) flightKey(k Key) string {
	return r.p + "f:" + r.pair(k.Kind, k.Scope, k.Route) + ":" + k.Hash
}
func (r *Redis) indexKey(kind Kind, scope, route string) string {
	return r.p + "i:" + r.pair(kind, scope, route)
}
func (r *Redis) scopeRoutesKey(kind Kind, scope string) string {
	return r.p + "s:" + strconv.Itoa(int(kind)) + ":" + lenPrefixed(scope)
}
func (r *Redis) routeScopesKey(kind Kind, route string) string {
	return r.p + "r:" + strconv.Itoa(int(kind)) + ":" + lenPrefixed(route)
}

// failed counts a Redis error, unless the caller has gone.
func (r *Redis) failed(err error) {
	if !errors.Is(err, context.Canceled) {
		r.m.l2Error()
	}
}

// Get returns the entry under k, or false (also when Redis fails).
func (r *Redis) Get(ctx context.Context, k Key) (Entry, bool) {
	e, _, ok := r.get(ctx, k)
	r.m.lookup(k.Kind, levelL2, ok)
	return e, ok
}

func (r *Redis) get(ctx context.Context, k Key) (Entry, time.Time, bool) {
	if k.validate() != nil || ctx.Err() != nil {
		return Entry{}, time.Time{}, false
	}
	b, err := r.c.Get(ctx, r.entryKey(k)).Bytes()
	if err != nil {
		if !errors.Is(err, redis.Nil) {
			r.failed(err)
		}
		return Entry{}, time.Time{}, false
	}
	return r.decode(b)
}

// decode reads an entry, missing on a corrupt or expired one.
func (r *Redis) decode(b []byte) (Entry, time.Time, bool) {
	e, exp, err := decodeEntry(b, r.cap)
	if err != nil {
		r.m.l2Error()
		return Entry{}, time.Time{}, false
	}
	if !r.clock.Now().Before(exp) {
		return Entry{}, time.Time{}, false
	}
	return e, exp, true
}

// Begin looks k up and, when nothing is recorded, claims k's flight for
// lease or polls, with backoff, until the entry is found, the claim is
// gone (then one poller claims it) or wait ends (Busy). A failing Redis
// makes the caller lead (without a claim); a lease of zero or less
// claims nothing.
func (r *Redis) Begin(ctx context.Context, k Key, wait, lease time.Duration) (Entry, State) {
	e, _, st := r.begin(ctx, k, wait, lease)
	return e, st
}

// Replies of begin.lua.
const (
	replyBusy    = 0
	replyFound   = 1
	replyClaimed = 2
	replyLead    = 3
)

func (r *Redis) begin(ctx context.Context, k Key, wait, lease time.Duration) (Entry, time.Time, State) {
	if k.validate() != nil {
		r.m.lookup(k.Kind, levelL2, false)
		return Entry{}, time.Time{}, Lead
	}
	if ctx.Err() != nil {
		return Entry{}, time.Time{}, Busy
	}
	start := time.Now()
	e, exp, st, err := r.try(ctx, k, lease)
	r.m.lookup(k.Kind, levelL2, st == Found)
	switch {
	case err != nil && ctx.Err() != nil:
		return Entry{}, time.Time{}, Busy
	case err != nil:
		r.failed(err)
		return Entry{}, time.Time{}, Lead
	case st != Busy:
		return e, exp, st
	}
	// Another call holds the claim: wait for it.
	wctx, cancel := context.WithDeadline(ctx, start.Add(wait))
	defer cancel()
	end := func(e Entry, exp time.Time, s State) (Entry, time.Time, State) {
		r.m.waited(s)
		return e, exp, s
	}
	pause := r.pollMin
	timer := time.NewTimer(0)
	defer timer.Stop()
	<-timer.C
	for {
		timer.Reset(pause/2 + rand.N(pause/2+1))
		select {
		case <-wctx.Done():
			return end(Entry{}, time.Time{}, Busy)
		case <-timer.C:
		}
		e, exp, st, err := r.try(wctx, k, lease)
		switch {
		case err != nil && wctx.Err() != nil:
			return end(Entry{}, time.Time{}, Busy)
		case err != nil:
			r.failed(err)
			return end(Entry{}, time.Time{}, Lead)
		case st != Busy:
			return end(e, exp, st)
		}
		pause = min(2*pause, r.pollMax)
	}
}

// try runs begin.lua once.
func (r *Redis) try(ctx context.Context, k Key, lease time.Duration) (Entry, time.Time, State, error) {
	ms := int64(0)
	if lease > 0 {
		ms = max(lease.Milliseconds(), 1)
	}
	res, err := beginScript.Run(ctx, r.c, []string{r.entryKey(k), r.flightKey(k)}, r.id, ms, r.clock.Now().UnixMilli()).Slice()
	if err != nil {
		return Entry{}, time.Time{}, Busy, fmt.Errorf("respcache: begin: %w", err)
	}
	code, _ := res[0].(int64)
	switch code {
	case replyFound:
		s, _ := res[1].(string)
		e, exp, ok := r.decode([]byte(s))
		if !ok { // corrupt, or expired by this member's clock: go upstream, unclaimed
			return Entry{}, time.Time{}, Lead, nil
		}
		return e, exp, Found, nil
	case replyClaimed, replyLead:
		return Entry{}, time.Time{}, Lead, nil
	case replyBusy:
		return Entry{}, time.Time{}, Busy, nil
	}
	return Entry{}, time.Time{}, Busy, fmt.Errorf("respcache: begin replied %v", res)
}

// Complete records e under k for ttl (PX) and ends k's flight, if this
// member holds its claim. An entry over the size cap is not written: the
// flight is marked so that its waiters go upstream, and it returns
// ErrTooLarge.
func (r *Redis) Complete(ctx context.Context, k Key, e Entry, ttl time.Duration) error {
	return r.complete(ctx, k, e, ttl, Size(k, e))
}

func (r *Redis) complete(ctx context.Context, k Key, e Entry, ttl time.Duration, size int64) error {
	if err := k.validate(); err != nil {
		return err
	}
	if err := ctx.Err(); err != nil {
		return err
	}
	var refuse error
	switch {
	case ttl <= 0:
		refuse = fmt.Errorf("respcache: ttl %v must be positive", ttl)
	case ttl < time.Millisecond:
		refuse = fmt.Errorf("respcache: ttl %v is under the millisecond Redis keeps", ttl)
	case size > r.cap:
		refuse = fmt.Errorf("%w: %d bytes, at most %d in Redis", ErrTooLarge, size, r.cap)
	}
	if refuse != nil {
		if err := r.release(ctx, k, tooLargeMark); err != nil {
			r.failed(err)
			return errors.Join(refuse, err)
		}
		return refuse
	}
	now := r.clock.Now()
	if e.Stored.IsZero() {
		e.Stored = now
	}
	v := encodeEntry(make([]byte, 0, 64+len(e.Body)/2), e, now.Add(ttl))
	keys := []string{r.entryKey(k), r.flightKey(k), r.indexKey(k.Kind, k.Scope, k.Route),
		r.scopeRoutesKey(k.Kind, k.Scope), r.routeScopesKey(k.Kind, k.Route)}
	if err := completeScript.Run(ctx, r.c, keys, v, max(ttl.Milliseconds(), 1), r.id, k.Hash, k.Scope, k.Route).Err(); err != nil {
		r.failed(err)
		return fmt.Errorf("respcache: complete: %w", err)
	}
	return nil
}

// Abandon drops k's claim if this member holds it: one waiter claims it
// next.
func (r *Redis) Abandon(ctx context.Context, k Key) {
	if k.validate() != nil {
		return
	}
	if err := r.release(ctx, k, 0); err != nil {
		r.failed(err)
	}
}

// release ends this member's claim of k: dropped (mark 0) or marked '!'.
func (r *Redis) release(ctx context.Context, k Key, mark time.Duration) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	if err := releaseScript.Run(ctx, r.c, []string{r.flightKey(k)}, r.id, mark.Milliseconds()).Err(); err != nil {
		return fmt.Errorf("respcache: release: %w", err)
	}
	return nil
}

// Delete drops the entry under k.
func (r *Redis) Delete(ctx context.Context, k Key) (bool, error) {
	if err := k.validate(); err != nil {
		return false, err
	}
	if err := ctx.Err(); err != nil {
		return false, err
	}
	n, err := deleteScript.Run(ctx, r.c, []string{r.entryKey(k), r.indexKey(k.Kind, k.Scope, k.Route)}, k.Hash).Int()
	if err != nil {
		r.failed(err)
		return false, fmt.Errorf("respcache: delete: %w", err)
	}
	return n > 0, nil
}

// invalidateBatch is how many index lines Invalidate reads, and entries it
// drops, per round trip.
const invalidateBatch = 500

// Invalidate drops every entry of kind under scope and route ("" for
// any, not both), and returns how many it dropped. It reads the indexes
// complete.lua keeps (the routes of a scope, the scopes of a route, the
// hashes of a pair): one round trip per index read and one per 500
// entries dropped. An entry written while it runs may stay.
func (r *Redis) Invalidate(ctx context.Context, kind Kind, scope, route string) (int, error) {
	if scope == "" && route == "" {
		return 0, ErrNoScope
	}
	if !kind.valid() {
		return 0, fmt.Errorf("%w: kind %v", ErrInvalidKey, kind)
	}
	type pair struct{ scope, route string }
	var pairs []pair
	switch {
	case scope != "" && route != "":
		pairs = []pair{{scope, route}}
	case route == "":
		routes, err := r.members(ctx, r.scopeRoutesKey(kind, scope))
		if err != nil {
			return 0, err
		}
		for _, rt := range routes {
			pairs = append(pairs, pair{scope, rt})
		}
	default:
		scopes, err := r.members(ctx, r.routeScopesKey(kind, route))
		if err != nil {
			return 0, err
		}
		for _, s := range scopes {
			pairs = append(pairs, pair{s, route})
		}
	}
	dropped := 0
	for _, p := range pairs {
		n, err := r.dropPair(ctx, kind, p.scope, p.route)
		dropped += n
		if err != nil {
			return dropped, err
		}
	}
	return dropped, nil
}

// members reads a whole sorted set of names, in batches.
func (r *Redis) members(ctx context.Context, key string) ([]string, error) {
	var all []string
	for start := int64(0); ; start += invalidateBatch {
		if err := ctx.Err(); err != nil {
			return nil, err
		}
		got, err := r.c.ZRange(ctx, key, start, start+invalidateBatch-1).Result()
		if err != nil {
			r.failed(err)
			return nil, fmt.Errorf("respcache: invalidate: %w", err)
		}
		all = append(all, got...)
		if len(got) < invalidateBatch {
			return all, nil
		}
	}
}

// dropPair drops the entries a pair's index lists, a batch at a time:
// each batch's entries are unlinked and its lines removed in one round
// trip, so the index shrinks as it goes.
func (r *Redis) dropPair(ctx context.Context, kind Kind, scope, route string) (int, error) {
	idx := r.indexKey(kind, scope, route)
	prefix := r.p + "e:" + r.pair(kind, scope, route) + ":"
	dropped := 0
	for {
		if err := ctx.Err(); err != nil {
			return dropped, err
		}
		hashes, err := r.c.ZRange(ctx, idx, 0, invalidateBatch-1).Result()
		if err != nil {
			r.failed(err)
			return dropped, fmt.Errorf("respcache: invalidate: %w", err)
		}
		if len(hashes) == 0 {
			return dropped, nil
		}
		keys := make([]string, len(hashes))
		members := make([]any, len(hashes))
		for i, h := range hashes {
			keys[i], members[i] = prefix+h, h
		}
		var unlink *redis.IntCmd
		_, err = r.c.TxPipelined(ctx, func(p redis.Pipeliner) error {
			unlink = p.Unlink(ctx, keys...)
			p.ZRem(ctx, idx, members...)
			return nil
		})
		if err != nil {
			r.failed(err)
			return dropped, fmt.Errorf("respcache: invalidate: %w", err)
		}
		dropped += int(unlink.Val())
		if len(hashes) < invalidateBatch {
			return dropped, nil
		}
	}
}
