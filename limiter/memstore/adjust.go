package memstore

import (
	"context"
	"time"

	"github.com/tollgate/tollgate/limiter"
)

var _ limiter.Adjuster = (*Store)(nil)

// Refund gives units back to buckets, or charges more, all under their
// shard locks at once (see limiter.ApplyAdjust).
func (s *Store) Refund(ctx context.Context, refunds []limiter.Refund, now time.Time) ([]limiter.BucketState, error) {
	return s.adjust(ctx, limiter.RefundAdjustments(refunds), now)
}

// Throttle applies upstream signals to buckets, all under their shard
// locks at once (see limiter.ApplyAdjust).
func (s *Store) Throttle(ctx context.Context, throttles []limiter.Throttle, now time.Time) ([]limiter.BucketState, error) {
	return s.adjust(ctx, limiter.ThrottleAdjustments(throttles), now)
}

func (s *Store) adjust(ctx context.Context, adj []limiter.Adjustment, now time.Time) ([]limiter.BucketState, error) {
	if err := s.usable(ctx); err != nil {
		return nil, err
	}
	if err := limiter.ValidateAdjustments(adj); err != nil {
		return nil, err
	}
	if now.IsZero() {
		now = s.clock.Now()
	}
	at := limiter.Micros(now)
	idx := make([]int, len(adj))
	for i := range adj {
		idx[i] = s.shardOf(adj[i].Key)
	}
	defer s.unlockShards(s.lockShards(idx))
	out := make([]limiter.BucketState, len(adj))
	for i, a := range adj {
		out[i] = s.adjustLocked(idx[i], a, at)
	}
	return out, nil
}

// adjustLocked applies a to its bucket in shard i, which is locked.
func (s *Store) adjustLocked(i int, a limiter.Adjustment, at int64) limiter.BucketState {
	m := s.shards[i].buckets
	e := s.entryAt(i, a.Key, a.Limit, at)
	e.b = limiter.ApplyAdjust(e.b, a)
	if e.b.Level >= a.Limit.Capacity*a.Limit.Scale() {
		delete(m, a.Key) // a full bucket is as good as none
	} else {
		m[a.Key] = e
	}
	st := limiter.BucketState{Key: a.Key, Limit: a.Limit}
	st.Remaining, st.ResetAfter = e.b.State(a.Limit)
	return st
}
