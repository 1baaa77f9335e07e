package respcache

import (
	"context"
	"errors"
	"maps"
	"time"
)

var _ Cache = (*Tiered)(nil)

// Tiered is the two-level cache: an in-process Memory (L1) in front of the
// Redis a fleet shares (L2). A lookup tries L1, then L2, and an L2 hit is
// copied into L1 for its remaining TTL, at most the Redis level's
// LocalTTL. Flights are fleet-wide through L2, and identical calls on one
// member wait in L1 first: ten of them make one claim in Redis, by the
// one that leads the member's flight. A failing Redis degrades to L1.
type Tiered struct {
	l1       *Memory
	l2       *Redis
	localTTL time.Duration
}

// NewTiered returns the cache made of l1 and l2 (both needed). Closing it
// closes l1; l2's client belongs to the caller.
func NewTiered(l1 *Memory, l2 *Redis) *Tiered {
	return &Tiered{l1: l1, l2: l2, localTTL: l2.localTTL}
}

// local returns how long L1 may keep a copy of an entry that expires at
// exp: its remaining TTL, at most LocalTTL.
func (t *Tiered) local(exp time.Time) time.Duration {
	return min(exp.Sub(t.l1.clock.Now()), t.localTTL)
}

// Get returns the entry under k from L1, else from L2 (copying it to L1).
func (t *Tiered) Get(ctx context.Context, k Key) (Entry, bool) {
	if e, ok := t.l1.Get(ctx, k); ok {
		return e, true
	}
	e, exp, ok := t.l2.get(ctx, k)
	t.l2.m.lookup(k.Kind, levelL2, ok)
	if ok {
		if ttl := t.local(exp); ttl > 0 {
			_ = t.l1.put(k, e, ttl, false) // too large for L1: served from L2 each time
		}
	}
	return e, ok
}

// Begin finds k in L1, or waits for the member's own flight of k, or,
// leading it, finds k in L2 or joins the fleet's flight there (see Cache).
// The wait covers both levels.
func (t *Tiered) Begin(ctx context.Context, k Key, wait, lease time.Duration) (Entry, State) {
	start := time.Now()
	// The member's claim lapses after lease like the fleet's: should the
	// member's leader still be waiting for another member then, a second
	// local caller joins it in waiting (two polls, still one claim).
	e, st, claimed := t.l1.begin(ctx, k, wait, lease)
	if st != Lead {
		return e, st
	}
	// This call leads the member's flight (or goes upstream unclaimed):
	// ask the fleet.
	e, exp, st := t.l2.begin(ctx, k, max(wait-time.Since(start), 0), lease)
	switch st {
	case Found:
		if ttl := t.local(exp); ttl > 0 {
			_ = t.l1.put(k, e, ttl, claimed) // wakes the member's waiters
		} else if claimed {
			t.l1.Abandon(ctx, k)
		}
	case Busy:
		if claimed {
			t.l1.Abandon(ctx, k) // the next local waiter asks the fleet with its own wait
		}
	}
	return e, st
}

// Complete records e in L2 (ending the fleet's flight), then in L1 for
// at most LocalTTL (ending the member's). When Redis fails, e is kept in
// L1 all the same and the error is returned.
func (t *Tiered) Complete(ctx context.Context, k Key, e Entry, ttl time.Duration) error {
	size := Size(k, e)
	err2 := t.l2.complete(ctx, k, e, ttl, size)
	e.Body = append([]byte(nil), e.Body...)
	e.Headers = maps.Clone(e.Headers)
	if e.Stored.IsZero() {
		e.Stored = t.l1.clock.Now()
	}
	local := ttl
	if ttl > 0 {
		local = min(ttl, t.localTTL)
	}
	err1 := t.l1.put(k, e, local, true)
	switch {
	case err2 == nil && errors.Is(err1, ErrTooLarge):
		return nil // kept in L2 alone
	case err2 == nil:
		return err1
	case err1 == nil || errors.Is(err1, ErrTooLarge) == errors.Is(err2, ErrTooLarge):
		return err2 // Redis failed (kept in L1), or both refused it alike
	}
	return errors.Join(err2, err1)
}

// Abandon ends the fleet's flight of k (if this member holds it), then
// the member's: the member's next waiter then finds the fleet's claim
// free.
func (t *Tiered) Abandon(ctx context.Context, k Key) {
	t.l2.Abandon(ctx, k)
	t.l1.Abandon(ctx, k)
}

// Invalidate drops the entries in both levels and returns how many it
// dropped. Other members' L1 copies stay up to LocalTTL.
func (t *Tiered) Invalidate(ctx context.Context, kind Kind, scope, route string) (int, error) {
	n1, err1 := t.l1.Invalidate(ctx, kind, scope, route)
	n2, err2 := t.l2.Invalidate(ctx, kind, scope, route)
	if err2 != nil {
		return n1, errors.Join(err2, err1)
	}
	return max(n1, n2), err1
}

// Delete drops the entry in both levels. Other members' L1 copies stay up
// to LocalTTL.
func (t *Tiered) Delete(ctx context.Context, k Key) (bool, error) {
	ok1, err1 := t.l1.Delete(ctx, k)
	ok2, err2 := t.l2.Delete(ctx, k)
	return ok1 || ok2, errors.Join(err2, err1)
}

// Close closes L1 (and L2, which leaves its client to the caller).
func (t *Tiered) Close() error { return errors.Join(t.l1.Close(), t.l2.Close()) }
