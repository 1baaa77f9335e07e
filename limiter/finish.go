package limiter

import (
	"context"
	"fmt"
	"strings"
	"time"

	"github.com/tollgate/tollgate/policy"
)

// Ending a reservation in one step. A reservation records what its
// admission charged to each bucket (the Takes it was granted, less shadow
// buckets that were short and so not charged); ending it settles or releases
// the money held, frees its slot, gives unused bucket units back from that
// record and applies the upstream's rate-limit signal, all atomically: one
// Lua script on Redis, one locked step in memory. Because the charges live
// with the reservation in the store, refunds survive a sidecar restart.

// Refund gives units back to a bucket after the fact (a call used less than
// it was charged) or, when negative, charges more (it used more). A charge
// may leave the bucket in debt, down to MinLevel; a refund never fills it
// past its capacity.
type Refund struct {
	Key   Key
	Limit Limit
	Units int64
}

// Throttle applies what an upstream provider says of a bucket: Cap, when not
// negative (NoCap), lowers it to at most Cap units (the upstream's own count
// of what is left); Pause empties it and keeps it empty for that long (an
// upstream 429 with its Retry-After).
type Throttle struct {
	Key   Key
	Limit Limit
	Cap   int64
	Pause time.Duration
}

// Adjustment is the one form stores apply both as (see ApplyAdjust).
func (r Refund) Adjustment() Adjustment {
	return Adjustment{Key: r.Key, Limit: r.Limit, Refund: r.Units, Cap: NoCap}
}

// Adjustment is the one form stores apply both as (see ApplyAdjust).
func (t Throttle) Adjustment() Adjustment {
	return Adjustment{Key: t.Key, Limit: t.Limit, Cap: t.Cap, Pause: t.Pause}
}

// RefundAdjustments converts refunds to the form stores apply.
func RefundAdjustments(refunds []Refund) []Adjustment {
	adj := make([]Adjustment, len(refunds))
	for i, r := range refunds {
		adj[i] = r.Adjustment()
	}
	return adj
}

// ThrottleAdjustments converts throttles to the form stores apply.
func ThrottleAdjustments(throttles []Throttle) []Adjustment {
	adj := make([]Adjustment, len(throttles))
	for i, t := range throttles {
		adj[i] = t.Adjustment()
	}
	return adj
}

// Charge is what an admission took from one bucket, as its reservation
// records it.
type Charge struct {
	Key   Key
	Limit Limit
	Units int64
}

// MaxCharges bounds the buckets one held admission may charge (and so the
// size of a reservation's record of them); Request.Validate refuses more.
// It bounds an Ending's Used and Throttles alike.
const MaxCharges = 64

// maxChargedKey bounds the length of a charged bucket's key (Key.String),
// for the same reason.
const maxChargedKey = 1024

// Charged lists what a granted admission of takes charged (d is its
// decision): every take, in order, except a shadow bucket that was short
// (left untouched, see ApplyHold). A denied admission charged nothing.
func Charged(takes []Take, d Decision) []Charge {
	if !d.Allowed {
		return nil
	}
	out := make([]Charge, 0, len(takes))
	for i, t := range takes {
		if i < len(d.Buckets) && d.Buckets[i].Short {
			continue
		}
		out = append(out, Charge{Key: t.Key, Limit: t.Limit, Units: t.Cost})
	}
	return out
}

// Refunds is what ending a reservation that recorded charges gives back:
// for every charge whose pool Used names, the units charged less those
// used (negative: a charge after the fact), in the charges' order. A pool
// not named keeps its charge. Stores apply them as Refund adjustments (see
// ApplyAdjust); the Redis store's finish.lua follows this line for line.
func (e Ending) Refunds(charges []Charge) []Refund {
	if len(e.Used) == 0 {
		return nil
	}
	out := make([]Refund, 0, len(charges))
	for _, c := range charges {
		for _, u := range e.Used {
			if u.Pool == c.Key.Pool {
				out = append(out, Refund{Key: c.Key, Limit: c.Limit, Units: c.Units - u.Units})
				break
			}
		}
	}
	return out
}

