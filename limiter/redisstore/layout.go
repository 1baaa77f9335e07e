package redisstore

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/tollgate/tollgate/limiter"
)

// Where keys live (docs/redis.md, "Redis Cluster"). Without Spread every
// key is under the store's one hash tag, "{prefix}:", in one slot. With
// Spread:
//
//   - a tenant's keys — its clients' buckets, its budget chain, concurrency
//     slots, savings, reservations and their expiry index — are under
//     "{prefix:t:<hash of the tenant>}:", the tenant being the root of the
//     client's budget chain (Config.Tenant), so that everything a call
//     holds is in one slot and every script of one tenant stays atomic;
//   - a shared pool's buckets (limiter.Key without a client) are under
//     "{prefix:p:<hash of the pool>}:";
//   - a reservation's locator, "{prefix:l:<hash of the id>}:l:<id>", says
//     which tenant holds it (Finish knows only the id), and "{prefix}:tenants"
//     lists the tenants whose reservations the expiry sweep visits.
//
// An admission that takes a shared pool and a tenant's keys is then two
// steps: the locator and the pools first, in one pipeline (each pool an
// all-or-nothing script on its slot), then the tenant (one script, all or
// nothing, that keeps the pools' charges in the reservation's record); a
// tenant that says no has the pools' units given back. Every failure between steps leaves a pool charged for a call
// that did not go — never a call admitted past a limit, never spend held —
// and a bucket refills by itself. The names are built here and only here.

// errCrash, from a test's step hook, stops a call between steps as a
// killed process would: nothing after the step runs.
var errCrash = errors.New("redisstore: crashed between steps (test)")

// hashTag is a fixed-width, brace-free name for s inside a hash tag: its
// 64-bit FNV-1a, in hex (inline: no allocation but the string).
func hashTag(s string) string {
	h := uint64(14695981039346656037)
	for i := 0; i < len(s); i++ {
		h ^= uint64(s[i])
		h *= 1099511628211
	}
	return strconv.FormatUint(h, 16)
}

// tenantOf is the tenant whose slot owner's keys live in.
func (s *Store) tenantOf(owner string) string {
	if s.tenant != nil {
		return s.tenant(owner)
	}
	return owner
}

// ownerP is the prefix of the slot of a client's or budget owner's keys.
func (s *Store) ownerP(owner string) string {
	if !s.spread {
		return s.p
	}
	return "{" + s.prefix + ":t:" + hashTag(s.tenantOf(owner)) + "}:"
}

// poolP is the prefix of the slot of a shared pool's buckets.
func (s *Store) poolP(pool string) string {
	if !s.spread {
		return s.p
	}
	return "{" + s.prefix + ":p:" + hashTag(pool) + "}:"
}

// keyP is the prefix of the slot of bucket k.
func (s *Store) keyP(k limiter.Key) string {
	if k.Client == "" {
		return s.poolP(k.Pool)
	}
	return s.ownerP(k.Client)
}

// locKey is where a spread reservation's tenant prefix is kept.
func (s *Store) locKey(id string) string {
	return "{" + s.prefix + ":l:" + hashTag(id) + "}:l:" + id
}

// tenantsKey lists the prefixes of tenants that have held reservations.
func (s *Store) tenantsKey() string { return s.p + "tenants" }

// chainP is the prefix of the slot of owner's keys and of budgets', which
// must be one.
func (s *Store) chainP(owner string, budgets []limiter.Budget) (string, error) {
	p := s.ownerP(owner)
	for _, b := range budgets {
		if q := s.ownerP(b.Owner); q != p {
			return "", fmt.Errorf("redisstore: %q and %q are of different tenants (%q, %q): a budget chain must share one (Config.Tenant)",
				owner, b.Owner, s.tenantOf(owner), s.tenantOf(b.Owner))
		}
	}
	return p, nil
}

// group is the indices of a call's items whose keys share a slot's prefix.
type group struct {
	p   string
	idx []int
}

// groupBy splits n items by prefix, in order of first appearance; no
// items is one empty group on the store's prefix (a script still runs).
func groupBy(n int, pOf func(i int) string, def string) []group {
	if n == 0 {
		return []group{{p: def}}
	}
	var out []group
	for i := range n {
		p := pOf(i)
		j := 0
		for j < len(out) && out[j].p != p {
			j++
		}
		if j == len(out) {
			out = append(out, group{p: p})
		}
		out[j].idx = append(out[j].idx, i)
	}
	return out
}

