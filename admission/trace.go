package admission

import (
	"context"
	"time"

	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/codes"
	"go.opentelemetry.io/otel/trace"

	"github.com/tollgate/tollgate/internal/tracing"
	"github.com/tollgate/tollgate/limiter"
	"github.com/tollgate/tollgate/policy"
)

// Tracing: each store call made inside a sampled check or settle is a
// child span (tracedStore, wrapped around the store only when tracing is
// on), a held call's wait is a span from hold to its end (hold.go), and a
// settle is a span (settle.go). Spans carry codes and numbers, never a
// body, a header's value or a token.

// Span names of the service; docs/tracing.md lists them.
const (
	spanQueueWait = "tollgate.queue.wait"
	spanSettle    = "tollgate.settle"
)

// tracedStore is a Store whose calls are spans under the caller's span.
type tracedStore struct {
	Store
	tr *tracing.Tracer
}

func traceStore(st Store, tr *tracing.Tracer) Store {
	if !tr.On() {
		return st
	}
	return tracedStore{Store: st, tr: tr}
}

// traceLimiter is traceStore for the rate limit service's store.
func traceLimiter(st limiter.Store, tr *tracing.Tracer) limiter.Store {
	if !tr.On() {
		return st
	}
	return tracedLimiter{Store: st, tr: tr}
}

type tracedLimiter struct {
	limiter.Store
	tr *tracing.Tracer
}

func (t tracedLimiter) Reserve(ctx context.Context, req limiter.Request) (limiter.Decision, error) {
	return reserveSpan(ctx, t.tr, t.Store, req)
}

func reserveSpan(ctx context.Context, tr *tracing.Tracer, st limiter.Store, req limiter.Request) (limiter.Decision, error) {
	ctx, span := tr.Child(ctx, "tollgate.store.reserve")
	dec, err := st.Reserve(ctx, req)
	if span.IsRecording() {
		span.SetAttributes(attribute.Int("tollgate.store.buckets", len(req.Takes)),
			attribute.Bool("tollgate.store.allowed", dec.Allowed))
		if !dec.Allowed && err == nil {
			span.SetAttributes(attribute.String("tollgate.reason", string(dec.Reason)))
		}
		endSpan(span, err)
	}
	return dec, err
}

func (t tracedStore) Reserve(ctx context.Context, req limiter.Request) (limiter.Decision, error) {
	return reserveSpan(ctx, t.tr, t.Store, req)
}

func (t tracedStore) Finish(ctx context.Context, e limiter.Ending) (limiter.Settlement, error) {
	ctx, span := t.tr.Child(ctx, "tollgate.store.finish")
	st, err := t.Store.Finish(ctx, e)
	if span.IsRecording() {
		span.SetAttributes(attribute.String("tollgate.store.outcome", string(e.Outcome)),
			attribute.Int64("tollgate.store.actual_nano_usd", int64(e.Actual)),
			attribute.Int("tollgate.store.throttles", len(e.Throttles)), attribute.Bool("tollgate.store.repeat", st.Repeat))
		endSpan(span, err)
	}
	return st, err
}

func (t tracedStore) Settle(ctx context.Context, id string, actual policy.Money) (limiter.Settlement, error) {
	ctx, span := t.tr.Child(ctx, "tollgate.store.settle")
	st, err := t.Store.Settle(ctx, id, actual)
	endSpan(span, err)
	return st, err
}

func (t tracedStore) Release(ctx context.Context, id string) (limiter.Settlement, error) {
	ctx, span := t.tr.Child(ctx, "tollgate.store.release")
	st, err := t.Store.Release(ctx, id)
	endSpan(span, err)
	return st, err
}

func (t tracedStore) Refund(ctx context.Context, refunds []limiter.Refund, now time.Time) ([]limiter.BucketState, error) {
	ctx, span := t.tr.Child(ctx, "tollgate.store.refund")
	st, err := t.Store.Refund(ctx, refunds, now)
	if span.IsRecording() {
		span.SetAttributes(attribute.Int("tollgate.store.buckets", len(refunds)))
		endSpan(span, err)
	}
	return st, err
}

func (t tracedStore) Throttle(ctx context.Context, th []limiter.Throttle, now time.Time) ([]limiter.BucketState, error) {
	ctx, span := t.tr.Child(ctx, "tollgate.store.throttle")
	st, err := t.Store.Throttle(ctx, th, now)
	if span.IsRecording() {
		span.SetAttributes(attribute.Int("tollgate.store.throttles", len(th)))
		endSpan(span, err)
	}
	return st, err
}

func (t tracedStore) Book(ctx context.Context, batch string, deltas []limiter.SpendDelta) (bool, error) {
	ctx, span := t.tr.Child(ctx, "tollgate.store.book")
	applied, err := t.Store.Book(ctx, batch, deltas)
	endSpan(span, err)
	return applied, err
}

func (t tracedStore) Usage(ctx context.Context, period string, budgets []limiter.Budget, now time.Time) (limiter.Usage, error) {
	ctx, span := t.tr.Child(ctx, "tollgate.store.usage")
	u, err := t.Store.Usage(ctx, period, budgets, now)
	endSpan(span, err)
	return u, err
}

func (t tracedStore) Expire(ctx context.Context, now time.Time, max int) (int, error) {
	ctx, span := t.tr.Child(ctx, "tollgate.store.expire")
	n, err := t.Store.Expire(ctx, now, max)
	endSpan(span, err)
	return n, err
}

// endSpan marks a failed span and ends it. The error's text is Tollgate's
// own (a store's), never a body.
func endSpan(span trace.Span, err error) {
	if err != nil && span.IsRecording() {
		span.SetStatus(codes.Error, err.Error())
	}
	span.End()
}
