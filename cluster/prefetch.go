package cluster

import (
	"context"
	"errors"
	"math"
	"time"

	"github.com/tollgate/tollgate/limiter"
)

// Prefetch: with many clients each holding their own buckets and slots, a
// member renewing each lease on the request path when it lapses makes one
// round trip per key per lease period, on the call's time. The sync loop
// instead renews, in one script call (limiter.BatchLeaser), every lease
// with recent demand that would lapse or run dry before the next round,
// and every slot lease due, so that calls find them here. Keys without
// demand are left to lapse, as before.
//
// Over-subscribed buckets are handled by take (leases.go): a bucket
// refused while many calls are refused here is asked again only once it
// has refilled this member's share of a sync's refill, and then for that
// share; the calls in between are refused here.

// hotDenials is how many calls refused for a bucket within one sync make
// it over-subscribed (hot): fewer, and it is asked as soon as it could
// cover the call, as one store would answer.
const hotDenials = 16

// hotWant is what to ask of a hot bucket near its limit: this member's
// share of its refill over one sync (its demand share of a pool; of a
// client's bucket, one member's), at least one unit, never more than
// half the bucket split by the members.
func (s *Store) hotWant(k limiter.Key, lim limiter.Limit) int64 {
	share := 1 / float64(s.peers.Live())
	if k.Client == "" {
		share = s.peers.Share(k.Pool)
	}
	r := float64(lim.Refill) / float64(lim.Den())
	w := int64(math.Ceil(share * r * s.cfg.SyncEvery.Seconds()))
	return max(min(w, lim.Capacity/int64(2*s.peers.Live())), 1)
}

// hotWait is how long a member waits to ask a hot bucket again: one sync,
// in which every member's share of the refill comes back (each asks once
// a round, for its share, so that a member with a larger share — more
// demand, or calls of higher priority — takes more of each round), or
// less if the bucket would fill half its capacity sooner.
func (s *Store) hotWait(lim limiter.Limit) time.Duration {
	return min(s.cfg.SyncEvery, s.refillTime(lim, max(lim.Capacity/2, 1)))
}

// refillTime is how long the bucket takes to refill units.
func (s *Store) refillTime(lim limiter.Limit, units int64) time.Duration {
	if lim.Refill <= 0 {
		return s.cfg.LeaseTTL
	}
	return time.Duration(ceilDiv(units*lim.Scale(), lim.Refill)) * time.Microsecond
}

// prefetchIdle is how many lease periods a lease is renewed after its last
// spend: a client calling a member about once a second would otherwise
// find its lease lapsed one call in four, and lease it on the call's time.
const prefetchIdle = 3

// prefetchAsks lists the leases to renew now: asked in the store's time,
// with units spent in the last prefetchIdle lease periods, not paused nor
// known short,
// and lapsing or running dry (at the pace spent since the grant) before
// two more rounds. s.mu is held.
func (s *Store) prefetchAsks(now time.Time) []limiter.LeaseAsk {
	horizon := 2 * s.cfg.SyncEvery
	var asks []limiter.LeaseAsk
	for k, l := range s.leases {
		if !l.storeClock || l.limit.Capacity <= 0 || l.used.IsZero() || now.Sub(l.used) >= prefetchIdle*s.cfg.LeaseTTL ||
			now.Before(l.pausedUntil) || now.Before(l.shortUntil) || !l.possible || now.Before(l.hotUntil) { // a hot bucket is asked once a round, by the calls
			continue
		}
		el := now.Sub(l.grantAt)
		pace := float64(l.spent) / max(el.Seconds(), s.cfg.SyncEvery.Seconds()) // units a second
		soon := int64(math.Ceil(pace * horizon.Seconds()))
		if l.exp.Sub(now) >= horizon && l.units >= soon {
			continue
		}
		w := s.want(limiter.Take{Key: k, Limit: l.limit, Cost: 1}, l, now)
		w = max(w, soon) - l.units
		w = min(max(w, 1), l.limit.Capacity)
		asks = append(asks, limiter.LeaseAsk{Key: k, Limit: l.limit, Want: w, Need: 1})
	}
	return asks
}

// batchSlot is a slot lease renewed in a batch, its client's call lock held.
type batchSlot struct {
	sl   *slotLease
	ask  limiter.SlotLease
	idle bool
}

// prefetch renews in one batch what prefetchAsks lists and the slot leases
// renewSlots would renew one call each. It reports false when the shared
// store cannot batch (renewSlots then does the slots).
func (s *Store) prefetch(ctx context.Context, now time.Time) bool {
	bl, ok := s.raw.(limiter.BatchLeaser)
	if !ok {
		return false
	}
	idle := func(sl *slotLease) bool { return sl.inUse == 0 && now.Sub(sl.used) > s.cfg.SlotTTL/2 }
	var slots []batchSlot
	s.mu.Lock()
	asks := s.prefetchAsks(now)
	for client, sl := range s.slots {
		if sl.held == 0 && sl.inUse == 0 && sl.busy == 0 {
			delete(s.slots, client)
			continue
		}
		due := sl.held > 0 && sl.exp.Sub(now) < s.cfg.SlotTTL/2
		if !(due || (idle(sl) && sl.held > 0) || sl.held > s.slotWant(max(sl.inUse, sl.peak), sl.max) || sl.held < sl.inUse) {
			continue
		}
		if !sl.call.TryLock() { // a call of the request path is leasing it: it renews them
			continue
		}
		w := int64(0)
		if !idle(sl) {
			w = s.slotWant(max(sl.inUse, sl.peak), sl.max)
		}
		sl.peak = sl.inUse
		sl.held = min(sl.held, w) // a lease that shrinks counts at once
		sl.busy++
		slots = append(slots, batchSlot{sl: sl, ask: limiter.SlotLease{Client: client, Max: sl.max, Holder: s.peers.Name(), Want: w, TTL: s.cfg.SlotTTL}})
	}
	s.mu.Unlock()
	if len(asks) == 0 && len(slots) == 0 {
		return true
	}
	ss := make([]limiter.SlotLease, len(slots))
	for i, b := range slots {
		ss[i] = b.ask
	}
	bctx, cancel := background(ctx)
	grants, held, err := watched{Shared: s.raw, s: s}.leaseBatch(bctx, bl, asks, ss)
	cancel()
	if err == nil && (len(grants) != len(asks) || len(held) != len(ss)) {
		err = errors.New("cluster: a lease batch answered the wrong number of asks")
	}
	s.mu.Lock()
	if err == nil {
		s.m.leases.Add(float64(len(grants)))
		for i, a := range asks {
			s.take(a, grants[i], now)
			if l := s.leases[a.Key]; l != nil {
				l.storeClock = true
			}
		}
		at := s.cfg.Clock.Now()
		for i, b := range slots {
			b.sl.held, b.sl.exp = held[i].Held, at.Add(s.cfg.SlotTTL)
		}
	}
	for _, b := range slots {
		b.sl.busy--
	}
	s.mu.Unlock()
	for _, b := range slots {
		b.sl.call.Unlock()
	}
	return true
}
