package redisstore

import (
	"context"
	"errors"
	"fmt"
	"sort"
	"strconv"
	"strings"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/tollgate/tollgate/limiter"
	"github.com/tollgate/tollgate/policy"
)

var _ limiter.Historian = (*Store)(nil)

// historyKey holds a client's history of one month: a hash whose fields
// are length-prefixed route and model, then the measure (n calls, c cost,
// i and o tokens, s saved), kept exact by HINCRBY.
func (s *Store) historyKey(client, month string) string {
	return s.ownerP(client) + "h:" + lenPrefixed(client) + ":" + month
}

// costKey holds one call's cost record. With Spread it has a slot of its
// own, found by the request id alone (GET /api/cost/{requestId} names no
// client).
func (s *Store) costKey(requestID string) string {
	if s.spread {
		return "{" + s.prefix + ":q:" + hashTag(requestID) + "}:q:" + requestID
	}
	return s.p + "q:" + requestID
}

// costOnce writes a cost record unless its request id has one: the first
// call to book an id keeps it (a worker that sends another's x-request-id
// cannot overwrite it), as finish.lua and record.lua do.
var costOnce = redis.NewScript(`if redis.call('EXISTS', KEYS[1]) == 1 then return 0 end
redis.call('HSET', KEYS[1], unpack(ARGV, 2))
redis.call('PEXPIRE', KEYS[1], ARGV[1])
return 1`)

// costAfter writes the cost record of a call finished with Spread, whose
// finish script could not (the record's slot is not the tenant's): one more
// round trip, best effort — a failure loses the record, never the spend,
// and is counted with the lost refunds.
func (s *Store) costAfter(ctx context.Context, e limiter.Ending, st limiter.Settlement) {
	rec := e.Record
	at := e.Now
	if at.IsZero() {
		at = time.Now()
	}
	k := s.costKey(rec.RequestID)
	ctx = context.WithoutCancel(ctx)
	err := costOnce.Run(ctx, s.c, []string{k}, s.costTTL.Milliseconds(),
		"client", rec.Client, "route", rec.Route, "model", rec.Model, "outcome", string(st.Outcome),
		"estimate", int64(rec.Estimate), "actual", int64(st.Spent), "saved", int64(rec.Saved),
		"in", rec.InputTokens, "out", rec.OutputTokens, "at", at.UnixMicro()).Err()
	if errors.Is(err, redis.Nil) {
		err = nil
	}
	if err != nil {
		s.lost.Add(1)
	}
}

// appendRecord adds finish.lua's call-record arguments.
func (s *Store) appendRecord(args []any, rec *limiter.CallRecord) []any {
	if rec == nil {
		return append(args, 0, "", "", 0, 0, 0, 0, 0, 0, "", "")
	}
	return append(args, 1, rec.Route, rec.Model, rec.InputTokens, rec.OutputTokens, int64(rec.Estimate), int64(rec.Saved),
		int64(s.histTTL/time.Second), s.costTTL.Milliseconds(), rec.RequestID, rec.Client)
}

// History reads the client's months, one HGETALL each, pipelined in one
// round trip.
func (s *Store) History(ctx context.Context, client string, months []string) ([]limiter.HistoryRow, error) {
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	pipe := s.c.Pipeline()
	cmds := make([]*redis.MapStringStringCmd, len(months))
	for i, m := range months {
		cmds[i] = pipe.HGetAll(ctx, s.historyKey(client, m))
	}
	if _, err := pipe.Exec(ctx); err != nil && !errors.Is(err, redis.Nil) {
		return nil, fmt.Errorf("redisstore: history of %q: %w", client, err)
	}
	var out []limiter.HistoryRow
	for i, m := range months {
		rows, err := parseHistory(m, cmds[i].Val())
		if err != nil {
			return nil, fmt.Errorf("redisstore: history of %q, %s: %w", client, m, err)
		}
		out = append(out, rows...)
	}
	return out, nil
}

// parseHistory turns one month's hash into rows by route and model.
func parseHistory(month string, h map[string]string) ([]limiter.HistoryRow, error) {
	type rk struct{ route, model string }
	by := map[rk]*limiter.HistoryRow{}
	for field, v := range h {
		route, rest, ok1 := cutPrefixed(field)
		model, measure, ok2 := cutPrefixed(rest)
		n, err := strconv.ParseInt(v, 10, 64)
		if !ok1 || !ok2 || err != nil || len(measure) != 2 || measure[0] != ':' {
			return nil, fmt.Errorf("field %q = %q is not a history entry", field, v)
		}
		row := by[rk{route, model}]
		if row == nil {
			row = &limiter.HistoryRow{Month: month, Route: route, Model: model}
			by[rk{route, model}] = row
		}
		switch measure[1] {
		case 'n':
			row.Calls = n
		case 'c':
			row.Cost = policy.Money(n)
		case 'i':
			row.InputTokens = n
		case 'o':
			row.OutputTokens = n
		case 's':
			row.Saved = policy.Money(n)
		default:
			return nil, fmt.Errorf("field %q: unknown measure", field)
		}
	}
	out := make([]limiter.HistoryRow, 0, len(by))
	for _, r := range by {
		out = append(out, *r)
	}
	sort.Slice(out, func(i, j int) bool {
		if out[i].Route != out[j].Route {
			return out[i].Route < out[j].Route
		}
		return out[i].Model < out[j].Model
	})
	return out, nil
}

