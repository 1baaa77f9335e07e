package redisstore

import (
	"context"
	_ "embed"
	"errors"
	"fmt"
	"strings"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/tollgate/tollgate/limiter"
)

var (
	_ limiter.BatchLeaser   = (*Store)(nil)
	_ limiter.BatchFinisher = (*Store)(nil)
)

var (
	//go:embed lease_batch.lua
	leaseBatchLua string
	//go:embed finish_batch.lua
	finishBatchLua string
)

// leaseBatchScript needs nothing of common.lua that Config changes (only
// DONE_TTL varies, and it keeps no outcome), so one script serves every
// Store.
var leaseBatchScript = redis.NewScript(commonLua + leaseBatchLua)

func init() { Scripts["lease_batch"] = leaseBatchScript } // loaded ahead with the others

// maxBatchKeys bounds the keys of one lease_batch call, so that one call
// never holds Redis for long; a larger batch is split (still atomic per
// ask, as a batch of one would be).
const maxBatchKeys = 256

// LeaseBatch refreshes bucket leases and slot leases in one script call
// per hash tag (per Redis Cluster slot) and per maxBatchKeys keys: each is
// answered as Lease and LeaseSlots would answer it alone.
func (s *Store) LeaseBatch(ctx context.Context, asks []limiter.LeaseAsk, slots []limiter.SlotLease, now time.Time) ([]limiter.LeaseGrant, []limiter.SlotGrant, error) {
	if err := ctx.Err(); err != nil {
		return nil, nil, err
	}
	type group struct{ asks, slots []int }
	cur := map[string]*group{} // by hash tag: the group being filled
	var order []*group
	at := func(key string) *group {
		t := slotTag(key)
		g := cur[t]
		if g == nil || len(g.asks)+len(g.slots) >= maxBatchKeys { // none yet, or full: a new one
			g = &group{}
			cur[t] = g
			order = append(order, g)
		}
		return g
	}
	seen := map[limiter.Key]bool{}
	for i, a := range asks {
		if err := a.Validate(); err != nil {
			return nil, nil, err
		}
		if seen[a.Key] {
			return nil, nil, fmt.Errorf("redisstore: bucket %s leased twice in one call", a.Key)
		}
		seen[a.Key] = true
		g := at(bucketKey(s.keyP(a.Key), a.Key))
		g.asks = append(g.asks, i)
	}
	clients := map[string]bool{}
	for j, l := range slots {
		if err := l.Validate(); err != nil {
			return nil, nil, err
		}
		if clients[l.Client] {
			return nil, nil, fmt.Errorf("redisstore: slots of %q leased twice in one call", l.Client)
		}
		clients[l.Client] = true
		g := at(slotKey(s.ownerP(l.Client), l.Client))
		g.slots = append(g.slots, j)
	}
	grants := make([]limiter.LeaseGrant, len(asks))
	held := make([]limiter.SlotGrant, len(slots))
	for _, g := range order {
		if err := s.leaseGroup(ctx, asks, slots, g.asks, g.slots, now, grants, held); err != nil {
			return nil, nil, err
		}
	}
	return grants, held, nil
}

// leaseGroup runs lease_batch.lua for the asks and slot leases at the
// given indexes (keys of one hash slot) and fills their answers.
func (s *Store) leaseGroup(ctx context.Context, asks []limiter.LeaseAsk, slots []limiter.SlotLease, ai, si []int, now time.Time,
	grants []limiter.LeaseGrant, held []limiter.SlotGrant) error {
	if err := ctx.Err(); err != nil { // one more round trip: the caller may have given up
		return err
	}
	keys := make([]string, 0, len(ai)+len(si))
	args := make([]any, 0, 3+5*len(ai)+4*len(si))
	args = append(args, micros(now), len(ai), len(si))
	sub := make([]limiter.LeaseAsk, len(ai))
	for k, i := range ai {
		a := asks[i]
		sub[k] = a
		keys = append(keys, bucketKey(s.keyP(a.Key), a.Key))
		args = append(args, a.Limit.Capacity, a.Limit.Refill, a.Limit.Den(), a.Want, a.Need)
	}
	for _, j := range si {
		l := slots[j]
		keys = append(keys, slotKey(s.ownerP(l.Client), l.Client))
		args = append(args, l.Holder, l.Want, l.Max, l.TTL.Microseconds())
	}
	res, err := leaseBatchScript.Run(ctx, s.c, keys, args...).Slice()
	if err != nil {
		return fmt.Errorf("redisstore: lease batch: %w", err)
	}
	if len(res) != 5*len(ai)+2*len(si) {
		return fmt.Errorf("redisstore: lease batch replied with %d values, want %d", len(res), 5*len(ai)+2*len(si))
	}
	g, err := decodeLease(res[:5*len(ai)], sub)
	if err != nil {
		return err
	}
	for k, i := range ai {
		grants[i] = g[k]
	}
	r := reply{v: res[5*len(ai):]}
	for k, j := range si {
		h, f := r.int(2*k), r.int(2*k+1)
		if r.err == nil && (h < 0 || h > slots[j].Want || f < h) {
			r.err = fmt.Errorf("held %d, in flight %d out of range", h, f)
		}
		held[j] = limiter.SlotGrant{Held: h, InFlight: f}
	}
	if r.err != nil {
		return fmt.Errorf("redisstore: lease batch reply: %w", r.err)
	}
	return nil
}

