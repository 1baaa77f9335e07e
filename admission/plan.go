package admission

import (
	"time"

	"github.com/tollgate/tollgate/costing"
	"github.com/tollgate/tollgate/limiter"
	"github.com/tollgate/tollgate/policy"
)

// Planning turns the policy's view of a call (its route's pools, its
// client's tier, budgets and class) into what the limiter must reserve and
// how long the call may wait for it. Nothing here does I/O.

// Chain returns the budgets a client's calls charge: its own (or its
// tier's), then each parent's. An unbudgeted level is tracked, not capped.
func Chain(c *policy.Client) []limiter.Budget {
	var out []limiter.Budget
	for p := c; p != nil; p = p.Parent {
		lim := limiter.Unlimited
		if m, ok := p.Budget(); ok {
			lim = m
		}
		out = append(out, limiter.Budget{Owner: p.ID, Limit: lim})
	}
	return out
}

// plan is one admission's ask of the store and its room to wait.
type plan struct {
	req limiter.Request
	// alts, for a call on a pool with reservations, are the Takes of each
	// alternative in the order they are tried (alts[0] is req.Takes); nil
	// when there is only one. varies marks the Takes that differ between
	// them, borrows the alternatives that spend another's lent part (see
	// alternatives.go).
	alts            [][]limiter.Take
	varies, borrows []bool
	class           policy.Class
	cp              policy.ClassPolicy
	// deadline is the latest the call may be answered; canWait says
	// whether it may be held at all; notBefore holds a deferred call for
	// the off-peak window (zero: none).
	deadline  time.Time
	canWait   bool
	notBefore time.Time
	// offPeak, when set, refuses a deferred call outside its window that
	// cannot wait for it: the window opens then.
	offPeak time.Time
}

// takes are the buckets a call charges: each pool of its route, and its
// client's bucket in that pool when the tier caps clients there.
func takes(set *policy.Set, client *policy.Client, est *costing.Estimate) []limiter.Take {
	out := make([]limiter.Take, 0, 2*len(est.Pools))
	for _, pc := range est.Pools {
		p := pc.Pool
		shadow := set.Shadowed(p)
		out = append(out, limiter.Take{Key: limiter.Key{Pool: p.Name}, Limit: limiter.Limit(p.Limit), Cost: pc.Units, Shadow: shadow})
		if cl, ok := client.Tier.ClientLimits[p.Name]; ok {
			out = append(out, limiter.Take{Key: limiter.Key{Pool: p.Name, Client: client.ID}, Limit: limiter.Limit(cl), Cost: pc.Units, Shadow: shadow})
		}
	}
	return out
}

// makePlan plans the admission of a call estimated as est at now. id names
// its reservation under deferred settlement; envoyDeadline is when the
// caller gives up (zero: never).
func makePlan(set *policy.Set, client *policy.Client, class policy.Class, est *costing.Estimate, settle Settlement,
	id string, now, envoyDeadline time.Time) plan {
	// Immediate settlement books the expected cost; a hold reserves what the
	// policy's strategy asks (120% of it by default), settled later.
	cost := est.Reserve
	if settle == SettleImmediate {
		cost = est.Cost
	}
	hold := &limiter.Hold{Period: set.Defaults.Period(now), Cost: cost, Budgets: Chain(client), Commit: settle == SettleImmediate}
	if !hold.Commit {
		hold.ID, hold.TTL = id, set.Defaults.ReservationTTL
		hold.Slot = &limiter.Slot{Client: client.ID, Max: client.Tier.MaxConcurrent}
	}
	p := plan{req: limiter.Request{Hold: hold}, class: class, cp: set.Queue.Class(class)}
	if reservedIn(est) {
		p.alts, p.varies, p.borrows = alternatives(set, client, est)
		p.req.Takes = p.alts[0]
	} else {
		p.req.Takes = takes(set, client, est)
	}
	p.req.Priority = client.Tier.Priority + p.cp.Urgency // the queue's score: a fleet weighs demand by it
	p.deadline = now.Add(p.cp.MaxWait)
	if !envoyDeadline.IsZero() && envoyDeadline.Add(-deadlineMargin).Before(p.deadline) {
		p.deadline = envoyDeadline.Add(-deadlineMargin) // answer before Envoy gives up
	}
	p.canWait = class != policy.Immediate && p.cp.MaxWait > 0 && p.deadline.After(now) && !set.Defaults.Shadow
	if class == policy.Deferred {
		if inside, opens := set.Queue.OffPeak(now); !inside {
			if !p.canWait || opens.After(p.deadline) {
				p.offPeak = opens
			} else {
				p.notBefore = opens // held until the window opens
			}
		}
	}
	return p
}

// classOf is the call's class: the priority header, else the route's,
// lowered to what the client's tier may ask for.
func classOf(set *policy.Set, r *Request, route *policy.Route, client *policy.Client) policy.Class {
	c := route.Class
	if h := r.Headers[set.Queue.PriorityHeader]; h != "" {
		if asked, ok := policy.ParseClass(h); ok {
			c = asked
		}
	}
	return max(c, client.Tier.MaxClass) // a larger class is a less urgent one
}

// deadlineMargin is how long before Envoy's own deadline a held call is
// answered, so that the worker gets Tollgate's 429 rather than Envoy's error.
const deadlineMargin = 50 * time.Millisecond