func (s *Store) groupKeys(n int, key func(i int) limiter.Key) []group {
	return groupBy(n, func(i int) string { return s.keyP(key(i)) }, s.p)
}

func (s *Store) groupOwners(n int, owner func(i int) string) []group {
	return groupBy(n, func(i int) string { return s.ownerP(owner(i)) }, s.ownerP(""))
}

// runEach runs script once per call (keys, args), one round trip: alone,
// as Run does; several, in one pipeline (each on its master at once), a
// master that lost the script answered with an EVAL afterwards.
func (s *Store) runEach(ctx context.Context, sc *redis.Script, keys [][]string, args [][]any) []*redis.Cmd {
	out := make([]*redis.Cmd, len(keys))
	if len(keys) == 1 {
		out[0] = sc.Run(ctx, s.c, keys[0], args[0]...)
		return out
	}
	_, _ = s.c.Pipelined(ctx, func(p redis.Pipeliner) error { // each command's error is read from it
		for i := range keys {
			out[i] = sc.EvalSha(ctx, p, keys[i], args[i]...)
		}
		return nil
	})
	for i, c := range out {
		if redis.HasErrorPrefix(c.Err(), "NOSCRIPT") {
			out[i] = sc.Run(ctx, s.c, keys[i], args[i]...)
		}
	}
	return out
}

// pick is the items of xs at idx.
func pick[T any](xs []T, idx []int) []T {
	out := make([]T, len(idx))
	for j, i := range idx {
		out[j] = xs[i]
	}
	return out
}

// tenantOfRequest is the prefix of the slot of the tenant whose hold req
// takes, and whether it takes one: the hold's client (the first budget's
// owner, else the slot's client, else the first client bucket's), whose
// budgets and slot must all be of that tenant.
func (s *Store) tenantOfRequest(req limiter.Request) (string, bool, error) {
	h := req.Hold
	if h == nil {
		return "", false, nil
	}
	owner := ""
	switch {
	case len(h.Budgets) > 0:
		owner = h.Budgets[0].Owner
	case h.Slot != nil:
		owner = h.Slot.Client
	default:
		for _, t := range req.Takes {
			if t.Key.Client != "" {
				owner = t.Key.Client
				break
			}
		}
	}
	budgets := h.Budgets
	if h.Slot != nil {
		budgets = append(append([]limiter.Budget(nil), budgets...), limiter.Budget{Owner: h.Slot.Client})
	}
	p, err := s.chainP(owner, budgets)
	return p, true, err
}

