package limiter

import "time"

// Micro is the fixed-point scale of bucket levels for a limit refilling
// whole units a second: a level counts millionths of a unit, and time is
// counted in microseconds, so a bucket refilling R units per second gains
// exactly R micro-units per microsecond. A limit refilling R units every D
// seconds (Limit.Den) scales levels by Micro·D instead (Limit.Scale): the
// bucket gains exactly R of its parts per microsecond, so 10000/min (500
// every 3 s) and 100/h (1 every 36 s) are kept exactly too. Integer
// arithmetic stays exact (and below 2^53, so the Redis Lua scripts compute
// the same numbers) for capacities up to policy.MaxCapacity/D.
const Micro = 1_000_000

// Bucket is a token bucket's state: its level at time At (Unix
// microseconds), in 1/(Micro·Den) parts of a unit. Den is the Limit.Den
// the level is scaled by; zero (as in a bucket stored before limits had
// periods) means one, and one is always written as zero. NewBucket makes a
// full one.
type Bucket struct {
	Level int64
	At    int64
	Den   int64
}

// NewBucket returns a full bucket at now (Unix microseconds).
func NewBucket(l Limit, now int64) Bucket {
	return BucketHolding(l, l.Capacity, now)
}

// BucketHolding returns a bucket holding units whole units at now, scaled
// for l.
func BucketHolding(l Limit, units, now int64) Bucket {
	return Bucket{Level: units * l.Scale(), At: now, Den: denField(l.Den())}
}

// denField is how Bucket.Den records den: one as zero.
func denField(den int64) int64 {
	if den == 1 {
		return 0
	}
	return den
}

// den is the denominator the bucket's level is scaled by.
func (b Bucket) den() int64 { return max(b.Den, 1) }

// Rescaled returns b with its level scaled for l: unchanged when it already
// is, else converted once (a policy reload changed the rate's period, as
// from 166/s to 10000/min), rounding down so that no part of a unit is
// gained, and clamped to [MinLevel, l's capacity]. Advance, and every
// Apply function, rescale first.
func (b Bucket) Rescaled(l Limit) Bucket {
	to := l.Den()
	if from := b.den(); from != to {
		b.Level = rescale(b.Level, from, to, l.Capacity*Micro)
		b.Den = denField(to)
	}
	return b
}

// rescale converts a level counted in 1/(Micro·from) parts of a unit to
// 1/(Micro·to) parts, rounded down (toward less level, more debt): level
// is q micro-units and r/from of one, and q·to + ⌊r·to/from⌋ is
// ⌊level·to/from⌋. A level of capMicro micro-units or more is full;
// one that would fall below MinLevel is MinLevel. No product exceeds 2^53
// (to, from ≤ 86,400): the Redis scripts' rescale is the same, line for
// line.
func rescale(level, from, to, capMicro int64) int64 {
	q, r := level/from, level%from
	if r < 0 { // floor, not truncation, for a level in debt
		q, r = q-1, r+from
	}
	if q >= capMicro {
		return capMicro * to
	}
	if q < MinLevel/to-1 {
		return MinLevel
	}
	return max(q*to+r*to/from, MinLevel)
}

// Advance refills the bucket up to now. A clock that goes backwards leaves
// the bucket as it is.
func (b Bucket) Advance(l Limit, now int64) Bucket {
	b = b.Rescaled(l)
	full := l.Capacity * l.Scale()
	if b.Level > full { // the capacity was lowered by a policy reload
		b.Level = full
	}
	if now <= b.At {
		return b
	}
	elapsed := now - b.At
	b.At = now
	if l.Refill <= 0 {
		return b
	}
	missing := full - b.Level
	if elapsed >= ceilDiv(missing, l.Refill) {
		b.Level = full
	} else {
		b.Level += elapsed * l.Refill // < missing: cannot overflow
	}
	return b
}

// Check reports whether the (advanced) bucket can cover cost, and if not,
// how long until it could; possible is false when cost exceeds the capacity.
func (b Bucket) Check(l Limit, cost int64) (ok, possible bool, wait time.Duration) {
	if cost <= 0 {
		return true, true, 0
	}
	if cost > l.Capacity {
		return false, false, 0
	}
	b = b.Rescaled(l)
	need := cost * l.Scale()
	if b.Level >= need {
		return true, true, 0
	}
	if l.Refill <= 0 {
		return false, false, 0
	}
	return false, true, time.Duration(ceilDiv(need-b.Level, l.Refill)) * time.Microsecond
}

