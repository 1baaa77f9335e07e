package limiter

import (
	"context"
	"fmt"
	"time"
)

// MinLevel is the deepest debt a bucket may run into, as a level (in
// micro-units for a limit refilling whole units a second, in 1/Scale parts
// of a unit in general). A charge after the fact (a call that used more
// than it reserved) or an upstream pause leaves a bucket below zero, so
// that later calls wait for the debt to be refilled. The floor keeps every
// level and every refill product below 2^53, where the Redis scripts' Lua
// numbers are exact: capacity·Scale (at most 10^15, see Limit.Den) plus
// 7·10^15 stays under 2^53 ≈ 9.007·10^15. In units, the floor is 7·10^9
// for a limit refilling every second, and 7·10^9/Den for one refilling
// every Den seconds (81,018 units for a rate per day).
const MinLevel = -7_000_000_000_000_000

// Adjustment corrects one bucket after the fact: what a call really used,
// and what the upstream provider says is left. It is the one form a Refund
// and a Throttle are both applied as (see ApplyAdjust); the API takes those.
type Adjustment struct {
	Key   Key
	Limit Limit
	// Refund gives units back to the bucket (a call used less than it was
	// charged) or, when negative, charges more (it used more). A charge may
	// leave the bucket in debt, down to MinLevel; a refund never fills it
	// past its capacity.
	Refund int64
	// Cap, when not negative, lowers the bucket to at most Cap units: the
	// upstream's own count of what is left. A bucket already lower keeps its
	// level. Negative means no cap.
	Cap int64
	// Pause empties the bucket and keeps it empty for this long (an upstream
	// 429 with its Retry-After): a later call waits for the pause and then
	// for its own cost to refill. A bucket that never refills is only
	// emptied.
	Pause time.Duration
}

// NoCap is the Cap of an Adjustment that does not cap.
const NoCap = -1

// maxPause bounds an Adjustment's Pause (validation).
const maxPause = 24 * time.Hour

// Validate refuses an adjustment no store can apply.
func (a Adjustment) Validate() error {
	if err := a.Limit.check(); err != nil {
		return fmt.Errorf("limiter: adjust %s: %w", a.Key, err)
	}
	if a.Refund < -maxUnits || a.Refund > maxUnits {
		return fmt.Errorf("limiter: adjust %s: refund %d out of range", a.Key, a.Refund)
	}
	if a.Cap > maxUnits || a.Pause < 0 || a.Pause > maxPause {
		return fmt.Errorf("limiter: adjust %s: cap %d or pause %v out of range", a.Key, a.Cap, a.Pause)
	}
	return nil
}

// ApplyAdjust applies a to bucket b, already advanced to now. It is the
// single definition of an adjustment: the memory store calls it, and the
// Redis store's adjust.lua follows it line for line. In order: the refund
// (clamped to [MinLevel, capacity]), then the cap, then the pause (the level
// becomes at most minus the pause's worth of refill, so the bucket is back
// at zero exactly when the pause ends).
func ApplyAdjust(b Bucket, a Adjustment) Bucket {
	b = b.Rescaled(a.Limit)
	scale := a.Limit.Scale()
	full := a.Limit.Capacity * scale
	b.Level = addUnits(b.Level, a.Refund, scale, full)
	if a.Cap >= 0 {
		b.Level = min(b.Level, min(a.Cap, a.Limit.Capacity)*scale)
	}
	if p := a.Pause.Microseconds(); p > 0 {
		debt := int64(0)
		if r := a.Limit.Refill; r > 0 {
			debt = -MinLevel
			if p < -MinLevel/r {
				debt = p * r
			}
		}
		b.Level = min(b.Level, -debt)
	}
	return b
}

// addUnits adds units (taken when negative) to a level of scale parts a
// unit: min(max(level + units·scale, MinLevel), full), computed without
// the product when it would saturate, so that nothing exceeds 2^53 even
// for a large scale (refunds are up to 10^9 units). adjust.lua's add_units
// is the same.
func addUnits(level, units, scale, full int64) int64 {
	switch {
	case units >= 0 && units >= ceilDiv(full-level, scale):
		return full
	case units < 0 && -units >= ceilDiv(level-MinLevel, scale):
		return MinLevel
	}
	return min(level+units*scale, full)
}

// Adjuster corrects buckets after admission. It is an extension of Store:
// both stores implement it. One call is atomic (one round trip for a remote
// store) and honours ctx; now zero means the store's clock. Each method
// returns one state per element, in order, and refuses a batch that names a
// bucket twice.
type Adjuster interface {
	// Refund gives units back to buckets, or charges more (see Refund).
	Refund(ctx context.Context, refunds []Refund, now time.Time) ([]BucketState, error)
	// Throttle applies upstream signals to buckets (see Throttle).
	Throttle(ctx context.Context, throttles []Throttle, now time.Time) ([]BucketState, error)
}

// ValidateAdjustments refuses a batch no store can apply, including a
// bucket named twice.
func ValidateAdjustments(adj []Adjustment) error {
	for i, a := range adj {
		if err := a.Validate(); err != nil {
			return err
		}
		for _, b := range adj[:i] {
			if b.Key == a.Key {
				return fmt.Errorf("limiter: bucket %s adjusted twice in one call", a.Key)
			}
		}
	}
	return nil
}