// reserveSpread is Reserve with Spread: a step on each slot of the
// buckets outside the hold's tenant (shared pools, or other clients'),
// then the tenant's (see above).
func (s *Store) reserveSpread(ctx context.Context, req limiter.Request) (limiter.Decision, error) {
	tp, hasTenant, err := s.tenantOfRequest(req)
	if err != nil {
		return limiter.Decision{}, err
	}
	var steps []group
	var ownIdx []int
	for _, g := range s.groupKeys(len(req.Takes), func(i int) limiter.Key { return req.Takes[i].Key }) {
		if hasTenant && g.p == tp {
			ownIdx = g.idx
		} else if len(g.idx) > 0 {
			steps = append(steps, g)
		}
	}
	if !hasTenant && len(steps) <= 1 {
		p := s.p
		if len(steps) == 1 {
			p = steps[0].p
		}
		res, err := s.reserveOn(ctx, p, req, false, "") // one slot: one script, as without Spread
		if err != nil {
			return limiter.Decision{}, err
		}
		return decodeDecision(res, req)
	}
	locating := req.Hold != nil && !req.Hold.Commit
	if len(steps) == 0 {
		if locating {
			if err := s.locate(ctx, req.Hold, tp); err != nil {
				return limiter.Decision{}, err
			}
		}
		res, err := s.reserveOn(ctx, tp, req, false, "")
		if err != nil {
			return limiter.Decision{}, err
		}
		return decodeDecision(res, req)
	}

	// One round: the locator and every step outside the tenant's slot, in
	// one pipeline (each on its master at once).
	subs := make([]limiter.Request, len(steps))
	cmds := make([]*redis.Cmd, len(steps))
	var loc func() error
	// Each command's own error is read below: the pipeline's is the first of them.
	_, _ = s.c.Pipelined(ctx, func(p redis.Pipeliner) error {
		if locating {
			loc = s.queueLocate(ctx, p, req.Hold, tp)
		}
		for i, g := range steps {
			subs[i] = limiter.Request{Takes: pick(req.Takes, g.idx), Now: req.Now}
			keys, args := reserveArgs(g.p, subs[i], false, "")
			cmds[i] = s.sc.reserve.EvalSha(ctx, p, keys, args...)
		}
		return nil
	})
	d := limiter.Decision{Allowed: true, Blocking: -1, BudgetBlocking: -1, Buckets: make([]limiter.BucketState, len(req.Takes))}
	var taken []group // steps that took units: the buckets they charged
	var charges []limiter.Charge
	var stepErr error
	for i, g := range steps {
		cmd := cmds[i]
		if redis.HasErrorPrefix(cmd.Err(), "NOSCRIPT") { // a master that lost its scripts: EVAL, as Run does
			keys, args := reserveArgs(g.p, subs[i], false, "")
			cmd = s.sc.reserve.Run(ctx, s.c, keys, args...)
		}
		res, err := reserveReply(cmd, subs[i])
		var pd limiter.Decision
		if err == nil {
			pd, err = decodeDecision(res, subs[i])
		}
		if err != nil {
			stepErr = cmp.Or(stepErr, err) // a step that failed may have run: left as it is
			continue
		}
		for j, k := range g.idx {
			d.Buckets[k] = pd.Buckets[j]
		}
		if pd.Allowed {
			took := group{p: g.p}
			for j, k := range g.idx {
				if !pd.Buckets[j].Short { // a short shadow bucket was left as is
					took.idx = append(took.idx, k)
				}
			}
			taken = append(taken, took)
			charges = append(charges, limiter.Charged(subs[i].Takes, pd)...)
		}
		d.Allowed = d.Allowed && pd.Allowed
	}
	if s.hook != nil {
		if err := s.hook("pool"); errors.Is(err, errCrash) {
			return limiter.Decision{}, err
		} else if err != nil {
			stepErr = cmp.Or(stepErr, err)
		}
	}
	if stepErr == nil && loc != nil {
		stepErr = loc()
	}
	if stepErr != nil {
		s.giveBack(ctx, req, taken, nil)
		return limiter.Decision{}, stepErr
	}
	if !hasTenant {
		if !d.Allowed {
			s.giveBack(ctx, req, taken, &d)
		}
		return mergeDecision(req, d, limiter.Decision{Blocking: -1, BudgetBlocking: -1}), nil
	}
	sub := limiter.Request{Takes: pick(req.Takes, ownIdx), Hold: req.Hold, Now: req.Now}
	res, err := s.reserveOn(ctx, tp, sub, !d.Allowed, encodeCharges(charges))
	if err != nil {
		if Unsent(err) || errors.Is(err, limiter.ErrDuplicateReservation) {
			s.giveBack(ctx, req, taken, nil)
		}
		// Else it may have run, the reservation standing with the pools'
		// charges, which its finish refunds: the pools stay charged.
		return limiter.Decision{}, err
	}
	td, err := decodeDecision(res, sub)
	if err != nil {
		return limiter.Decision{}, err // it ran: as a reply lost, the pools stay charged
	}
	for j, i := range ownIdx {
		d.Buckets[i] = td.Buckets[j]
	}
	d.Allowed = d.Allowed && td.Allowed
	if !d.Allowed {
		s.giveBack(ctx, req, taken, &d)
	}
	return mergeDecision(req, d, td), nil
}

// queueLocate queues in p what records which tenant holds reservation h,
// and that the tenant's reservations are to be swept; the function it
// returns, called once p has run, judges the answer: a locator another
// tenant holds is a duplicate id; the tenant's own (a call sent again) is
// left for its script to judge.
func (s *Store) queueLocate(ctx context.Context, p redis.Pipeliner, h *limiter.Hold, tp string) func() error {
	k := s.locKey(h.ID)
	add := p.SAdd(ctx, s.tenantsKey(), tp)
	set := p.SetNX(ctx, k, tp, h.TTL+s.doneTTL)
	return func() error {
		if err := cmp.Or(add.Err(), set.Err()); err != nil {
			return fmt.Errorf("redisstore: locate %q: %w", h.ID, err)
		}
		if set.Val() {
			return nil
		}
		was, err := s.c.Get(ctx, k).Result()
		if err != nil && !errors.Is(err, redis.Nil) {
			return fmt.Errorf("redisstore: locate %q: %w", h.ID, err)
		}
		if was != tp {
			return fmt.Errorf("%w: %q", limiter.ErrDuplicateReservation, h.ID)
		}
		return nil
	}
}

