package redisstore_test

import (
	"context"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/tollgate/tollgate/internal/redistest"
	"github.com/tollgate/tollgate/limiter"
	"github.com/tollgate/tollgate/limiter/redisstore"
)

// TestDoneRetention: the key Redis keeps per ended call lives for the
// configured retention (a day by default), and a settle repeated within it
// is recognised; retentions beyond the bound are refused.
func TestDoneRetention(t *testing.T) {
	tests := map[string]struct {
		retention time.Duration
		wantTTL   time.Duration
		wantErr   string
	}{
		"default":       {wantTTL: 24 * time.Hour},
		"ten minutes":   {retention: 10 * time.Minute, wantTTL: 10 * time.Minute},
		"a week":        {retention: 7 * 24 * time.Hour, wantTTL: 7 * 24 * time.Hour},
		"over a week":   {retention: 8 * 24 * time.Hour, wantErr: "must be whole seconds from 1s to 168h0m0s"},
		"not a second":  {retention: 1500 * time.Millisecond, wantErr: "must be whole seconds"},
		"less than one": {retention: time.Millisecond, wantErr: "must be whole seconds"},
	}
	for name, tc := range tests {
		t.Run(name, func(t *testing.T) {
			ctx := context.Background()
			c := srv.Client(t)
			prefix := redistest.Prefix(t)
			s, err := redisstore.New(c, redisstore.Config{Prefix: prefix, DoneRetention: tc.retention})
			if tc.wantErr != "" {
				require.ErrorContains(t, err, tc.wantErr)
				return
			}
			require.NoError(t, err)
			d, err := s.Reserve(ctx, limiter.Request{Hold: &limiter.Hold{ID: "call", TTL: time.Minute, Period: "2026-01", Cost: 1,
				Budgets: []limiter.Budget{{Owner: "o", Limit: limiter.Unlimited}}}})
			require.NoError(t, err)
			require.True(t, d.Allowed)
			_, err = s.Settle(ctx, "call", 1)
			require.NoError(t, err)
			ttl, err := c.TTL(ctx, "{"+prefix+"}:d:call").Result()
			require.NoError(t, err)
			assert.InDelta(t, tc.wantTTL.Seconds(), ttl.Seconds(), 2)
			rep, err := s.Settle(ctx, "call", 1)
			require.NoError(t, err)
			assert.True(t, rep.Repeat)
		})
	}
}
