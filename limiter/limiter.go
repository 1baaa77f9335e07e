// Package limiter holds Tollgate's admission domain: bucket keys and limits,
// the token-bucket arithmetic, decisions, and the Store interface that the
// memory and Redis stores implement. It does no I/O.
package limiter

import (
	"context"
	"fmt"
	"strconv"
	"strings"
	"time"
)

// Clock tells the time. Stores take one so tests run on a fake clock.
type Clock interface {
	Now() time.Time
}

// SystemClock is the wall clock.
type SystemClock struct{}

// Now returns time.Now().
func (SystemClock) Now() time.Time { return time.Now() }

// Key names one bucket: the pool-wide bucket of a pool (Client == "") or one
// client's bucket within a pool.
type Key struct {
	Pool   string
	Client string
}

// String encodes the key as length-prefixed parts, so that no pool or client
// name can collide with another ("a:b"+"c" never equals "a"+"b:c").
func (k Key) String() string {
	var b strings.Builder
	b.Grow(len(k.Pool) + len(k.Client) + 8)
	b.WriteString(strconv.Itoa(len(k.Pool)))
	b.WriteByte(':')
	b.WriteString(k.Pool)
	b.WriteByte(':')
	b.WriteString(strconv.Itoa(len(k.Client)))
	b.WriteByte(':')
	b.WriteString(k.Client)
	return b.String()
}

// Limit is a token bucket's shape: at most Capacity units, refilled at
// Refill units every Per. A zero Per is a second, so a Limit written
// without one refills Refill units a second, as it always did. Per is a
// whole number of seconds, at most MaxPer: the rate Refill/Per is kept
// exactly, whatever it is (10000/min, 100/h). The policy gives rates in
// lowest terms (10000/min is 500 every 3s), which lets the largest
// capacities through (see Den).
type Limit struct {
	Capacity int64
	Refill   int64
	Per      time.Duration
}

// MaxPer bounds a Limit's Per: a day, the longest period a policy rate is
// written per.
const MaxPer = 24 * time.Hour

// Den is the limit's refill period in whole seconds (one for a zero Per):
// the denominator of its rate in units a second, Refill/Den. A bucket
// level counts 1/(Micro·Den) parts of a unit (Scale), so that the bucket
// gains exactly Refill of them every microsecond and integer arithmetic
// stays exact. Capacity·Den is at most maxUnits, which keeps every level
// below 2^53 (see MinLevel), as the Redis scripts need.
func (l Limit) Den() int64 {
	if l.Per <= time.Second {
		return 1
	}
	return int64(l.Per / time.Second)
}

// Scale is how many parts of a unit a bucket level counts: Micro·Den.
func (l Limit) Scale() int64 { return Micro * l.Den() }

// check refuses a limit no store can keep exactly.
func (l Limit) check() error {
	switch {
	case l.Capacity <= 0 || l.Capacity > maxUnits || l.Refill < 0:
		return fmt.Errorf("capacity %d, refill %d out of range", l.Capacity, l.Refill)
	case l.Per < 0 || l.Per > MaxPer || l.Per%time.Second != 0:
		return fmt.Errorf("refill period %v is not a whole number of seconds up to %v", l.Per, MaxPer)
	case l.Capacity > maxUnits/l.Den():
		return fmt.Errorf("capacity %d is too large for a refill every %v: at most %d", l.Capacity, l.Per, maxUnits/l.Den())
	case l.Refill > maxUnits*l.Den():
		return fmt.Errorf("refill %d every %v is more than %d a second", l.Refill, l.Per, maxUnits)
	}
	return nil
}

// Take asks for Cost units from the bucket Key shaped by Limit.
type Take struct {
	Key   Key
	Limit Limit
	Cost  int64
	// Shadow marks a bucket whose shortfall is reported but never denies
	// the call; a shadow bucket that cannot cover its cost is left as is.
	Shadow bool
}

// Request is one admission: every Take is granted, and the Hold (if any)
// taken, or nothing is.
type Request struct {
	Takes []Take
	Hold  *Hold
	// Now is the decision time; the zero value means the store's own clock
	// (the memory store's Clock, Redis's TIME).
	Now time.Time
	// Priority is the call's queue score (its tier's priority plus its
	// class's urgency, 0–70 points): a fleet weighs each member's demand by
	// the scores of the calls it holds. Stores decide without it.
	Priority int
}

