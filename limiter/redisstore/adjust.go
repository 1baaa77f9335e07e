package redisstore

import (
	"context"
	"fmt"
	"time"

	"github.com/tollgate/tollgate/limiter"
)

// Buckets adjusted outside an admission: refunds, throttles, leases of
// units and of concurrency slots, and spend booked in batches.

// Refund gives units back to buckets, or charges more, in one script call.
func (s *Store) Refund(ctx context.Context, refunds []limiter.Refund, now time.Time) ([]limiter.BucketState, error) {
	return s.adjust(ctx, limiter.RefundAdjustments(refunds), now)
}

// Throttle applies upstream signals to buckets in one script call.
func (s *Store) Throttle(ctx context.Context, throttles []limiter.Throttle, now time.Time) ([]limiter.BucketState, error) {
	return s.adjust(ctx, limiter.ThrottleAdjustments(throttles), now)
}

// adjust corrects buckets after the fact in one script call (with Spread,
// one a slot, in one pipeline: each bucket's correction stands alone).
func (s *Store) adjust(ctx context.Context, adj []limiter.Adjustment, now time.Time) ([]limiter.BucketState, error) {
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	if err := limiter.ValidateAdjustments(adj); err != nil {
		return nil, err
	}
	if len(adj) == 0 {
		return []limiter.BucketState{}, nil
	}
	groups := s.groupKeys(len(adj), func(i int) limiter.Key { return adj[i].Key })
	keys, args := make([][]string, len(groups)), make([][]any, len(groups))
	for i, g := range groups {
		keys[i], args[i] = adjustArgs(g.p, pick(adj, g.idx), now)
	}
	out := make([]limiter.BucketState, len(adj))
	cmds := s.runEach(ctx, s.sc.adjust, keys, args)
	for i, cmd := range cmds {
		res, err := cmd.Slice()
		if err != nil {
			if len(cmds) > 1 && !allUnsent(cmds) {
				// Spread over slots, some of the call ran: not Unsent, so
				// that no caller sends it again and gives the units twice.
				return nil, fmt.Errorf("redisstore: adjust: applied on some slots only: %v", err)
			}
			return nil, fmt.Errorf("redisstore: adjust: %w", err)
		}
		st, err := decodeAdjust(res, pick(adj, groups[i].idx))
		if err != nil {
			return nil, err
		}
		for j, k := range groups[i].idx {
			out[k] = st[j]
		}
	}
	return out, nil
}

// adjustOn runs adjust.lua on the slot of prefix p.
func (s *Store) adjustOn(ctx context.Context, p string, adj []limiter.Adjustment, now time.Time) ([]limiter.BucketState, error) {
	keys, args := adjustArgs(p, adj, now)
	res, err := s.sc.adjust.Run(ctx, s.c, keys, args...).Slice()
	if err != nil {
		return nil, fmt.Errorf("redisstore: adjust: %w", err)
	}
	return decodeAdjust(res, adj)
}

// adjustArgs are adjust.lua's keys and arguments on the slot of prefix p.
func adjustArgs(p string, adj []limiter.Adjustment, now time.Time) ([]string, []any) {
	keys := make([]string, len(adj))
	args := make([]any, 0, 2+6*len(adj))
	args = append(args, micros(now), len(adj))
	for i, a := range adj {
		keys[i] = bucketKey(p, a.Key)
		args = append(args, a.Limit.Capacity, a.Limit.Refill, a.Limit.Den(), a.Refund, a.Cap, a.Pause.Microseconds())
	}
	return keys, args
}

// decodeAdjust reads adjust.lua's reply, refusing one of the wrong shape.
func decodeAdjust(res []any, adj []limiter.Adjustment) ([]limiter.BucketState, error) {
	if len(res) != 2*len(adj) {
		return nil, fmt.Errorf("redisstore: adjust replied with %d values, want %d", len(res), 2*len(adj))
	}
	r := reply{v: res}
	out := make([]limiter.BucketState, len(adj))
	for i, a := range adj {
		out[i] = limiter.BucketState{Key: a.Key, Limit: a.Limit, Remaining: r.int(2 * i),
			ResetAfter: time.Duration(r.int(2*i+1)) * time.Microsecond}
	}
	if r.err != nil {
		return nil, fmt.Errorf("redisstore: adjust reply: %w", r.err)
	}
	return out, nil
}

// Lease hands out slices of buckets in one script call (with Spread, one
// a slot, in one pipeline: each grant stands alone).
func (s *Store) Lease(ctx context.Context, asks []limiter.LeaseAsk, now time.Time) ([]limiter.LeaseGrant, error) {
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	for i, a := range asks {
		if err := a.Validate(); err != nil {
			return nil, err
		}
		for _, b := range asks[:i] {
			if b.Key == a.Key {
				return nil, fmt.Errorf("redisstore: bucket %s leased twice in one call", a.Key)
			}
		}
	}
	if len(asks) == 0 {
		return []limiter.LeaseGrant{}, nil
	}
	groups := s.groupKeys(len(asks), func(i int) limiter.Key { return asks[i].Key })
	keys, args := make([][]string, len(groups)), make([][]any, len(groups))
	for i, g := range groups {
		keys[i], args[i] = leaseArgs(g.p, pick(asks, g.idx), now)
	}
	out := make([]limiter.LeaseGrant, len(asks))
	for i, cmd := range s.runEach(ctx, s.sc.lease, keys, args) {
		res, err := cmd.Slice()
		if err != nil {
			return nil, fmt.Errorf("redisstore: lease: %w", err)
		}
		gr, err := decodeLease(res, pick(asks, groups[i].idx))
		if err != nil {
			return nil, err
		}
		for j, k := range groups[i].idx {
			out[k] = gr[j]
		}
	}
	return out, nil
}

