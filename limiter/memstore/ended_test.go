package memstore_test

import (
	"context"
	"fmt"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/tollgate/tollgate/internal/fakeclock"
	"github.com/tollgate/tollgate/limiter"
	"github.com/tollgate/tollgate/limiter/memstore"
)

// TestEndedBounded: the outcomes of ended reservations (kept so a repeated
// settle is recognised) are bounded by count and by bytes, the oldest
// forgotten first and counted, and by retention; within the bounds a
// repeat is still recognised.
func TestEndedBounded(t *testing.T) {
	tests := map[string]struct {
		limits      memstore.EndedLimits
		calls       int
		advance     time.Duration
		wantKept    int
		wantEvicted uint64
	}{
		"under every bound":    {limits: memstore.EndedLimits{Retention: time.Hour, MaxCount: 100, MaxBytes: 1 << 20}, calls: 50, wantKept: 50},
		"count bound":          {limits: memstore.EndedLimits{Retention: time.Hour, MaxCount: 10, MaxBytes: 1 << 20}, calls: 50, wantKept: 10, wantEvicted: 40},
		"byte bound":           {limits: memstore.EndedLimits{Retention: time.Hour, MaxCount: 100, MaxBytes: int64(20 * (160 + 2*len("call-00")))}, calls: 50, wantKept: 20, wantEvicted: 30},
		"retention forgets":    {limits: memstore.EndedLimits{Retention: time.Minute, MaxCount: 100, MaxBytes: 1 << 20}, calls: 50, advance: 2 * time.Minute, wantKept: 0},
		"retention not yet up": {limits: memstore.EndedLimits{Retention: time.Minute, MaxCount: 100, MaxBytes: 1 << 20}, calls: 50, advance: 30 * time.Second, wantKept: 50},
	}
	for name, tc := range tests {
		t.Run(name, func(t *testing.T) {
			ctx := context.Background()
			clk := fakeclock.New(epoch)
			s := newStore(t, memstore.Config{Clock: clk, Ended: tc.limits})
			for i := range tc.calls {
				id := fmt.Sprintf("call-%02d", i)
				d, err := s.Reserve(ctx, limiter.Request{Hold: &limiter.Hold{ID: id, TTL: time.Minute, Period: "2026-01", Cost: 1,
					Budgets: []limiter.Budget{{Owner: "o", Limit: limiter.Unlimited}}}})
				require.NoError(t, err)
				require.True(t, d.Allowed)
				_, err = s.Settle(ctx, id, 1)
				require.NoError(t, err)
			}
			clk.Advance(tc.advance)
			_, err := s.Expire(ctx, time.Time{}, 100)
			require.NoError(t, err)
			st := s.Ended()
			assert.Equal(t, tc.wantKept, st.Kept)
			assert.Equal(t, int64(tc.wantKept)*int64(160+2*len("call-00")), st.Bytes)
			assert.Equal(t, tc.wantEvicted, st.Evicted)
			assert.LessOrEqual(t, st.Bytes, tc.limits.MaxBytes)

			last := fmt.Sprintf("call-%02d", tc.calls-1)
			rep, err := s.Settle(ctx, last, 1)
			if tc.wantKept > 0 {
				require.NoError(t, err)
				assert.True(t, rep.Repeat, "the newest is still recognised")
			} else {
				require.ErrorIs(t, err, limiter.ErrUnknownReservation)
			}
			if tc.wantEvicted > 0 {
				_, err := s.Settle(ctx, "call-00", 1)
				require.ErrorIs(t, err, limiter.ErrUnknownReservation, "the oldest was forgotten")
			}
		})
	}
}

func TestEndedLimitsValidate(t *testing.T) {
	_, err := memstore.New(memstore.Config{Ended: memstore.EndedLimits{Retention: time.Hour}})
	require.ErrorContains(t, err, "ended reservations: retention 1h0m0s, count 0 and bytes 0 must all be positive")
	s, err := memstore.New(memstore.Config{})
	require.NoError(t, err, "zero means the default")
	require.NoError(t, s.Close())
}
