package cluster

import (
	"context"
	"errors"

	"github.com/tollgate/tollgate/limiter"
)

var _ limiter.Peeker = (*Store)(nil)

// ErrPeekOutage is Peek's answer in outage mode: what this member holds is
// its share of a fleet it cannot see, so it does not pretend to know what
// the fleet would decide.
var ErrPeekOutage = errors.New("cluster: the shared store is down (outage mode): no fleet-wide answer to a peek")

// Peek asks the shared store what it would decide for req, changing
// nothing anywhere. The fleet's state lives there; units this member has
// leased and not yet spent count there as taken, so a peek is at worst a
// little more pessimistic than this member's next Reserve.
func (s *Store) Peek(ctx context.Context, req limiter.Request) (limiter.Decision, error) {
	if err := ctx.Err(); err != nil {
		return limiter.Decision{}, err
	}
	if err := req.Validate(); err != nil {
		return limiter.Decision{}, err
	}
	s.mu.Lock()
	outage := s.outage
	s.mu.Unlock()
	if outage {
		return limiter.Decision{}, ErrPeekOutage
	}
	return s.shared.Peek(ctx, req)
}

// Peek is the shared store's, its outcome noted like every other call's.
func (w watched) Peek(ctx context.Context, req limiter.Request) (limiter.Decision, error) {
	d, err := w.Shared.Peek(ctx, req)
	w.note(ctx, err)
	return d, err
}