// locate runs queueLocate in a pipeline of its own: one round trip.
func (s *Store) locate(ctx context.Context, h *limiter.Hold, tp string) error {
	var judge func() error
	_, _ = s.c.Pipelined(ctx, func(p redis.Pipeliner) error {
		judge = s.queueLocate(ctx, p, h, tp)
		return nil
	})
	return judge()
}

// giveBack returns the units the steps in taken charged (their buckets'
// costs) for a call that did not go. It runs even when ctx is done; a failure leaves the
// units charged (a bucket refills by itself) and is counted. With d, the
// pools' buckets report their level after it.
func (s *Store) giveBack(ctx context.Context, req limiter.Request, taken []group, d *limiter.Decision) {
	ctx = context.WithoutCancel(ctx)
	for _, g := range taken {
		var adj []limiter.Adjustment
		var at []int
		for _, i := range g.idx {
			t := req.Takes[i]
			adj = append(adj, limiter.Adjustment{Key: t.Key, Limit: t.Limit, Refund: t.Cost, Cap: limiter.NoCap})
			at = append(at, i)
		}
		if len(adj) == 0 {
			continue
		}
		st, err := s.adjustOn(ctx, g.p, adj, req.Now)
		if err != nil {
			s.lost.Add(1)
			continue
		}
		if d != nil {
			for j, i := range at {
				d.Buckets[i].Remaining, d.Buckets[i].ResetAfter = st[j].Remaining, st[j].ResetAfter
			}
		}
	}
}

// mergeDecision completes d — its buckets and Allowed from every step —
// with the reason reserve.lua would have given for all of them in one
// script (limiter.ApplyHold): the denying bucket that can never cover its
// cost first, else the one with the longest wait (the first of equals);
// then the concurrency cap, then a budget. td is the tenant's step.
func mergeDecision(req limiter.Request, d, td limiter.Decision) limiter.Decision {
	d.BudgetBlocking, d.InFlight, d.Expired, d.Budgets = td.BudgetBlocking, td.InFlight, td.Expired, td.Budgets
	d.Reason, d.Blocking, d.RetryAfter = "", -1, 0
	if d.Allowed {
		return d
	}
	for i, t := range req.Takes {
		b := d.Buckets[i]
		if !b.Short || t.Shadow {
			continue
		}
		r := limiter.ReasonRateLimited
		if t.Cost > t.Limit.Capacity || t.Limit.Refill == 0 {
			r = limiter.ReasonExceedsCapacity
		}
		switch {
		case d.Blocking < 0:
			d.Reason, d.Blocking, d.RetryAfter = r, i, b.RetryAfter
		case d.Reason == limiter.ReasonRateLimited && (r == limiter.ReasonExceedsCapacity || b.RetryAfter > d.RetryAfter):
			d.Reason, d.Blocking, d.RetryAfter = r, i, b.RetryAfter
		}
	}
	if h := req.Hold; h != nil && !h.Commit && h.Slot != nil && td.InFlight >= h.Slot.Max && d.Reason != limiter.ReasonExceedsCapacity {
		d.Reason, d.RetryAfter = limiter.ReasonConcurrency, 0
	}
	if d.BudgetBlocking >= 0 {
		d.Reason, d.RetryAfter = limiter.ReasonBudgetExceeded, 0
	}
	if d.Reason == limiter.ReasonExceedsCapacity {
		d.RetryAfter = 0
	}
	if d.Reason != limiter.ReasonRateLimited && d.Reason != limiter.ReasonExceedsCapacity {
		d.Blocking = -1
	}
	return d
}

// encodeCharges writes charges as reserve.lua's charge_record does, each
// key as limiter.Key.String (the pool's slot is named by the key).
func encodeCharges(cs []limiter.Charge) string {
	var b strings.Builder
	for _, c := range cs {
		rate := strconv.FormatInt(c.Limit.Refill, 10)
		if den := c.Limit.Den(); den > 1 {
			rate += "/" + strconv.FormatInt(den, 10)
		}
		k := c.Key.String()
		fmt.Fprintf(&b, "%d %s %d %d:%s", c.Limit.Capacity, rate, c.Units, len(k), k)
	}
	return b.String()
}

