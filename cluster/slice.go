package cluster

import (
	"fmt"
	"strconv"
	"strings"
	"time"

	"github.com/tollgate/tollgate/limiter"
	"github.com/tollgate/tollgate/policy"
)

// Budget slices: far from a budget chain's limits, a member reserves a
// slice of what is left in the shared store (an ordinary reservation on
// the chain's budgets, so every other member and every shared decision
// counts it), and admits calls from it without asking. When the slice
// lapses, runs out, or the member leaves, it is settled at what was spent
// from it, exactly; a slice whose member died lapses in the shared store
// and stands at its full size (spend is never silently lost). Near a
// limit, no slice is taken: every reservation is the shared store's.

// sliceCalls is how many calls of the size at hand a slice holds at most,
// at first; a chain whose slices run dry within an eighth of their life
// gets slices twice as large the next time (up to maxSliceCalls calls),
// and one whose slice lapses a quarter used, half as large, so that a busy
// client needs a slice every few seconds, not dozens a second. The headroom
// rule (sliceSize) bounds them all the same.
const (
	sliceCalls = 64
	// maxGrownChains bounds the chains whose slices grew (s.sliceCalls):
	// past it the hints start over.
	maxGrownChains = 10_000
	maxSliceCalls  = 64 * 64
)

// sliceGrace is how much longer than its local life a slice is held in
// the shared store: its settle may wait out an outage this long and still
// be exact.
const sliceGrace = 5 * time.Minute

// slice is an open slice of a budget chain.
type slice struct {
	id          string
	owners      []string
	period      string
	size, spent policy.Money
	opened, exp time.Time
	closed      bool
}

func (sl *slice) left() policy.Money { return sl.size - sl.spent }

// chainKey names a hold's budget chain in its period.
func chainKey(h *limiter.Hold) string {
	var b strings.Builder
	b.WriteString(h.Period)
	for _, bg := range h.Budgets {
		b.WriteByte(0)
		b.WriteString(strconv.Itoa(len(bg.Owner)))
		b.WriteByte(':')
		b.WriteString(bg.Owner)
	}
	return b.String()
}

// sliceHas reports whether the chain named key, in period, has owner.
func sliceHas(key, period, owner string) bool {
	rest, ok := strings.CutPrefix(key, period+"\x00")
	if !ok {
		return false
	}
	for rest != "" {
		colon := strings.IndexByte(rest, ':')
		n, err := strconv.Atoi(rest[:max(colon, 0)])
		if colon < 0 || err != nil || colon+1+n > len(rest) {
			return false
		}
		if rest[colon+1:colon+1+n] == owner {
			return true
		}
		rest = strings.TrimPrefix(rest[colon+1+n:], "\x00")
	}
	return false
}

// limited reports whether any budget of the chain has a limit.
func limited(budgets []limiter.Budget) bool {
	for _, b := range budgets {
		if b.Limit >= 0 {
			return true
		}
	}
	return false
}

// sliceSize is the slice to take for h: a quarter of this member's share
// of what its views say is left above the near-limit margin on the
// tightest budget, at most sliceCalls calls of this size; 0 when that is
// less than the call (near the limit, or no fresh view). s.mu is held.
func (s *Store) sliceSize(h *limiter.Hold, now time.Time) policy.Money {
	size := policy.Money(limiter.MaxMoney - 1)
	calls := policy.Money(s.sliceCalls[chainKey(h)])
	if calls == 0 {
		calls = sliceCalls
	}
	if h.Cost > 0 && h.Cost < size/calls {
		size = h.Cost * calls
	}
	for _, b := range h.Budgets {
		if b.Limit < 0 {
			continue
		}
		v := s.views[viewKey{b.Owner, h.Period}]
		if v == nil || now.Sub(v.fetched) > s.cfg.ViewTTL {
			return 0
		}
		margin := policy.Money(int64(b.Limit) / 100 * s.cfg.NearLimitPercent)
		head := b.Limit - margin - v.base - v.since
		size = min(size, head/policy.Money(4*s.peers.Live()))
	}
	if size < h.Cost || size <= 0 {
		return 0
	}
	return size
}

// openSlice records a slice the shared store granted, and closes the one
// it replaces. s.mu is held.
func (s *Store) openSlice(h *limiter.Hold, id string, size policy.Money, now time.Time) {
	key := chainKey(h)
	if old := s.slices[key]; old != nil {
		if old.left() < h.Cost && now.Sub(old.opened) < s.cfg.SliceTTL/8 { // ran dry at once: larger next time
			if _, known := s.sliceCalls[key]; !known && len(s.sliceCalls) >= maxGrownChains {
				clear(s.sliceCalls) // a hint only: chains of past periods would stay forever
			}
			s.sliceCalls[key] = min(max(s.sliceCalls[key], sliceCalls)*2, maxSliceCalls)
		}
		s.closeSlice(key, old)
	}
	sl := &slice{id: id, period: h.Period, size: size, opened: now, exp: now.Add(s.cfg.SliceTTL)}
	for _, b := range h.Budgets {
		sl.owners = append(sl.owners, b.Owner)
	}
	s.slices[key] = sl
}

// closeSlice stops spending from a slice and queues its settle at what was
// spent. s.mu is held.
func (s *Store) closeSlice(key string, sl *slice) {
	if sl.closed {
		return
	}
	sl.closed = true
	if s.slices[key] == sl {
		delete(s.slices, key)
	}
	s.ends = append(s.ends, pendingEnd{id: sl.id, outcome: limiter.OutcomeSettled, actual: max(sl.spent, 0),
		chain: key, owners: sl.owners, period: sl.period, size: sl.size})
}

// closeLapsed closes the slices past their life. s.mu is held.
func (s *Store) closeLapsed(now time.Time) {
	for k, sl := range s.slices {
		if !now.Before(sl.exp) {
			if c := s.sliceCalls[k]; c > 0 && sl.spent < sl.size/4 { // lapsed little used: smaller next time
				if c /= 2; c <= sliceCalls {
					delete(s.sliceCalls, k)
				} else {
					s.sliceCalls[k] = c
				}
			}
			s.closeSlice(k, sl)
		}
	}
}

func (s *Store) nextSliceID() string {
	s.batchSeq++
	return fmt.Sprintf("slice:%s:%d", s.epoch, s.batchSeq)
}
