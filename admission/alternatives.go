package admission

import (
	"context"

	"github.com/tollgate/tollgate/costing"
	"github.com/tollgate/tollgate/limiter"
	"github.com/tollgate/tollgate/policy"
)

// Reserved pools (policy/reserve.go): a pool split by reservations is
// several buckets under the pool's name. The pool's own key holds the
// shared part, so a pool without reservations is charged exactly as
// before; each reservation's part has its own key (limiter.Key{Pool,
// Client: part key}, a client field no client id can hold). Settlement
// refunds by pool name (limiter.Ending.Used), so whichever part a call was
// charged gets its refund, with no change to the stores.
//
// A call on a split pool has alternatives, tried in order: its owner's
// parts first (the lent part before the kept one, so an active owner
// drains what it would lend: a busy owner leaves nothing to borrow), then
// the shared part, then every other owner's lent part. The first is tried
// as any call is; the next only when the one before was refused by a
// bucket that differs between them (rate_limited or exceeds_capacity, not
// budget nor concurrency). Each fallback is one more store call: that is
// the price of a reservation, paid only by calls that find their first
// bucket empty.

// reservedIn reports whether any pool est charges is split.
func reservedIn(est *costing.Estimate) bool {
	for _, pc := range est.Pools {
		if len(pc.Pool.Reserved) > 0 {
			return true
		}
	}
	return false
}

// choices are the buckets client may charge in split pool p, in the
// order they are tried; those from own on are borrowed (others' lent
// parts).
func choices(p *policy.Pool, client *policy.Client) (out []limiter.Take, own int) {
	part := func(pt policy.Part) limiter.Take {
		return limiter.Take{Key: limiter.Key{Pool: p.Name, Client: pt.Key}, Limit: limiter.Limit(pt.Limit)}
	}
	for _, r := range p.Reserved {
		if r.Owns(client) {
			if r.Lent != nil {
				out = append(out, part(*r.Lent))
			}
			out = append(out, part(r.Kept))
		}
	}
	out = append(out, limiter.Take{Key: limiter.Key{Pool: p.Name}, Limit: limiter.Limit(p.SharedLimit())})
	own = len(out)
	for _, r := range p.Reserved {
		if r.Lent != nil && !r.Owns(client) {
			out = append(out, part(*r.Lent))
		}
	}
	return out, own
}

// alternatives are the Takes of each alternative of a call on split pools,
// and which of them differ between alternatives. A route with several
// split pools steps through their choices together: alternative k charges
// each pool's k-th choice, or its last when it has fewer.
func alternatives(set *policy.Set, client *policy.Client, est *costing.Estimate) (alts [][]limiter.Take, varies, borrows []bool) {
	per := make([][]limiter.Take, len(est.Pools))
	own := make([]int, len(est.Pools))
	n := 1
	for i, pc := range est.Pools {
		if len(pc.Pool.Reserved) > 0 {
			per[i], own[i] = choices(pc.Pool, client)
			n = max(n, len(per[i]))
		}
	}
	for k := range n {
		var ts []limiter.Take
		borrowing := false
		for i := range per {
			borrowing = borrowing || (per[i] != nil && min(k, len(per[i])-1) >= own[i])
		}
		borrows = append(borrows, borrowing)
		for i, pc := range est.Pools {
			p := pc.Pool
			shadow := set.Shadowed(p)
			t := limiter.Take{Key: limiter.Key{Pool: p.Name}, Limit: limiter.Limit(p.Limit)}
			if per[i] != nil {
				t = per[i][min(k, len(per[i])-1)]
			}
			t.Cost, t.Shadow = pc.Units, shadow
			ts = append(ts, t)
			if k == 0 {
				varies = append(varies, per[i] != nil && len(per[i]) > 1)
			}
			if cl, ok := client.Tier.ClientLimits[p.Name]; ok {
				ts = append(ts, limiter.Take{Key: limiter.Key{Pool: p.Name, Client: client.ID}, Limit: limiter.Limit(cl), Cost: pc.Units, Shadow: shadow})
				if k == 0 {
					varies = append(varies, false)
				}
			}
		}
		alts = append(alts, ts)
	}
	return alts, varies, borrows
}

// alt is p's request with the Takes of alternative i.
func (p *plan) alt(i int) limiter.Request {
	r := p.req
	r.Takes = p.alts[i]
	return r
}

// fallsBack reports whether a refusal of one alternative lets the next be
// tried: a bucket that differs between them was short.
func (p *plan) fallsBack(dec limiter.Decision) bool {
	if dec.Allowed || (dec.Reason != limiter.ReasonRateLimited && dec.Reason != limiter.ReasonExceedsCapacity) {
		return false
	}
	return dec.Blocking >= 0 && dec.Blocking < len(p.varies) && p.varies[dec.Blocking]
}

// reserve asks the store for p's call: its one request, or its
// alternatives in order until one is granted or a refusal ends the walk.
// It returns the decision and the request it answers. When every
// alternative is refused, the refusal returned is the one a wait can get
// past soonest (a rate_limited one with the least RetryAfter, borrowed
// parts aside), else the first: its blocking bucket is the line a held
// call waits in.
func (s *Service) reserve(ctx context.Context, p *plan) (limiter.Decision, limiter.Request, error) {
	return s.walk(ctx, p, s.store.Reserve, true)
}

// peek is reserve for the dry run: the same walk over the alternatives,
// each asked with the store's Peek, so nothing is taken and no fallback is
// counted.
func (s *Service) peek(ctx context.Context, p *plan) (limiter.Decision, limiter.Request, error) {
	return s.walk(ctx, p, s.store.Peek, false)
}

// walk asks ask for p's alternatives in order (reserve's rules); count
// says whether a fallback is counted in the metrics.
func (s *Service) walk(ctx context.Context, p *plan, ask func(context.Context, limiter.Request) (limiter.Decision, error), count bool) (limiter.Decision, limiter.Request, error) {
	first := p.req
	if p.alts != nil {
		first = p.alt(0) // p.req may hold the alternative a previous try ended on
	}
	dec, err := ask(ctx, first)
	if err != nil || len(p.alts) < 2 || !p.fallsBack(dec) {
		return dec, first, err
	}
	best, bestReq := dec, first
	last := dec
	for i := 1; i < len(p.alts); i++ {
		req := p.alt(i)
		if count {
			s.m.fallbacks.WithLabelValues(req.Takes[last.Blocking].Key.Pool).Inc()
		}
		d, err := ask(ctx, req)
		last = d
		if err != nil || d.Allowed || !p.fallsBack(d) {
			return d, req, err // granted, failed, or refused for budget or concurrency
		}
		// A borrower never waits in the line of another's lent part: that
		// line is its owner's, who must not queue behind borrowers for
		// its own share. Woken in another line, a borrower's try still
		// walks every alternative.
		if !p.borrows[i] && d.Reason == limiter.ReasonRateLimited && (best.Reason != limiter.ReasonRateLimited || d.RetryAfter < best.RetryAfter) {
			best, bestReq = d, req
		}
	}
	return best, bestReq, nil
}

// units is what p's call takes from line's bucket, for the queue's
// fairness: the line may be any alternative's.
func (p *plan) units(line string) int64 {
	for _, ts := range p.alts {
		for _, t := range ts {
			if bucketLine(t.Key) == line {
				return t.Cost
			}
		}
	}
	return unitsFor(line, p.req.Takes)
}
