package admission

import (
	"errors"
	"fmt"
	"math"

	"github.com/tollgate/tollgate/policy"
)

// A settle through the API says what a call cost; nothing in the response
// backs it, so it is bounded by what the call could have cost at most.

// ErrSettleTooLarge is returned (as a *SettleBoundError) by Settle for a
// cost above what the reservation could cost.
var ErrSettleTooLarge = errors.New("admission: settle exceeds what the reservation could cost")

// settleOverrun is how many times its held amount a call may cost: an
// estimate can fall short (a body that states no max_tokens, a prompt
// counted from its size), never by this much.
const settleOverrun = 10

// SettleBoundError reports a refused settle: the cost asked, the most the
// reservation could cost, and what that bound came from.
type SettleBoundError struct {
	Actual, Bound policy.Money
	Basis         string
}

func (e *SettleBoundError) Error() string {
	return fmt.Sprintf("actual cost $%s exceeds $%s, the most this reservation could cost (%s)", e.Actual, e.Bound, e.Basis)
}

// Is makes errors.Is(err, ErrSettleTooLarge) hold.
func (e *SettleBoundError) Is(target error) bool { return target == ErrSettleTooLarge }

// SettleBound returns the most a settle of reservation id may book, and what
// the bound came from: the larger of the price of the largest call the
// pools of its route admit (each pool's capacity, at the highest price the
// policy puts on its unit) and settleOverrun times what it holds. A
// reservation this process does not know (admitted by another sidecar or
// before a restart, or already ended) is bounded by the largest call any
// route's pools admit.
func (s *Service) SettleBound(id string) (policy.Money, string) {
	if p := s.pending.peek(id); p != nil {
		held := max(p.est.Reserve, p.est.Cost)
		bound := max(routeCeiling(p.set, p.route), mulSat(held, settleOverrun))
		name := "none"
		if p.route != nil {
			name = p.route.Name
		}
		return bound, fmt.Sprintf("route %s: its pools' capacity at the policy's prices, or %d× the $%s it holds", name, settleOverrun, held)
	}
	set := s.policies.Policy()
	var bound policy.Money
	for _, r := range set.Routes {
		bound = max(bound, routeCeiling(set, r))
	}
	return bound, "the largest call any route's pools admit, at the policy's prices"
}

// routeCeiling is the price of the largest call r's pools admit: a call
// over a pool's capacity is refused (exceeds_capacity), so no call uses
// more of a pool than its capacity. A token pool's units are priced at the
// dearest of the pool's own price and every model's token prices.
func routeCeiling(set *policy.Set, r *policy.Route) policy.Money {
	if r == nil {
		return 0
	}
	var total policy.Money
	for _, p := range r.Pools {
		c := p.Limit.Capacity
		price := p.Price.Cost(c)
		if p.Unit == policy.UnitToken {
			for _, m := range set.Models {
				for _, pr := range []policy.Price{m.Input, m.Output, m.CachedInput, m.CacheWrite} {
					price = max(price, pr.Cost(c))
				}
			}
		}
		total = addSat(total, price)
	}
	return total
}

func addSat(a, b policy.Money) policy.Money {
	if b > 0 && a > math.MaxInt64-b {
		return math.MaxInt64
	}
	return a + b
}

func mulSat(a policy.Money, k int64) policy.Money {
	if a > 0 && int64(a) > math.MaxInt64/k {
		return math.MaxInt64
	}
	return a * policy.Money(k)
}