// decodeCharges reads encodeCharges back; it stops at anything malformed.
func decodeCharges(s string) []limiter.Charge {
	var out []limiter.Charge
	for s != "" {
		f := strings.SplitN(s, " ", 4)
		if len(f) != 4 {
			break
		}
		n, rest, ok := strings.Cut(f[3], ":")
		ln, err := strconv.Atoi(n)
		if !ok || err != nil || ln < 0 || ln > len(rest) {
			break
		}
		k, ok := parseKey(rest[:ln])
		capacity, err1 := strconv.ParseInt(f[0], 10, 64)
		units, err2 := strconv.ParseInt(f[2], 10, 64)
		refill, per, _ := strings.Cut(f[1], "/")
		r, err3 := strconv.ParseInt(refill, 10, 64)
		den := int64(1)
		var err4 error
		if per != "" {
			den, err4 = strconv.ParseInt(per, 10, 64)
		}
		if !ok || errors.Join(err1, err2, err3, err4) != nil || den < 1 {
			break
		}
		lim := limiter.Limit{Capacity: capacity, Refill: r}
		if den > 1 {
			lim.Per = time.Duration(den) * time.Second
		}
		out = append(out, limiter.Charge{Key: k, Limit: lim, Units: units})
		s = rest[ln:]
	}
	return out
}

// parseKey reads limiter.Key.String back.
func parseKey(s string) (limiter.Key, bool) {
	part := func(s string) (string, string, bool) {
		n, rest, ok := strings.Cut(s, ":")
		ln, err := strconv.Atoi(n)
		if !ok || err != nil || ln < 0 || ln > len(rest) {
			return "", "", false
		}
		return rest[:ln], rest[ln:], true
	}
	pool, rest, ok := part(s)
	if !ok || !strings.HasPrefix(rest, ":") {
		return limiter.Key{}, false
	}
	client, rest, ok := part(rest[1:])
	if !ok || rest != "" {
		return limiter.Key{}, false
	}
	return limiter.Key{Pool: pool, Client: client}, true
}

// finishSpread is Finish with Spread: the reservation's tenant from its
// locator, the finish there (with the throttles of that slot), then the
// pools' refunds and the other throttles, each on its slot. A refund lost
// to a failure after the finish leaves the pool charged and is counted.
func (s *Store) finishSpread(ctx context.Context, e limiter.Ending) (limiter.Settlement, error) {
	tp, err := s.c.Get(ctx, s.locKey(e.ID)).Result()
	unknown := errors.Is(err, redis.Nil)
	if err != nil && !unknown {
		return limiter.Settlement{}, fmt.Errorf("redisstore: %s %q: locate: %w", e.Outcome, e.ID, err)
	}
	var here, there []limiter.Throttle
	for _, t := range e.Throttles {
		if !unknown && s.keyP(t.Key) == tp {
			here = append(here, t)
		} else {
			there = append(there, t)
		}
	}
	var st limiter.Settlement
	var pc string
	if unknown {
		err = fmt.Errorf("%w: %q", limiter.ErrUnknownReservation, e.ID)
	} else {
		e2 := e
		e2.Throttles = here
		st, pc, err = s.finishOn(ctx, tp, e2)
		if err == nil && s.hook != nil {
			if herr := s.hook("finish"); herr != nil {
				return limiter.Settlement{}, herr // crashed: the pools' refunds never run
			}
		}
		if err != nil && !errors.Is(err, limiter.ErrUnknownReservation) {
			return limiter.Settlement{}, err // the throttles wait for the call sent again
		}
	}
	// The pools' refunds (first finish only) and the other slots' throttles:
	// one adjustment a bucket, the refund before the throttle as in finish.lua.
	var adj []limiter.Adjustment
	at := map[limiter.Key]int{}
	for _, c := range decodeCharges(pc) {
		for _, u := range e.Used {
			if u.Pool == c.Key.Pool {
				at[c.Key] = len(adj)
				adj = append(adj, limiter.Adjustment{Key: c.Key, Limit: c.Limit, Refund: c.Units - u.Units, Cap: limiter.NoCap})
			}
		}
	}
	for _, t := range there {
		if i, ok := at[t.Key]; ok {
			adj[i].Cap, adj[i].Pause = t.Cap, t.Pause
			continue
		}
		adj = append(adj, t.Adjustment())
	}
	if len(adj) > 0 {
		if _, aerr := s.adjust(context.WithoutCancel(ctx), adj, e.Now); aerr != nil {
			s.lost.Add(1)
		}
	}
	return st, err
}

