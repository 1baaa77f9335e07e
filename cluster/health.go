package cluster

import (
	"context"
	"time"

	"github.com/tollgate/tollgate/limiter"
)

// Slow is not down. A call to the shared store that fails for want of it
// (a timeout, a refused connection, a server that cannot serve now) is one
// failed call, and a Redis under load answers some calls too late for the
// client's timeouts while it is very much up. Such a call is decided on
// what this member holds (decideHeld), and the member stays in normal
// mode: deciding on its 1/N share while the others still spend the shared
// buckets would admit beyond the limit. The store is down, and outage mode
// begins, only once every call to it — the sync loop's probe, every
// SyncEvery, among them — has failed for Config.DownAfter. Any answer,
// a refusal included, ends the spell.

// watched is the shared store as the Store calls it: each call's outcome
// says whether the store answers.
type watched struct {
	Shared
	s *Store
}

// note records what a call's outcome says of the store.
func (w watched) note(ctx context.Context, err error) {
	switch {
	case err == nil:
		w.s.failingSince.Store(0)
	case w.s.unreachable(ctx, err):
		w.s.failingSince.CompareAndSwap(0, w.s.cfg.Clock.Now().UnixNano())
	case ctx.Err() == nil:
		w.s.failingSince.Store(0) // refused: an answer all the same
	}
}

func (w watched) Reserve(ctx context.Context, req limiter.Request) (limiter.Decision, error) {
	d, err := w.Shared.Reserve(ctx, req)
	w.note(ctx, err)
	return d, err
}

func (w watched) Usage(ctx context.Context, period string, budgets []limiter.Budget, now time.Time) (limiter.Usage, error) {
	u, err := w.Shared.Usage(ctx, period, budgets, now)
	w.note(ctx, err)
	return u, err
}

func (w watched) Expire(ctx context.Context, now time.Time, max int) (int, error) {
	n, err := w.Shared.Expire(ctx, now, max)
	w.note(ctx, err)
	return n, err
}

func (w watched) Refund(ctx context.Context, refunds []limiter.Refund, now time.Time) ([]limiter.BucketState, error) {
	st, err := w.Shared.Refund(ctx, refunds, now)
	w.note(ctx, err)
	return st, err
}

func (w watched) Throttle(ctx context.Context, throttles []limiter.Throttle, now time.Time) ([]limiter.BucketState, error) {
	st, err := w.Shared.Throttle(ctx, throttles, now)
	w.note(ctx, err)
	return st, err
}

func (w watched) Finish(ctx context.Context, e limiter.Ending) (limiter.Settlement, error) {
	st, err := w.Shared.Finish(ctx, e)
	w.note(ctx, err)
	return st, err
}

func (w watched) Lease(ctx context.Context, asks []limiter.LeaseAsk, now time.Time) ([]limiter.LeaseGrant, error) {
	g, err := w.Shared.Lease(ctx, asks, now)
	w.note(ctx, err)
	return g, err
}

func (w watched) LeaseSlots(ctx context.Context, l limiter.SlotLease, now time.Time) (int64, int64, error) {
	held, inFlight, err := w.Shared.LeaseSlots(ctx, l, now)
	w.note(ctx, err)
	return held, inFlight, err
}

func (w watched) Book(ctx context.Context, batch string, deltas []limiter.SpendDelta) (bool, error) {
	applied, err := w.Shared.Book(ctx, batch, deltas)
	w.note(ctx, err)
	return applied, err
}

// failing reports whether the last call to the shared store failed for
// want of it.
func (s *Store) failing() bool { return s.failingSince.Load() != 0 }

// down reports whether every call to the shared store has failed for want
// of it for DownAfter, at now.
func (s *Store) down(now time.Time) bool {
	since := s.failingSince.Load()
	return since != 0 && now.Sub(time.Unix(0, since)) >= s.cfg.DownAfter
}

// judge enters outage mode when err says the shared store could not serve
// a call and it has served none for DownAfter.
func (s *Store) judge(ctx context.Context, err error) {
	if now := s.cfg.Clock.Now(); s.unreachable(ctx, err) && s.down(now) {
		s.mu.Lock()
		s.enterOutage(now, err)
		s.mu.Unlock()
	}
}

// unsent reports whether err says a call never reached the shared store,
// so that sending it again cannot apply it twice (the Redis store tells;
// without it, any failed call may have been applied).
func (s *Store) unsent(err error) bool {
	u, ok := s.raw.(interface{ Unsent(error) bool })
	return ok && u.Unsent(err)
}
