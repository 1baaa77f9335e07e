package redisstore_test

import (
	"context"
	"strconv"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/tollgate/tollgate/limiter"
)

// TestStoredDenominator: a bucket of a rate that is no whole number of
// units a second keeps its denominator beside its level (field d); a
// bucket at a rate per second is stored as it always was (l and t only),
// so state written before rates had periods reads the same, and a d that
// no longer applies is dropped.
func TestStoredDenominator(t *testing.T) {
	ctx := context.Background()
	c := srv.Client(t)
	s, tag := prefixedStore(t, c)
	k := limiter.Key{Pool: "gpt-4"}
	key := tag + "k:" + k.String()
	perSecond := limiter.Limit{Capacity: 10_000, Refill: 166}
	perMinute := limiter.Limit{Capacity: 10_000, Refill: 500, Per: 3 * time.Second} // 10000/min
	at := strconv.FormatInt(epoch.UnixMicro(), 10)
	reserve := func(l limiter.Limit, cost int64) limiter.Decision {
		t.Helper()
		d, err := s.Reserve(ctx, limiter.Request{Takes: []limiter.Take{{Key: k, Limit: l, Cost: cost}}, Now: epoch})
		require.NoError(t, err)
		require.True(t, d.Allowed)
		return d
	}
	fields := func() map[string]string {
		t.Helper()
		m, err := c.HGetAll(ctx, key).Result()
		require.NoError(t, err)
		return m
	}

	// State written by an earlier version: 5 units, in micro-units.
	require.NoError(t, c.HSet(ctx, key, "l", 5_000_000, "t", at).Err())
	assert.Equal(t, int64(5), reserve(perSecond, 0).Buckets[0].Remaining)
	assert.Equal(t, map[string]string{"l": "5000000", "t": at}, fields(), "a rate per second stores what it always did")

	// Reloaded as 10000/min: the level is kept in thirds of a micro-unit.
	assert.Equal(t, int64(3), reserve(perMinute, 2).Buckets[0].Remaining)
	assert.Equal(t, map[string]string{"l": "9000000", "t": at, "d": "3"}, fields())

	// And back: the d goes.
	assert.Equal(t, int64(3), reserve(perSecond, 0).Buckets[0].Remaining)
	assert.Equal(t, map[string]string{"l": "3000000", "t": at}, fields())
}

// TestChargesRecordDenominator: a reservation's record of what it charged
// writes a bucket's rate as refill/den when den is not 1, and as before
// otherwise, so that a record written by an earlier version (no den) is
// refunded at a rate per second.
func TestChargesRecordDenominator(t *testing.T) {
	ctx := context.Background()
	c := srv.Client(t)
	s, tag := prefixedStore(t, c)
	perMinute := limiter.Limit{Capacity: 10_000, Refill: 500, Per: 3 * time.Second}
	frac, whole := limiter.Key{Pool: "frac"}, limiter.Key{Pool: "whole"}
	d, err := s.Reserve(ctx, limiter.Request{
		Takes: []limiter.Take{{Key: frac, Limit: perMinute, Cost: 30}, {Key: whole, Limit: poolLimit, Cost: 40}},
		Hold:  &limiter.Hold{ID: "rec", TTL: time.Minute, Period: period, Cost: 1}, Now: epoch,
	})
	require.NoError(t, err)
	require.True(t, d.Allowed)
	rec, err := c.HGet(ctx, tag+"r:rec", "charges").Result()
	require.NoError(t, err)
	fk, wk := frac.String(), whole.String()
	assert.Equal(t, "10000 500/3 30 "+strconv.Itoa(len(fk))+":"+fk+"100 1 40 "+strconv.Itoa(len(wk))+":"+wk, rec)

	_, err = s.Finish(ctx, limiter.Ending{ID: "rec", Outcome: limiter.OutcomeSettled,
		Used: []limiter.PoolUse{{Pool: "frac", Units: 10}, {Pool: "whole", Units: 15}}, Now: epoch})
	require.NoError(t, err)
	lv, err := s.Reserve(ctx, limiter.Request{Takes: []limiter.Take{{Key: frac, Limit: perMinute}, {Key: whole, Limit: poolLimit}}, Now: epoch})
	require.NoError(t, err)
	assert.Equal(t, []int64{9_990, 85}, []int64{lv.Buckets[0].Remaining, lv.Buckets[1].Remaining})
}
