package cluster

import (
	"context"
	"sync"
	"time"

	"github.com/tollgate/tollgate/limiter"
)

// Concurrency slot leases: a member holds some of a client's slots in the
// shared store (the calls it admits, and a few spares) and admits that many
// calls here; held slots lapse after SlotTTL unless renewed, so the slots
// of a member that died come back.

type slotLease struct {
	max, held, inUse int64
	// peak is the most calls in use here since the last renewal: the lease
	// is kept at it (plus spares), so that a client whose calls come and go
	// does not give slots back at a sync only to lease them again on the
	// request path a moment later.
	peak      int64
	exp, used time.Time
	busy      int        // leaseSlots calls under way: the lease is not forgotten meanwhile
	call      sync.Mutex // one leaseSlots call at a time; taken before s.mu, never inside it
}

// slotWant is how many of a client's slots to hold for inUse calls: those,
// and as spares the near-limit percent of this member's share of the
// client's maximum (at most maxSpareSlots), so that the next calls need no
// round trip. Spares held fleet-wide stay under that percent of the
// maximum.
func (s *Store) slotWant(inUse, maxSlots int64) int64 {
	spare := min(maxSlots*s.cfg.NearLimitPercent/100/int64(s.peers.Live()), maxSpareSlots)
	return min(inUse+spare, max(maxSlots, inUse), maxSlotLease)
}

const (
	maxSpareSlots = 32
	maxSlotLease  = 1_000_000 // the most one lease may hold (limiter.SlotLease)
)

// leaseSlots sets this member's leased slots of client to want (worked out
// under s.mu from the lease as it then is), one call at a time per client
// so that the last call the store sees is the last one recorded here. A
// lease that shrinks counts at once: no call is admitted on a slot being
// given back.
func (s *Store) leaseSlots(ctx context.Context, client string, maxSlots int64, want func(*slotLease) int64) (held, inFlight int64, err error) {
	return s.leaseSlotsAt(ctx, time.Time{}, client, maxSlots, want)
}

// pinSlot returns client's slot lease, made when there is none, with busy
// raised (so that the sync's prune leaves it) and its call lock held: one
// lease call at a time per client. s.mu is not held.
func (s *Store) pinSlot(client string) *slotLease {
	s.mu.Lock()
	sl := s.slots[client]
	if sl == nil {
		sl = &slotLease{}
		s.slots[client] = sl
	}
	sl.busy++
	s.mu.Unlock()
	sl.call.Lock()
	return sl
}

// leaseSlotsAt is leaseSlots at the time of a request that names one (zero:
// the shared store's clock, and this member's for the lease's life).
func (s *Store) leaseSlotsAt(ctx context.Context, at time.Time, client string, maxSlots int64, want func(*slotLease) int64) (held, inFlight int64, err error) {
	sl := s.pinSlot(client)
	defer sl.call.Unlock()
	s.mu.Lock()
	sl.max = maxSlots
	w := want(sl)
	sl.held = min(sl.held, w)
	s.mu.Unlock()
	held, inFlight, err = s.shared.LeaseSlots(ctx, limiter.SlotLease{Client: client, Max: maxSlots, Holder: s.peers.Name(), Want: w, TTL: s.cfg.SlotTTL}, at)
	s.mu.Lock()
	if err == nil {
		if at.IsZero() {
			at = s.cfg.Clock.Now()
		}
		sl.held, sl.exp = held, at.Add(s.cfg.SlotTTL)
	}
	sl.busy--
	s.mu.Unlock()
	return held, inFlight, err
}

// expireSlots ends, at their estimate, the local reservations of client
// past their TTL, so that their slots are free for the call at hand (a
// caller that died never settles), as the shared store does before it
// decides; it returns how many it ended. s.mu is held.
func (s *Store) expireSlots(client string, now time.Time) int {
	n := 0
	for id, r := range s.resv {
		if r.client == client && !now.Before(r.exp) {
			s.finishLocked(id, r, limiter.OutcomeExpired, 0, now)
			n++
		}
	}
	return n
}

// holdSlotCall takes client's call lock (as leaseSlotsAt does) and sets
// *ask to the slot lease to send, its want worked out under s.mu; the
// caller sends it (in a batch), records the answer with slotsHeld, then
// calls the release it returns.
func (s *Store) holdSlotCall(client string, maxSlots int64, want func(*slotLease) int64, ask **limiter.SlotLease) (release func()) {
	sl := s.pinSlot(client)
	s.mu.Lock()
	sl.max = maxSlots
	w := want(sl)
	sl.held = min(sl.held, w)
	s.mu.Unlock()
	*ask = &limiter.SlotLease{Client: client, Max: maxSlots, Holder: s.peers.Name(), Want: w, TTL: s.cfg.SlotTTL}
	return func() {
		s.mu.Lock()
		sl.busy--
		s.mu.Unlock()
		sl.call.Unlock()
	}
}

// slotsHeld records what a slot lease sent with holdSlotCall got, at the
// time at (zero: this member's clock). client's call lock is held.
func (s *Store) slotsHeld(client string, held int64, at time.Time) {
	if at.IsZero() {
		at = s.cfg.Clock.Now()
	}
	s.mu.Lock()
	if sl := s.slots[client]; sl != nil {
		sl.held, sl.exp = held, at.Add(s.cfg.SlotTTL)
	}
	s.mu.Unlock()
}
