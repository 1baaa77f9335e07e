package admission

import (
	"context"
	"fmt"
	"log/slog"
	"slices"
	"strings"
	"time"

	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/trace"

	"github.com/tollgate/tollgate/limiter"
	"github.com/tollgate/tollgate/limiter/queue"
	"github.com/tollgate/tollgate/policy"
)

// Holding: a call that cannot be admitted now, and whose class may wait,
// waits in the line of whatever blocks it (a pool's bucket, its client's
// bucket, its client's concurrency slots) until the line lets it go. The
// queue (limiter/queue) orders and wakes; this file decides who waits, and
// makes each attempt on the waiter's behalf.

// attempt is what one try at admission found.
type attempt struct {
	dec limiter.Decision
	err error
	// req is the request dec answers: the call's, or on a pool split by
	// reservations the alternative tried last (see alternatives.go).
	req limiter.Request
}

// bucketLine names the line of a bucket; slotLine the line of a client's
// concurrency slots. Both are parsed back by lineLabel.
func bucketLine(k limiter.Key) string { return "b:" + k.String() }
func slotLine(client string) string   { return "c:" + client }

// lineLabel turns a line's key into its bounded metric label (the pool, or
// "concurrency") and its description for people.
func LineLabel(key string) (pool, desc string) {
	switch {
	case strings.HasPrefix(key, "c:"):
		return "concurrency", fmt.Sprintf("concurrency slots of client %q", key[2:])
	case strings.HasPrefix(key, "b:"):
		p, c, ok := splitKey(key[2:])
		if !ok {
			return "unknown", key
		}
		if policy.IsReservedKey(c) {
			return p, fmt.Sprintf("pool %s, reserved part %s", p, c[len(policy.ReservedKeyPrefix):])
		}
		if c != "" {
			return p, fmt.Sprintf("pool %s, client %q", p, c)
		}
		return p, "pool " + p
	}
	return "unknown", key
}

// splitKey reverses limiter.Key.String ("len:pool:len:client").
func splitKey(s string) (pool, client string, ok bool) {
	part := func(s string) (string, string, bool) {
		n, rest, found := strings.Cut(s, ":")
		var k int
		if _, err := fmt.Sscanf(n, "%d", &k); err != nil || !found || k < 0 || k > len(rest) {
			return "", "", false
		}
		return rest[:k], strings.TrimPrefix(rest[k:], ":"), true
	}
	pool, rest, ok := part(s)
	if !ok {
		return "", "", false
	}
	client, _, ok = part(rest)
	return pool, client, ok
}

// firstLine is the line a call held for the off-peak window joins: its
// first bucket's.
func firstLine(req limiter.Request) string {
	if len(req.Takes) > 0 {
		return bucketLine(req.Takes[0].Key)
	}
	if h := req.Hold; h != nil && h.Slot != nil {
		return slotLine(h.Slot.Client)
	}
	return "none"
}

// unitsFor is what a call takes from line's resource, for fairness.
func unitsFor(line string, takes []limiter.Take) int64 {
	for _, t := range takes {
		if bucketLine(t.Key) == line {
			return t.Cost
		}
	}
	return 1
}

// waitable reports whether a denial may be waited out.
func waitable(dec limiter.Decision) bool {
	return dec.Reason == limiter.ReasonRateLimited || dec.Reason == limiter.ReasonConcurrency
}

// lineOf is the line a denial waits in.
func lineOf(dec limiter.Decision, req limiter.Request) string {
	if dec.Reason == limiter.ReasonConcurrency && req.Hold != nil && req.Hold.Slot != nil {
		return slotLine(req.Hold.Slot.Client)
	}
	if dec.Blocking >= 0 && dec.Blocking < len(req.Takes) {
		return bucketLine(req.Takes[dec.Blocking].Key)
	}
	return ""
}

// busyLine returns the first line, among those of the call's buckets and
// slots, that holds waiters: the call queues behind them instead of trying
// first, so that it cannot take what a better waiter is waiting for.
func (s *Service) busyLine(req limiter.Request) string {
	for _, t := range req.Takes {
		if k := bucketLine(t.Key); s.queue.Busy(k) {
			return k
		}
	}
	if h := req.Hold; h != nil && h.Slot != nil && !h.Commit {
		if k := slotLine(h.Slot.Client); s.queue.Busy(k) {
			return k
		}
	}
	return ""
}

// held is what a wait in the queue came to.
type held struct {
	res  queue.Result[attempt]
	line string
}

// hold waits in line for p's request to be admitted, trying on the
// waiter's behalf.
func (s *Service) hold(ctx context.Context, line string, r *Request, client *policy.Client, p *plan, units int64) held {
	pc := *p // the caller's plan takes the granted alternative once the wait ends
	ctx, span := s.tr.Child(ctx, spanQueueWait)
	w := &queue.Waiter[attempt]{
		ID: r.ID, Client: client.ID, Class: p.class, Points: client.Tier.Priority + p.cp.Urgency, Units: units,
		Deadline: p.deadline, NotBefore: p.notBefore, MaxDepth: p.cp.MaxDepth,
		Try: func(ctx context.Context) queue.Attempt[attempt] {
			if span.IsRecording() { // the queue tries on its own goroutine: its store calls belong to the wait
				ctx = trace.ContextWithSpan(ctx, span)
			}
			dec, req, err := s.reserve(ctx, &pc)
			a := queue.Attempt[attempt]{Value: attempt{dec, err, req}}
			switch {
			case err != nil:
				a.Final = true
			case dec.Allowed:
				a.Granted = true
			case waitable(dec):
				a.Key, a.RetryAfter = lineOf(dec, req), dec.RetryAfter
				if dec.Reason == limiter.ReasonConcurrency {
					a.RetryAfter = 0 // until a slot is given back
				}
			default:
				a.Final = true
			}
			return a
		},
		Undo: func(ctx context.Context, a attempt) { s.undo(ctx, a.req, a.dec) },
	}
	res := s.queue.Wait(ctx, line, w)
	if span.IsRecording() {
		pool, _ := LineLabel(line)
		span.SetAttributes(attribute.String("tollgate.queue.pool", pool), attribute.String("tollgate.class", p.class.String()),
			attribute.String("tollgate.queue.outcome", string(res.Outcome)), attribute.Int64("tollgate.queue.waited_ms", res.Waited.Milliseconds()))
	}
	span.End()
	return held{res: res, line: line}
}

