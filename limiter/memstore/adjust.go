package memstore

import (
	"context"
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
	defer s.unlockShards(s.lockShards(idx))
	out := make([]limiter.BucketState, len(adj))
	for i, a := range adj {
		m := s.shards[idx[i]].buckets
		e := s.entryAt(idx[i], a.Key, a.Limit, at)
		e.b = limiter.ApplyAdjust(e.b, a)
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