// leaseArgs are lease.lua's keys and arguments on the slot of prefix p.
func leaseArgs(p string, asks []limiter.LeaseAsk, now time.Time) ([]string, []any) {
	keys := make([]string, len(asks))
	args := make([]any, 0, 2+5*len(asks))
	args = append(args, micros(now), len(asks))
	for i, a := range asks {
		keys[i] = bucketKey(p, a.Key)
		args = append(args, a.Limit.Capacity, a.Limit.Refill, a.Limit.Den(), a.Want, a.Need)
	}
	return keys, args
}

func decodeLease(res []any, asks []limiter.LeaseAsk) ([]limiter.LeaseGrant, error) {
	if len(res) != 5*len(asks) {
		return nil, fmt.Errorf("redisstore: lease replied with %d values, want %d", len(res), 5*len(asks))
	}
	r := reply{v: res}
	out := make([]limiter.LeaseGrant, len(asks))
	for i, a := range asks {
		o := 5 * i
		g := limiter.LeaseGrant{Granted: r.int(o), Remaining: r.int(o + 1),
			ResetAfter: time.Duration(r.int(o+2)) * time.Microsecond, RetryAfter: time.Duration(r.int(o+3)) * time.Microsecond,
			Possible: r.int(o+4) == 1}
		if g.Granted < 0 || g.Granted > a.Want {
			r.err = fmt.Errorf("grant %d outside [0, %d]", g.Granted, a.Want)
		}
		out[i] = g
	}
	if r.err != nil {
		return nil, fmt.Errorf("redisstore: lease reply: %w", r.err)
	}
	return out, nil
}

// LeaseSlots sets a holder's leased slots of a client in one script call.
func (s *Store) LeaseSlots(ctx context.Context, l limiter.SlotLease, now time.Time) (held, inFlight int64, err error) {
	if err := ctx.Err(); err != nil {
		return 0, 0, err
	}
	if err := l.Validate(); err != nil {
		return 0, 0, err
	}
	res, err := s.sc.slots.Run(ctx, s.c, []string{slotKey(s.ownerP(l.Client), l.Client)}, micros(now), l.Holder, l.Want, l.Max, l.TTL.Microseconds()).Slice()
	if err != nil {
		return 0, 0, fmt.Errorf("redisstore: lease slots: %w", err)
	}
	if len(res) != 2 {
		return 0, 0, fmt.Errorf("redisstore: lease slots replied with %d values", len(res))
	}
	r := reply{v: res}
	held, inFlight = r.int(0), r.int(1)
	if r.err == nil && (held < 0 || held > l.Want || inFlight < held) {
		r.err = fmt.Errorf("held %d, in flight %d out of range", held, inFlight)
	}
	if r.err != nil {
		return 0, 0, fmt.Errorf("redisstore: lease slots reply: %w", r.err)
	}
	return held, inFlight, nil
}

// Book applies a batch of spend deltas exactly once in one script call
// (with Spread, one a tenant's slot, each remembering the batch there: a
// batch sent again after a failure part way is booked where it was not).
// It reports whether any of it was booked now.
func (s *Store) Book(ctx context.Context, batch string, deltas []limiter.SpendDelta) (bool, error) {
	if err := ctx.Err(); err != nil {
		return false, err
	}
	if err := limiter.ValidateBatch(batch, deltas); err != nil {
		return false, err
	}
	booked := false
	for _, g := range s.groupOwners(len(deltas), func(i int) string { return deltas[i].Owner }) {
		ok, err := s.bookOn(ctx, g.p, batch, pick(deltas, g.idx))
		if err != nil {
			return false, err
		}
		booked = booked || ok
	}
	return booked, nil
}

// bookOn runs book.lua on the slot of prefix p.
func (s *Store) bookOn(ctx context.Context, p, batch string, deltas []limiter.SpendDelta) (bool, error) {
	keys := make([]string, 0, 1+2*len(deltas))
	args := make([]any, 0, 1+2*len(deltas))
	keys = append(keys, journalKey(p, batch))
	args = append(args, len(deltas))
	saved := false
	for _, d := range deltas {
		keys = append(keys, budgetKey(p, d.Owner, d.Period))
		args = append(args, int64(d.Spent))
		saved = saved || len(d.Savings) > 0
	}
	if saved { // book.lua reads them after the deltas
		for _, d := range deltas {
			keys = append(keys, savingsKey(p, d.Owner, d.Period))
			args = appendSavings(args, d.Savings)
		}
	}
	n, err := s.sc.book.Run(ctx, s.c, keys, args...).Int()
	if err != nil {
		return false, fmt.Errorf("redisstore: book %s: %w", batch, err)
	}
	return n == 1, nil
}