// expireSpread sweeps the registered tenants' expiry indexes, up to max
// reservations in all. One pipelined round reads each index's earliest
// expiry, so that only the tenants with a hold lapsed by now (Redis's TIME
// when now is zero, a second's leeway for masters' clocks: their script
// judges again) cost a round trip of their own.
func (s *Store) expireSpread(ctx context.Context, now time.Time, max int) (int, error) {
	tenants, err := s.c.SMembers(ctx, s.tenantsKey()).Result()
	if err != nil {
		return 0, fmt.Errorf("redisstore: expire: tenants: %w", err)
	}
	mine := tenants[:0]
	for _, p := range tenants {
		if strings.HasPrefix(p, "{"+s.prefix+":t:") { // not a tenant of this prefix's: not ours to sweep
			mine = append(mine, p)
		}
	}
	at := now
	if at.IsZero() {
		if at, err = s.c.Time(ctx).Result(); err != nil {
			return 0, fmt.Errorf("redisstore: expire: time: %w", err)
		}
	}
	firsts := make([]*redis.ZSliceCmd, len(mine))
	_, _ = s.c.Pipelined(ctx, func(p redis.Pipeliner) error {
		for i, tp := range mine {
			firsts[i] = p.ZRangeWithScores(ctx, expiryKey(tp), 0, 0)
		}
		return nil
	})
	due := at.Add(time.Second).UnixMicro()
	n := 0
	for i, tp := range mine {
		if n >= max {
			break
		}
		z, err := firsts[i].Result()
		if err != nil {
			return n, fmt.Errorf("redisstore: expire: %w", err)
		}
		if len(z) == 0 || int64(z[0].Score) > due {
			continue
		}
		k, err := s.expireOn(ctx, tp, now, max-n)
		if err != nil {
			return n, err
		}
		n += k
	}
	return n, nil
}

// LostRefunds counts units a spread store could not give back to a
// shared pool after a step failed (the pool stays charged until it
// refills): a health figure, zero without Spread.
func (s *Store) LostRefunds() int64 { return s.lost.Load() }

// peekSpread is Peek with Spread: the peek script on every slot the request
// touches (the hold with the tenant's buckets), pipelined, merged as
// reserveSpread merges its steps. Nothing is written anywhere.
func (s *Store) peekSpread(ctx context.Context, req limiter.Request) (limiter.Decision, error) {
	tp, hasTenant, err := s.tenantOfRequest(req)
	if err != nil {
		return limiter.Decision{}, err
	}
	groups := s.groupKeys(len(req.Takes), func(i int) limiter.Key { return req.Takes[i].Key })
	if hasTenant && !slices.ContainsFunc(groups, func(g group) bool { return g.p == tp }) {
		groups = append(groups, group{p: tp})
	}
	groups = slices.DeleteFunc(groups, func(g group) bool { return len(g.idx) == 0 && g.p != tp })
	subs := make([]limiter.Request, len(groups))
	keys, args := make([][]string, len(groups)), make([][]any, len(groups))
	for i, g := range groups {
		subs[i] = limiter.Request{Takes: pick(req.Takes, g.idx), Now: req.Now}
		if hasTenant && g.p == tp {
			subs[i].Hold = req.Hold
		}
		keys[i], args[i] = reserveArgs(g.p, subs[i], false, "")
	}
	cmds := s.runEach(ctx, s.sc.peek, keys, args)
	d := limiter.Decision{Allowed: true, Blocking: -1, BudgetBlocking: -1, Buckets: make([]limiter.BucketState, len(req.Takes))}
	td := limiter.Decision{Blocking: -1, BudgetBlocking: -1}
	for i, g := range groups {
		res, err := reserveReply(cmds[i], subs[i])
		if err != nil {
			return limiter.Decision{}, err
		}
		pd, err := decodeDecision(res, subs[i])
		if err != nil {
			return limiter.Decision{}, err
		}
		for j, k := range g.idx {
			d.Buckets[k] = pd.Buckets[j]
		}
		d.Allowed = d.Allowed && pd.Allowed
		if subs[i].Hold != nil {
			td = pd
		}
	}
	if h := req.Hold; h != nil && td.Allowed && !d.Allowed {
		// The tenant's peek ran alone and reported what its admission would
		// leave (a slot more in flight, the cost held); another slot said
		// no, so Reserve (its tenant step vetoed) would leave neither.
		if h.Slot != nil && !h.Commit {
			td.InFlight--
		}
		for j := range td.Budgets {
			if h.Commit {
				td.Budgets[j].Spent -= h.Cost
			} else {
				td.Budgets[j].Reserved -= h.Cost
			}
		}
	}
	return mergeDecision(req, d, td), nil
}