// Validate refuses a request no store can decide: a bucket named twice
// (stores read every bucket before writing any, so it would be charged once
// for both costs), a negative cost, a bucket with no capacity, a hold without an id or TTL (unless it commits at
// once), a hold that would charge more than MaxCharges buckets, or amounts
// the Redis scripts cannot keep exact.
func (r Request) Validate() error {
	for i, t := range r.Takes {
		for _, u := range r.Takes[:i] {
			if u.Key == t.Key {
				return fmt.Errorf("limiter: bucket %s appears twice in one request", t.Key)
			}
		}
		if t.Cost < 0 {
			return fmt.Errorf("limiter: bucket %s: cost %d out of range", t.Key, t.Cost)
		}
		if err := t.Limit.check(); err != nil {
			return fmt.Errorf("limiter: bucket %s: %w", t.Key, err)
		}
	}
	h := r.Hold
	if h == nil {
		return nil
	}
	if h.Cost < 0 || h.Cost >= MaxMoney {
		return fmt.Errorf("limiter: hold cost %d out of range [0, 2^53)", h.Cost)
	}
	if !h.Commit && (h.ID == "" || h.TTL <= 0 || strings.ContainsAny(h.ID, " \n")) {
		return fmt.Errorf("limiter: a hold needs an id without spaces and a positive TTL")
	}
	if !h.Commit {
		// The reservation records what it charged: keep that record small.
		if len(r.Takes) > MaxCharges {
			return fmt.Errorf("limiter: hold %s charges %d buckets, more than %d", h.ID, len(r.Takes), MaxCharges)
		}
		for _, t := range r.Takes {
			if n := len(t.Key.Pool) + len(t.Key.Client); n > maxChargedKey {
				return fmt.Errorf("limiter: hold %s: bucket key of %d bytes, more than %d", h.ID, n, maxChargedKey)
			}
		}
	}
	for _, b := range h.Budgets {
		if b.Limit >= MaxMoney {
			return fmt.Errorf("limiter: budget of %s out of range", b.Owner)
		}
	}
	return nil
}

// maxUnits bounds capacities and refill rates a second
// (policy.MaxCapacity), and a capacity times its limit's Den.
const maxUnits = 1_000_000_000

// MaxMoney bounds every amount a store keeps (2^53 nano-dollars, about $9
// million): the Redis scripts hold money in Lua numbers, exact below it.
const MaxMoney = 1 << 53

// Reason says why a call was denied. The values are snake_case codes that
// also serve as the metric label.
type Reason string

// Reasons a store can give.
const (
	ReasonNone            Reason = ""
	ReasonRateLimited     Reason = "rate_limited"     // a bucket is short; retry after RetryAfter
	ReasonExceedsCapacity Reason = "exceeds_capacity" // the cost is larger than the bucket can ever hold
)

// BucketState reports one bucket after a decision.
type BucketState struct {
	Key   Key
	Limit Limit
	// Remaining is the whole units left after the decision.
	Remaining int64
	// ResetAfter is how long until the bucket is full again.
	ResetAfter time.Duration
	// Short is set when the bucket could not cover its cost; RetryAfter is
	// then how long until it could (zero if it never can).
	Short      bool
	RetryAfter time.Duration
}

// Decision is a store's answer to a Request.
type Decision struct {
	Allowed bool
	Reason  Reason
	// Blocking is the index in Buckets of the bucket that denied the call,
	// or -1.
	Blocking int
	// RetryAfter is the earliest a retry of the same request could pass
	// (zero when it never can, see ReasonExceedsCapacity).
	RetryAfter time.Duration
	// Buckets holds one state per Take, in the Request's order.
	Buckets []BucketState
	// Budgets holds one state per Hold budget; BudgetBlocking is the index
	// of the one that denied, or -1.
	Budgets        []BudgetState
	BudgetBlocking int
	// InFlight is the client's slots in use after the decision (with a Hold
	// that has a Slot).
	InFlight int64
	// Expired counts lapsed reservations (anyone's) the store committed at
	// their estimate while deciding, for the expiry metric.
	Expired int
}

// ShadowDenied reports whether a shadow bucket would have denied the call.
func (d *Decision) ShadowDenied(takes []Take) (int, bool) {
	for i, b := range d.Buckets {
		if b.Short && i < len(takes) && takes[i].Shadow {
			return i, true
		}
	}
	return -1, false
}

// Tightest returns the index of the bucket with the least remaining share of
// its capacity: the one whose numbers belong in x-ratelimit-* headers.
func (d *Decision) Tightest() int {
	if d.Blocking >= 0 {
		return d.Blocking
	}
	best := -1
	for i, b := range d.Buckets {
		if b.Limit.Capacity <= 0 {
			continue
		}
		// compare Remaining/Capacity without division: a/b < c/d ⇔ a·d < c·b
		if best < 0 || b.Remaining*d.Buckets[best].Limit.Capacity < d.Buckets[best].Remaining*b.Limit.Capacity {
			best = i
		}
	}
	return best
}

// Store keeps bucket state. Implementations are safe for concurrent use and
// atomic per Request: all Takes are granted together or none is. Reserve
// blocks at most for one round trip to the store's backend, honouring ctx.
type Store interface {
	Reserve(ctx context.Context, req Request) (Decision, error)
	Close() error
}