// State describes the bucket for headers: whole units remaining (zero while
// the bucket is in debt) and the time until it is full.
func (b Bucket) State(l Limit) (remaining int64, resetAfter time.Duration) {
	b = b.Rescaled(l)
	remaining = max(b.Level, 0) / l.Scale()
	if l.Refill > 0 {
		resetAfter = time.Duration(ceilDiv(l.Capacity*l.Scale()-b.Level, l.Refill)) * time.Microsecond
	}
	return remaining, resetAfter
}

// Full reports whether the bucket at now holds its whole capacity, i.e. is
// indistinguishable from a bucket never used (and may be forgotten).
func (b Bucket) Full(l Limit, now int64) bool {
	return b.Advance(l, now).Level >= l.Capacity*l.Scale()
}

func ceilDiv(a, b int64) int64 {
	if a <= 0 {
		return 0
	}
	return (a + b - 1) / b
}

// Micros converts t to Unix microseconds.
func Micros(t time.Time) int64 { return t.UnixMicro() }

// Apply decides takes alone (no Hold); see ApplyHold.
func Apply(buckets []Bucket, takes []Take) Decision {
	return ApplyHold(buckets, takes, nil, nil, 0)
}

// ApplyHold decides an admission against the buckets (one per Take, already
// advanced to now) and, for a Hold, the budget states of its chain (one per
// Hold budget, as stored) and the client's slots in use. When the call is
// allowed it takes each cost from its bucket, adds the Hold's cost to every
// budget's Reserved and counts the slot; when it is denied nothing changes.
// A shadow bucket that is short is reported and left untouched. This is the
// single definition of an admission: the memory store calls it, and the
// Redis store's Lua follows it line for line.
//
// When several things deny, the most lasting reason wins: budget_exceeded,
// then exceeds_capacity, then concurrency, then rate_limited (the longest
// wait).
func ApplyHold(buckets []Bucket, takes []Take, h *Hold, budgets []BudgetState, inFlight int64) Decision {
	d := Decision{Allowed: true, Blocking: -1, BudgetBlocking: -1, Buckets: make([]BucketState, len(takes))}
	for i, t := range takes {
		buckets[i] = buckets[i].Rescaled(t.Limit)
		ok, possible, wait := buckets[i].Check(t.Limit, t.Cost)
		st := &d.Buckets[i]
		st.Key, st.Limit = t.Key, t.Limit
		if ok {
			continue
		}
		st.Short, st.RetryAfter = true, wait
		if t.Shadow {
			continue
		}
		reason := ReasonRateLimited
		if !possible {
			reason = ReasonExceedsCapacity
		}
		// Deny; the most lasting reason wins: a cost that can never fit
		// beats a wait, and a longer wait beats a shorter one.
		switch {
		case d.Allowed:
			d.Allowed, d.Reason, d.Blocking, d.RetryAfter = false, reason, i, wait
		case d.Reason == ReasonRateLimited && (reason == ReasonExceedsCapacity || wait > d.RetryAfter):
			d.Reason, d.Blocking, d.RetryAfter = reason, i, wait
		}
	}
	if h != nil {
		if h.Slot != nil && !h.Commit && inFlight >= h.Slot.Max && d.Reason != ReasonExceedsCapacity {
			d.Allowed, d.Reason, d.RetryAfter = false, ReasonConcurrency, 0
		}
		for i := range budgets {
			b := &budgets[i]
			if b.Limit >= 0 && b.Spent+b.Reserved+h.Cost > b.Limit {
				b.Short = true
				if d.BudgetBlocking < 0 {
					d.BudgetBlocking = i
				}
			}
		}
		if d.BudgetBlocking >= 0 {
			d.Allowed, d.Reason, d.RetryAfter = false, ReasonBudgetExceeded, 0
		}
	}
	if d.Reason == ReasonExceedsCapacity {
		d.RetryAfter = 0
	}
	if d.Reason != ReasonRateLimited && d.Reason != ReasonExceedsCapacity {
		d.Blocking = -1 // a bucket did not decide
	}
	for i, t := range takes {
		if d.Allowed && !d.Buckets[i].Short {
			buckets[i].Level -= t.Cost * t.Limit.Scale()
		}
		d.Buckets[i].Remaining, d.Buckets[i].ResetAfter = buckets[i].State(t.Limit)
	}
	if h != nil {
		if d.Allowed {
			for i := range budgets {
				if h.Commit {
					budgets[i].Spent += h.Cost
				} else {
					budgets[i].Reserved += h.Cost
				}
			}
			if h.Slot != nil && !h.Commit {
				inFlight++
			}
		}
		d.Budgets, d.InFlight = budgets, inFlight
	}
	return d
}