// PoolUse is what a finished call really used of one pool.
type PoolUse struct {
	Pool  string
	Units int64
}

// Ending says how one reservation ends.
type Ending struct {
	ID string
	// Outcome is OutcomeSettled (Actual is committed) or OutcomeReleased
	// (nothing is spent).
	Outcome Outcome
	Actual  policy.Money
	// Used names, per pool, the units the call really used: every bucket
	// of that pool the reservation charged gets back what it was charged
	// less Units (a negative difference charges more). A pool not named
	// keeps its charge. Refunds apply only the first time a reservation
	// ends; a repeated Finish changes nothing of them.
	Used []PoolUse
	// Throttles apply the upstream's signal in the same step, after the
	// refunds, whether or not the reservation is still open (the upstream
	// spoke either way).
	Throttles []Throttle
	// Savings are what the call's rewrites saved, per strategy (see
	// Saving): booked to the reservation's client (the first budget of its
	// chain) for its period, in the same step, when it settles for the
	// first time; a release, a repeat or an unknown id books none (see
	// Booked). At most MaxSavings, validated by ValidateSavings.
	Savings []Saving
	// Record, when set, describes the call: its history row is booked on
	// the first settle, its cost record on the first end (see history.go).
	Record *CallRecord
	// Now is the time of the step; zero means the store's clock.
	Now time.Time
}

// Validate refuses an ending no store can apply.
func (e Ending) Validate() error {
	if e.ID == "" || strings.ContainsAny(e.ID, " \n") {
		return fmt.Errorf("limiter: finish: reservation id %q is empty or has spaces", e.ID)
	}
	if e.Outcome != OutcomeSettled && e.Outcome != OutcomeReleased {
		return fmt.Errorf("limiter: finish %s: outcome %q is not settled or released", e.ID, e.Outcome)
	}
	if e.Actual < 0 || e.Actual >= MaxMoney {
		return fmt.Errorf("limiter: finish %s: actual cost %d out of range [0, 2^53)", e.ID, e.Actual)
	}
	if len(e.Used) > MaxCharges || len(e.Throttles) > MaxCharges {
		return fmt.Errorf("limiter: finish %s: %d pools used and %d throttles, more than %d", e.ID, len(e.Used), len(e.Throttles), MaxCharges)
	}
	for i, u := range e.Used {
		if u.Units < 0 || u.Units > maxUnits {
			return fmt.Errorf("limiter: finish %s: pool %s used %d units, out of range", e.ID, u.Pool, u.Units)
		}
		for _, v := range e.Used[:i] {
			if v.Pool == u.Pool {
				return fmt.Errorf("limiter: finish %s: pool %s named twice", e.ID, u.Pool)
			}
		}
	}
	if err := validateSavings(e.Savings, MaxSavings); err != nil {
		return fmt.Errorf("limiter: finish %s: %w", e.ID, err)
	}
	if e.Record != nil {
		if err := e.Record.Validate(); err != nil {
			return fmt.Errorf("limiter: finish %s: %w", e.ID, err)
		}
	}
	for i, t := range e.Throttles {
		if err := t.Adjustment().Validate(); err != nil {
			return fmt.Errorf("limiter: finish %s: throttles: %w", e.ID, err)
		}
		for _, u := range e.Throttles[:i] {
			if u.Key == t.Key {
				return fmt.Errorf("limiter: finish %s: throttles: bucket %s named twice", e.ID, t.Key)
			}
		}
	}
	return nil
}

// Finisher ends reservations in one atomic step (one round trip for a
// remote store), honouring ctx. Ending an unknown id returns
// ErrUnknownReservation (the throttles are still applied); ending one that
// already ended returns its first Settlement with Repeat set.
type Finisher interface {
	Finish(ctx context.Context, e Ending) (Settlement, error)
}
