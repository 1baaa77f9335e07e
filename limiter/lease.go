package limiter

import (
	"context"
	"fmt"
	"strings"
	"time"

	"github.com/tollgate/tollgate/policy"
)

// Leases let a sidecar decide locally: it takes a slice of a shared
// bucket's units in one call and spends them itself, takes a few of a
// client's concurrency slots, and books the spend it decided later, in
// batches. Stores shared by a fleet implement these extension interfaces
// (both stores do, so one conformance suite covers them).

// LeaseAsk asks for a slice of a bucket's units.
type LeaseAsk struct {
	Key   Key
	Limit Limit
	// Want is the slice asked for; Need is the least worth taking (the
	// cost of the call at hand). The grant is as much of Want as the bucket
	// holds, if that is at least Need, else nothing.
	Want, Need int64
}

// LeaseGrant answers one LeaseAsk.
type LeaseGrant struct {
	// Granted units are taken from the bucket: the caller spends them (or
	// gives back what it did not, with an Adjustment refund).
	Granted int64
	// Remaining is the whole units left after the grant; ResetAfter the
	// time until the bucket is full again.
	Remaining  int64
	ResetAfter time.Duration
	// RetryAfter is, when nothing was granted, how long until Need could
	// be. Possible is false when Need can never fit (above the capacity, or
	// a bucket that never refills is short).
	RetryAfter time.Duration
	Possible   bool
}

// Validate refuses an ask no store can answer.
func (a LeaseAsk) Validate() error {
	if err := a.Limit.check(); err != nil {
		return fmt.Errorf("limiter: lease %s: %w", a.Key, err)
	}
	if a.Need < 0 || a.Want < a.Need || a.Want > maxUnits {
		return fmt.Errorf("limiter: lease %s: want %d, need %d out of range", a.Key, a.Want, a.Need)
	}
	return nil
}

// ApplyLease answers a from bucket b, already advanced to now. It is the
// single definition of a lease: the memory store calls it, and the Redis
// store's lease.lua follows it line for line.
func ApplyLease(b Bucket, a LeaseAsk) (Bucket, LeaseGrant) {
	var g LeaseGrant
	b = b.Rescaled(a.Limit)
	scale := a.Limit.Scale()
	avail := max(b.Level, 0) / scale
	ok, possible, wait := b.Check(a.Limit, a.Need)
	g.Possible = possible
	if ok {
		g.Granted = min(a.Want, avail) // avail >= Need: Check said so
		b.Level -= g.Granted * scale
	} else {
		g.RetryAfter = wait
	}
	g.Remaining, g.ResetAfter = b.State(a.Limit)
	return b, g
}

// Leaser hands out slices of buckets. One call is atomic (one round trip
// for a remote store) and honours ctx; now zero means the store's clock.
type Leaser interface {
	Lease(ctx context.Context, asks []LeaseAsk, now time.Time) ([]LeaseGrant, error)
}

// SlotLease asks for some of a client's concurrency slots for a holder (a
// sidecar), which then admits that many calls of the client itself.
type SlotLease struct {
	Client string
	Max    int64
	Holder string
	// Want is how many the holder would hold; it gets as many as fit under
	// Max beside everyone else's (0 gives its slots back).
	Want int64
	// TTL is how long the slots are held unless renewed: a holder that
	// dies loses them after it.
	TTL time.Duration
}

// Validate refuses a slot lease no store can answer.
func (s SlotLease) Validate() error {
	if s.Holder == "" || strings.ContainsAny(s.Holder, " \n:") || s.Max < 0 || s.Want < 0 || s.Want > 1_000_000 || s.TTL <= 0 {
		return fmt.Errorf("limiter: slot lease of %q for %q: want %d of %d, ttl %v out of range", s.Client, s.Holder, s.Want, s.Max, s.TTL)
	}
	return nil
}

// SlotLeaser hands out a client's concurrency slots. One call is atomic.
type SlotLeaser interface {
	// LeaseSlots sets the holder's slots of the client to as many of Want
	// as fit, renews them for TTL, and reports how many it holds and how
	// many of the client's slots are in use in all (its own included).
	LeaseSlots(ctx context.Context, l SlotLease, now time.Time) (held, inFlight int64, err error)
}

// SpendDelta is spend booked against one budget period: positive for a
// call's estimate at admission or its cost beyond it, negative for what it
// gives back when it settles lower or is released.
type SpendDelta struct {
	Owner, Period string
	Spent         policy.Money
	// Savings are the Owner's savings in Period booked with the delta (a
	// fleet member's settled calls, summed by strategy), at most
	// MaxDeltaSavings.
	Savings []Saving
}

// Booker books spend decided elsewhere (a sidecar's local decisions), in
// batches applied exactly once.
type Booker interface {
	// Book applies the batch's deltas to the budgets, unless a batch with
	// the same id has been applied before (within a day): applied reports
	// which. A caller that did not hear the answer sends the same batch
	// again.
	Book(ctx context.Context, batch string, deltas []SpendDelta) (applied bool, err error)
}

// ValidateBatch refuses a batch no store can book.
func ValidateBatch(batch string, deltas []SpendDelta) error {
	if batch == "" || strings.ContainsAny(batch, " \n{}") || len(batch) > 200 {
		return fmt.Errorf("limiter: batch id %q must be non-empty, without spaces or braces", batch)
	}
	for _, d := range deltas {
		if d.Spent <= -MaxMoney || d.Spent >= MaxMoney || d.Period == "" {
			return fmt.Errorf("limiter: batch %s: delta %d for %q/%q out of range", batch, d.Spent, d.Owner, d.Period)
		}
		if err := validateSavings(d.Savings, MaxDeltaSavings); err != nil {
			return fmt.Errorf("limiter: batch %s: %q/%q: %w", batch, d.Owner, d.Period, err)
		}
	}
	return nil
}