// undo gives back what a grant took for a call that is gone: its hold (its
// budgets' reservation and its slot) and its buckets' units.
func (s *Service) undo(ctx context.Context, req limiter.Request, dec limiter.Decision) {
	ctx = context.WithoutCancel(ctx)
	var lines []string
	for _, t := range req.Takes {
		lines = appendLines(lines, t.Key)
	}
	if h := req.Hold; h != nil && !h.Commit {
		// One step: the money and slot back, and every bucket's units (the
		// store recorded what the grant charged; the call never went out).
		e := limiter.Ending{ID: h.ID, Outcome: limiter.OutcomeReleased}
		for _, t := range req.Takes {
			if !slices.ContainsFunc(e.Used, func(u limiter.PoolUse) bool { return u.Pool == t.Key.Pool }) {
				e.Used = append(e.Used, limiter.PoolUse{Pool: t.Key.Pool})
			}
		}
		if _, err := s.store.Finish(ctx, e); err != nil {
			s.log.LogAttrs(ctx, slog.LevelWarn, "a grant for a call that left was not released; it lapses at its TTL",
				slog.String("reservation", h.ID), slog.Any("error", err))
		}
		if h.Slot != nil {
			lines = append(lines, slotLine(h.Slot.Client))
		}
	} else {
		back := make([]limiter.Refund, 0, len(req.Takes))
		for _, c := range limiter.Charged(req.Takes, dec) {
			if c.Units > 0 {
				back = append(back, limiter.Refund{Key: c.Key, Limit: c.Limit, Units: c.Units})
			}
		}
		if len(back) > 0 {
			if _, err := s.store.Refund(ctx, back, time.Time{}); err != nil {
				s.log.LogAttrs(ctx, slog.LevelWarn, "units of a call that left were not returned", slog.Any("error", err))
			}
		}
	}
	s.queue.Kick(lines...)
}

// appendLines adds the lines to kick when units come back to bucket k:
// its own, and for a reserved part also the shared part's, where
// borrowers wait (see alternatives.go).
func appendLines(lines []string, k limiter.Key) []string {
	lines = append(lines, bucketLine(k))
	if policy.IsReservedKey(k.Client) {
		lines = append(lines, bucketLine(limiter.Key{Pool: k.Pool}))
	}
	return lines
}

// recordGrant feeds a grant to the queue's fairness: what the client took
// from each pool.
func (s *Service) recordGrant(client string, req limiter.Request) {
	for _, t := range req.Takes {
		if (t.Key.Client == "" || policy.IsReservedKey(t.Key.Client)) && t.Cost > 0 {
			s.queue.Record(bucketLine(t.Key), client, t.Cost)
		}
	}
}

// QueueLine is one line in GET /api/queue/status.
type QueueLine struct {
	Queue   string                      `json:"queue"`
	Pool    string                      `json:"pool"`
	Classes map[string]queue.ClassStats `json:"classes"`
}

// QueueStatus answers GET /api/queue/status.
type QueueStatus struct {
	Total  int         `json:"total"`
	Parked int         `json:"parked_for_off_peak"`
	Lines  []QueueLine `json:"lines"`
}

// QueueStatus describes the hold queue now.
func (s *Service) QueueStatus() QueueStatus {
	st := s.queue.Status()
	out := QueueStatus{Total: st.Total, Parked: st.Parked, Lines: []QueueLine{}}
	for _, l := range st.Lines {
		pool, desc := LineLabel(l.Key)
		out.Lines = append(out.Lines, QueueLine{Queue: desc, Pool: pool, Classes: l.Classes})
	}
	return out
}

// QueueEntry is one held call in GET /api/queue.
type QueueEntry = queue.Entry

// QueueList lists every held call, line by line, each line best first;
// lines are named for people.
func (s *Service) QueueList() []QueueEntry {
	list := s.queue.List()
	for i := range list {
		_, list[i].Key = LineLabel(list[i].Key)
	}
	return list
}

// QueuePosition reports where the held call with id stands: its queue id,
// or a request id (then the earliest held call with it).
func (s *Service) QueuePosition(id string) (queue.Position, bool) {
	p, ok := s.queue.Position(id)
	if ok {
		_, p.Key = LineLabel(p.Key)
	}
	return p, ok
}

// QueueRemove takes the held call with id (a queue id, or a request id: then
// the earliest held call with it) out of the queue (it is refused with
// removed_from_queue); false when no such call is held.
func (s *Service) QueueRemove(id string) bool { return s.queue.Remove(id) }

// QueueLen is how many calls the hold queue holds now.
func (s *Service) QueueLen() int { return s.queue.Len() }

// QueueBusy is how many of the queue's lines are letting waiters go now.
func (s *Service) QueueBusy() int { return s.queue.Dispatching() }
