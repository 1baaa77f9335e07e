package admission

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"time"

	"github.com/tollgate/tollgate/costing"
	"github.com/tollgate/tollgate/limiter"
	"github.com/tollgate/tollgate/policy"
)

// Direct reservations: work that is not an HTTP call through Envoy (a
// database query billed per row, a batch job's share of a pool) reserves
// units of a route's pools, or of one pool, and money from its client's
// budgets, then consumes (settles) or releases them through the API. They
// take the same buckets, budgets and concurrency slots as calls do, in one
// store step, and end through the same Finish.

// DirectAsk is a direct reservation: Units of each pool of Route, or of
// Pool alone (exactly one of them), for Client (a client the policy names:
// a worker cannot invent one), holding Cost (negative: priced from the
// pools' unit prices).
type DirectAsk struct {
	Client string
	Route  string
	Pool   string
	Units  int64
	Cost   policy.Money
	// RequestID, when set, names the work's cost record (GET
	// /api/cost/{requestId}); at most limiter.MaxRequestID bytes, no spaces.
	RequestID string
}

// DirectReservation answers a direct reservation.
type DirectReservation struct {
	ID         string        `json:"reservation_id,omitempty"`
	Allowed    bool          `json:"allowed"`
	Reason     string        `json:"reason,omitempty"`
	Pool       string        `json:"pool,omitempty"`
	RetryAfter float64       `json:"retry_after_seconds,omitempty"`
	Held       string        `json:"held_usd,omitempty"`
	Expires    time.Time     `json:"expires,omitzero"`
	TTL        time.Duration `json:"-"`
}

// ErrBadAsk is returned (wrapped) for a direct reservation the policy
// cannot place: no such route or pool, units out of range.
var ErrBadAsk = errors.New("admission: bad reservation")

// ReserveDirect reserves what ask says, at once or not at all: a direct
// reservation never waits in the queue (its caller is not an Envoy stream
// that can be held).
func (s *Service) ReserveDirect(ctx context.Context, ask DirectAsk) (DirectReservation, error) {
	set := s.policies.Policy()
	if err := policy.ValidClientID(ask.Client); err != nil {
		return DirectReservation{}, fmt.Errorf("%w: client %w", ErrBadAsk, err)
	}
	if len(ask.RequestID) > limiter.MaxRequestID || strings.ContainsAny(ask.RequestID, " \n") {
		return DirectReservation{}, fmt.Errorf("%w: request id of %d bytes, or with spaces", ErrBadAsk, len(ask.RequestID))
	}
	if _, named := set.Clients[ask.Client]; !named {
		return DirectReservation{}, fmt.Errorf("%w: %q is not a client of the policy", ErrUnknownClient, ask.Client)
	}
	client, _ := set.Client(ask.Client)
	var pools []*policy.Pool
	var route *policy.Route
	switch {
	case (ask.Route == "") == (ask.Pool == ""):
		return DirectReservation{}, fmt.Errorf("%w: name a route or a pool (one of them)", ErrBadAsk)
	case ask.Pool != "":
		p, ok := set.Pools[ask.Pool]
		if !ok {
			return DirectReservation{}, fmt.Errorf("%w: no pool %q in the policy", ErrBadAsk, ask.Pool)
		}
		if d := p.Dedicated; d != nil && d.Client != client.ID {
			return DirectReservation{}, fmt.Errorf("%w: pool %q is dedicated to another client", ErrBadAsk, ask.Pool)
		}
		pools = []*policy.Pool{p}
	default:
		for _, r := range set.Routes {
			if r.Name == ask.Route {
				route = r
			}
		}
		if route == nil {
			return DirectReservation{}, fmt.Errorf("%w: no route %q in the policy", ErrBadAsk, ask.Route)
		}
		route = set.RouteFor(route, client) // the client's dedicated pools, as an admission through Envoy
		pools = route.Pools
	}
	est := costing.Estimate{ReservePercent: 100}
	var priced policy.Money
	for _, p := range pools {
		if ask.Units < 0 || ask.Units > p.Limit.Capacity {
			return DirectReservation{}, fmt.Errorf("%w: %d units of pool %s: want 0 to its capacity %d", ErrBadAsk, ask.Units, p.Name, p.Limit.Capacity)
		}
		est.Pools = append(est.Pools, costing.PoolCost{Pool: p, Units: ask.Units})
		priced = addSat(priced, p.Price.Cost(ask.Units))
	}
	est.Cost = ask.Cost
	if ask.Cost < 0 {
		est.Cost = priced
	}
	if est.Cost >= limiter.MaxMoney {
		return DirectReservation{}, fmt.Errorf("%w: cost $%s is more than a store books", ErrBadAsk, est.Cost)
	}
	est.Reserve = est.Cost
	now := s.clock.Now()
	p := makePlan(set, client, policy.Immediate, &est, SettleDeferred, s.newID(), now, time.Time{})
	dec, req, err := s.reserve(ctx, &p) // a reserved part's alternatives, as an admission through Envoy
	if err != nil {
		return DirectReservation{}, err
	}
	p.req = req
	out := DirectReservation{Pool: pools[0].Name}
	if i := dec.Tightest(); i >= 0 {
		out.Pool = dec.Buckets[i].Key.Pool
	}
	if !dec.Allowed {
		v := s.denied(set, client, &p, dec, now, Verdict{})
		out.Reason, out.RetryAfter = v.Reason, v.RetryAfter.Seconds()
		s.m.decisions.WithLabelValues(out.Pool, client.Tier.Name, string(OutcomeDenied), v.Reason).Inc()
		return out, nil
	}
	h := p.req.Hold
	out.ID, out.Allowed, out.Held, out.TTL, out.Expires = h.ID, true, h.Cost.String(), h.TTL, now.Add(h.TTL)
	s.m.decisions.WithLabelValues(out.Pool, client.Tier.Name, string(OutcomeAllowed), "").Inc()
	pc := &pendingCall{id: h.ID, requestID: ask.RequestID, set: set, route: route, client: client.ID, tier: client.Tier.Name, est: est,
		expires: now.Add(h.TTL), class: policy.Immediate}
	for i, t := range p.req.Takes {
		if !(t.Shadow && dec.Buckets[i].Short) {
			pc.charged = append(pc.charged, t)
		}
	}
	s.pending.add(pc)
	return out, nil
}

// Consume settles a reservation at what the work really cost, and gives
// back the units it did not use (used: per pool; none named keeps the
// charges). A cost above SettleBound is refused and changes nothing.
func (s *Service) Consume(ctx context.Context, id string, actual policy.Money, used []limiter.PoolUse) (limiter.Settlement, error) {
	if bound, basis := s.SettleBound(id); actual > bound {
		return limiter.Settlement{ID: id}, &SettleBoundError{Actual: actual, Bound: bound, Basis: basis}
	}
	e := limiter.Ending{ID: id, Outcome: limiter.OutcomeSettled, Actual: actual, Used: used}
	if err := e.Validate(); err != nil {
		return limiter.Settlement{ID: id}, fmt.Errorf("%w: %w", ErrBadAsk, err)
	}
	return s.end(ctx, e)
}

// ReservationClient names the client of a reservation this process made
// and has not seen end; false for any other id.
func (s *Service) ReservationClient(id string) (string, bool) {
	if p := s.pending.peek(id); p != nil {
		return p.client, true
	}
	return "", false
}
