package memstore

import (
	"context"
	"slices"
	"time"

	"github.com/tollgate/tollgate/limiter"
)

var _ limiter.Adjuster = (*Store)(nil)

// Adjust corrects buckets after the fact (see limiter.ApplyAdjust), all under
// their shard locks at once.
func (s *Store) Adjust(ctx context.Context, adj []limiter.Adjustment, now time.Time) ([]limiter.BucketState, error) {
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
	locks := slices.Compact(slices.Sorted(slices.Values(idx)))
	for _, i := range locks {
		s.shards[i].mu.Lock()
	}
	defer func() {
		for _, i := range locks {
			s.shards[i].mu.Unlock()
		}
	}()
	out := make([]limiter.BucketState, len(adj))
	for i, a := range adj {
		m := s.shards[idx[i]].buckets
		e := m[a.Key]
		if e == nil {
			e = &entry{b: limiter.NewBucket(a.Limit, at)}
		}
		e.limit = a.Limit
		e.b = limiter.ApplyAdjust(e.b.Advance(a.Limit, at), a)
		if e.b.Level >= a.Limit.Capacity*limiter.Micro {
			delete(m, a.Key) // a full bucket is as good as none
		} else {
			m[a.Key] = e
		}
		out[i] = limiter.BucketState{Key: a.Key, Limit: a.Limit}
		out[i].Remaining, out[i].ResetAfter = e.b.State(a.Limit)
	}
	return out, nil
}