// slotTag is the part of a key Redis Cluster hashes: what its first
// {…} holds when not empty, else the whole key. Keys of one tag share a
// slot, so one script may touch them all.
func slotTag(key string) string {
	if i := strings.IndexByte(key, '{'); i >= 0 {
		if j := strings.IndexByte(key[i+1:], '}'); j > 0 {
			return key[i+1 : i+1+j]
		}
	}
	return key
}

// FinishBatch ends plain endings (limiter.Ending.Plain) in one script call
// per hash tag and per maxBatchKeys/2 endings: each as Finish would.
func (s *Store) FinishBatch(ctx context.Context, endings []limiter.Ending) ([]limiter.Settlement, []error, error) {
	if err := ctx.Err(); err != nil {
		return nil, nil, err
	}
	if s.spread {
		return s.finishEach(ctx, endings)
	}
	cur := map[string][]int{}
	var order []string
	for i, e := range endings {
		if err := e.Validate(); err != nil {
			return nil, nil, err
		}
		if !e.Plain() {
			return nil, nil, fmt.Errorf("redisstore: ending %q gives back or books beside: finish it alone", e.ID)
		}
		t := slotTag(recordKey(s.p, e.ID))
		if len(cur[t]) == 0 {
			order = append(order, t)
		}
		cur[t] = append(cur[t], i)
	}
	sts := make([]limiter.Settlement, len(endings))
	errs := make([]error, len(endings))
	for _, t := range order {
		idx := cur[t]
		for len(idx) > 0 {
			n := min(len(idx), maxBatchKeys/2)
			if err := s.finishGroup(ctx, endings, idx[:n], sts, errs); err != nil {
				return nil, nil, err
			}
			idx = idx[n:]
		}
	}
	return sts, errs, nil
}

// finishGroup runs finish_batch.lua for the endings at idx.
func (s *Store) finishGroup(ctx context.Context, endings []limiter.Ending, idx []int, sts []limiter.Settlement, errs []error) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	keys := make([]string, 0, 1+2*len(idx))
	keys = append(keys, expiryKey(s.p))
	args := make([]any, 0, 2+3*len(idx))
	args = append(args, s.p, len(idx))
	for _, i := range idx {
		e := endings[i]
		keys = append(keys, recordKey(s.p, e.ID), doneKey(s.p, e.ID))
		args = append(args, e.ID, string(e.Outcome), int64(e.Actual))
	}
	res, err := s.sc.finishBatch.Run(ctx, s.c, keys, args...).Slice()
	if err != nil {
		return fmt.Errorf("redisstore: finish batch: %w", err)
	}
	if len(res) != 2*len(idx) {
		return fmt.Errorf("redisstore: finish batch replied with %d values, want %d", len(res), 2*len(idx))
	}
	r := reply{v: res}
	for k, i := range idx {
		e := endings[i]
		if r.int(2*k) == -1 {
			errs[i] = fmt.Errorf("%w: %q", limiter.ErrUnknownReservation, e.ID)
			continue
		}
		st := parseRecord(e.ID, r.str(2*k+1), &r)
		st.Repeat = r.int(2*k) == 1
		sts[i] = st
	}
	if r.err != nil {
		return fmt.Errorf("redisstore: finish batch reply: %w", r.err)
	}
	return nil
}

// finishEach is FinishBatch with Spread: a reservation's slot is its
// tenant's, found from its locator by Finish, so each ending is finished
// alone (validated as a batch first).
func (s *Store) finishEach(ctx context.Context, endings []limiter.Ending) ([]limiter.Settlement, []error, error) {
	for _, e := range endings {
		if err := e.Validate(); err != nil {
			return nil, nil, err
		}
		if !e.Plain() {
			return nil, nil, fmt.Errorf("redisstore: ending %q gives back or books beside: finish it alone", e.ID)
		}
	}
	sts := make([]limiter.Settlement, len(endings))
	errs := make([]error, len(endings))
	for i, e := range endings {
		st, err := s.Finish(ctx, e)
		switch {
		case err == nil:
			sts[i] = st
		case errors.Is(err, limiter.ErrUnknownReservation):
			errs[i] = err
		default:
			return nil, nil, err
		}
	}
	return sts, errs, nil
}