// cutPrefixed reads one "len:text" off s.
func cutPrefixed(s string) (text, rest string, ok bool) {
	n, after, found := strings.Cut(s, ":")
	k, err := strconv.Atoi(n)
	if !found || err != nil || k < 0 || k > len(after) {
		return "", "", false
	}
	return after[:k], after[k:], true
}

// CostRecord reads a call's cost record.
func (s *Store) CostRecord(ctx context.Context, requestID string) (limiter.CostRecord, error) {
	if err := ctx.Err(); err != nil {
		return limiter.CostRecord{}, err
	}
	h, err := s.c.HGetAll(ctx, s.costKey(requestID)).Result()
	if err != nil {
		return limiter.CostRecord{}, fmt.Errorf("redisstore: cost record %q: %w", requestID, err)
	}
	if len(h) == 0 {
		return limiter.CostRecord{}, limiter.ErrNoCostRecord
	}
	num := func(k string) int64 {
		n, perr := strconv.ParseInt(h[k], 10, 64)
		if perr != nil && err == nil {
			err = fmt.Errorf("field %s = %q is not an integer", k, h[k])
		}
		return n
	}
	rec := limiter.CostRecord{RequestID: requestID, Client: h["client"], Route: h["route"], Model: h["model"],
		Outcome: limiter.Outcome(h["outcome"]), Estimate: policy.Money(num("estimate")), Actual: policy.Money(num("actual")),
		Saved: policy.Money(num("saved")), InputTokens: num("in"), OutputTokens: num("out"), At: time.UnixMicro(num("at")).UTC()}
	if err != nil {
		return limiter.CostRecord{}, fmt.Errorf("redisstore: cost record %q: %w", requestID, err)
	}
	return rec, nil
}

var _ limiter.Recorder = (*Store)(nil)

// Record books a batch of calls ended elsewhere in one script call.
func (s *Store) Record(ctx context.Context, batch string, ends []limiter.RecordedEnd) (bool, error) {
	if err := ctx.Err(); err != nil {
		return false, err
	}
	if err := limiter.ValidateRecordBatch(batch, ends); err != nil {
		return false, err
	}
	if s.spread {
		return s.recordSpread(ctx, batch, ends)
	}
	return s.recordOn(ctx, s.p, batch, ends)
}

// historyAfter books the history of a call finished with Spread whose
// record names a client of another tenant than the reservation's slot, in
// that client's slot, once (the batch is named for the reservation). Best
// effort, as costAfter: a failure loses the history row, never the spend.
func (s *Store) historyAfter(ctx context.Context, e limiter.Ending, st limiter.Settlement, rec *limiter.CallRecord) {
	at := e.Now
	if at.IsZero() {
		at = time.Now()
	}
	end := limiter.RecordedEnd{Record: *rec, Outcome: st.Outcome, Spent: st.Spent, At: at}
	if _, err := s.recordOn(context.WithoutCancel(ctx), s.ownerP(rec.Client), "f:"+e.ID, []limiter.RecordedEnd{end}); err != nil {
		s.lost.Add(1)
	}
}

// recordSpread books a batch with Spread: one record script per tenant
// slot (each once per batch by its own marker), then the cost records in
// their own slots. It reports the batch applied when any part was.
func (s *Store) recordSpread(ctx context.Context, batch string, ends []limiter.RecordedEnd) (bool, error) {
	applied := false
	for _, g := range s.groupOwners(len(ends), func(i int) string { return ends[i].Record.Client }) {
		part := make([]limiter.RecordedEnd, len(g.idx))
		for j, i := range g.idx {
			part[j] = ends[i]
			part[j].Record.RequestID = "" // written below, in its own slot
		}
		ok, err := s.recordOn(ctx, g.p, batch, part)
		if err != nil {
			return applied, err
		}
		if !ok {
			continue
		}
		applied = true
		for _, i := range g.idx {
			if e := ends[i]; e.Record.RequestID != "" {
				s.costAfter(ctx, limiter.Ending{Record: &e.Record, Now: e.At}, limiter.Settlement{Outcome: e.Outcome, Spent: e.Spent})
			}
		}
	}
	return applied, nil
}

// recordOn runs the record script for ends on the slot of prefix p.
func (s *Store) recordOn(ctx context.Context, p, batch string, ends []limiter.RecordedEnd) (bool, error) {
	marker := p + "jr:" + batch
	keys := make([]string, 0, 1+2*len(ends))
	keys = append(keys, marker)
	args := make([]any, 0, 3+11*len(ends))
	args = append(args, len(ends), int64(s.histTTL/time.Second), s.costTTL.Milliseconds())
	for i := range ends {
		e := &ends[i]
		ck := marker
		if e.Record.RequestID != "" {
			ck = s.costKey(e.Record.RequestID)
		}
		keys = append(keys, s.historyKey(e.Record.Client, e.Record.Month), ck)
		args = append(args, string(e.Outcome), int64(e.Spent), e.Record.Route, e.Record.Model, e.Record.InputTokens, e.Record.OutputTokens,
			int64(e.Record.Estimate), int64(e.Record.Saved), e.Record.RequestID, e.Record.Client, e.At.UnixMicro())
	}
	n, err := s.sc.record.Run(ctx, s.c, keys, args...).Int64()
	if err != nil {
		return false, fmt.Errorf("redisstore: record batch %s: %w", batch, err)
	}
	return n == 1, nil
}
