// Package admission is Tollgate's service: it resolves a call to its route,
// client and class, estimates it, plans what the limiter must reserve,
// reserves or holds it in the queue, and gives a Verdict in codes and
// numbers; when the call's response comes back it settles it (see Call).
// It sits between the transport (authz), which turns Envoy's messages into
// Requests and renders Verdicts, and the stores, cluster and queue below.
// Nothing here sees an Envoy type, an HTTP status or a worker-facing
// sentence.
package admission

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"log/slog"
	"sync/atomic"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/tollgate/tollgate/costing"
	"github.com/tollgate/tollgate/internal/tracing"
	"github.com/tollgate/tollgate/limiter"
	"github.com/tollgate/tollgate/limiter/queue"
	"github.com/tollgate/tollgate/limiter/respcache"
	"github.com/tollgate/tollgate/policy"
)

// PolicySource yields the policy in force. Policy is called once per
// decision, must be cheap and safe for concurrent use, and never returns nil.
type PolicySource interface {
	Policy() *policy.Set
}

// StaticPolicy is a PolicySource that never changes.
type StaticPolicy struct{ Set *policy.Set }

// Policy returns the set.
func (s StaticPolicy) Policy() *policy.Set { return s.Set }

// Store is what admission needs of a limiter store: admissions (Reserve),
// the ledger of budgets and reservations, corrections of buckets, ending a
// reservation in one step, and booking spend decided without it. The memory, Redis and cluster stores implement
// it all; a store that lacks a capability fails to compile where it is
// wired, never silently at run time. Every method is safe for concurrent
// use and honours ctx.
type Store interface {
	limiter.Store
	limiter.Ledger
	limiter.Adjuster
	limiter.Finisher
	// Booker books the spend of calls let through fail open, once the
	// store answers again (BookFailOpen).
	limiter.Booker
	// Peeker decides without deciding: the API's dry-run check and
	// availability (check.go).
	limiter.Peeker
	// Historian reads history and cost records, which Finish books
	// (history.go).
	limiter.Historian
}

// Settlement says how an admitted call's spend is booked.
type Settlement int

const (
	// SettleImmediate commits the estimate at admission: for deployments
	// with nothing that reports a call's end (no ext_proc, no API call).
	// Concurrency caps need to know when calls end, so they are not
	// enforced in this mode.
	SettleImmediate Settlement = iota
	// SettleDeferred holds the estimate and a concurrency slot under a
	// reservation id (sent upstream to ext_proc) until the call is settled
	// or released (ext_proc, or the HTTP API), or its TTL lapses.
	SettleDeferred
)

// ParseSettlement reads "immediate" or "deferred".
func ParseSettlement(s string) (Settlement, error) {
	switch s {
	case "immediate":
		return SettleImmediate, nil
	case "deferred":
		return SettleDeferred, nil
	}
	return 0, fmt.Errorf("settlement %q: want immediate or deferred", s)
}

func (s Settlement) String() string {
	if s == SettleDeferred {
		return "deferred"
	}
	return "immediate"
}

// Config configures a Service.
type Config struct {
	// Settlement picks how admitted calls are booked.
	Settlement Settlement
	// CacheMaxEntry bounds the body of an answer the cache keeps, beside
	// each rule's max_entry_bytes (0: the rules' alone).
	CacheMaxEntry int64
}

// Deps are the collaborators a Service uses; it does not own them (the
// caller closes the store).
type Deps struct {
	Policies PolicySource
	Store    Store
	// Registerer receives the service's metrics.
	Registerer prometheus.Registerer
	Logger     *slog.Logger
	// Clock picks budget periods and dates reservations; nil is the system
	// clock. A clock with timers (queue.Clock) drives the hold queue too.
	Clock limiter.Clock
	// Cache keeps upstream answers for the policy's cache rules (the
	// caller closes it); nil: no response cache and no idempotency, the
	// rules are ignored.
	Cache respcache.Cache
	// Tracer traces store calls, held calls' waits and settles under the
	// transport's spans; nil: tracing off.
	Tracer *tracing.Tracer
	// DecisionLog, when set, receives every decision and settle (see
	// DecisionLog); nil logs nothing.
	DecisionLog DecisionLog
}

// Service runs admissions and settles them. It is safe for concurrent use.
type Service struct {
	policies PolicySource
	store    Store
	est      costing.Estimator
	log      *slog.Logger
	m        *metrics
	settle   Settlement
	clock    limiter.Clock
	newID    func() string
	pending  *pendingTable
	queue    *queue.Queue[attempt]
	settler  *settler
	pauses   *pauseBook
	pressure pressureBook // budget pressure per client, for optimize rules
	flex     flexBook     // models whose flex tier the provider refused lately
	failOpen *failOpenBook
	book     *observeBook // calls settled this period, for the optimize API
	refusals refusals     // the last refused calls, for the status page
	watch    *watch       // the standing alerts and their gauges read
	dlog     DecisionLog  // nil: no decision log

	tr            *tracing.Tracer // nil: tracing off
	cache         respcache.Cache // nil: none
	cacheMaxEntry int64
	cacheSavings  *savingsBook // cached answers' savings, booked each second

	// Store errors come in floods when the store is down: log one a second
	// and count the rest into it.
	errLogAt   atomic.Int64 // Unix ns of the last logged store error
	errSkipped atomic.Int64
}

// New builds a Service. Its metrics are registered all or none: a failed
// New leaves the registry as it was.
func New(cfg Config, deps Deps) (*Service, error) {
	if deps.Policies == nil || deps.Store == nil || deps.Registerer == nil {
		return nil, errors.New("admission: Deps needs Policies, Store and Registerer")
	}
	if deps.Logger == nil {
		deps.Logger = slog.New(slog.DiscardHandler)
	}
	if deps.Clock == nil {
		deps.Clock = limiter.SystemClock{}
	}
	s := &Service{policies: deps.Policies, store: traceStore(deps.Store, deps.Tracer), tr: deps.Tracer, log: deps.Logger, settle: cfg.Settlement,
		clock: deps.Clock, newID: newReservationID, pending: newPendingTable(), pauses: newPauseBook(),
		failOpen: newFailOpenBook(newReservationID()), cache: deps.Cache, cacheMaxEntry: cfg.CacheMaxEntry,
		cacheSavings: newSavingsBook(newReservationID()),
		book:         newObserveBook(maxObservedClients, maxObservedKeys), watch: newWatch(deps.Clock.Now()),
		dlog: deps.DecisionLog}
	tok, err := costing.SharedTokenizer()
	if err != nil { // a broken build: LLM calls fall back to the size-based estimate
		s.log.Error("tokenizer unavailable; estimating LLM calls from their size", slog.Any("error", err))
	}
	s.est = costing.Estimator{Tok: tok, Learner: costing.NewLearner()}
	qclock, ok := s.clock.(queue.Clock) // a clock with timers (the fake one in tests) drives the queue too
	if !ok {
		qclock = queue.SystemClock{}
	}
	var qm *queueMetrics
	s.queue = queue.New[attempt](queue.Config{
		Clock:  qclock,
		Policy: func() policy.Queue { return s.policies.Policy().Queue },
		OnStarving: func(id, line string, class policy.Class, waited time.Duration) {
			qm.starving.WithLabelValues(class.String()).Inc()
			_, desc := LineLabel(line)
			s.log.LogAttrs(context.Background(), slog.LevelWarn, "a call has waited past the starvation alert",
				slog.String("request_id", id), slog.String("queue", desc), slog.String("class", class.String()), slog.Duration("waited", waited))
		},
		OnExit: func(_ string, class policy.Class, o queue.Outcome, waited time.Duration) {
			qm.exits.WithLabelValues(class.String(), string(o)).Inc()
			qm.wait.WithLabelValues(class.String(), string(o)).Observe(waited.Seconds())
		},
	})
	if s.m, qm, err = newMetrics(deps.Registerer, s.queue, tok, s.failOpen, s.watch); err != nil {
		return nil, errors.Join(err, s.queue.Close())
	}
	s.settler = &settler{store: s.store, pending: s.pending, policies: s.policies, clock: s.clock, m: s.m,
		learner: s.est.Learner, log: s.log, kick: s.queue.Kick, kickAll: s.queue.KickAll, pauses: s.pauses, failOpen: s.failOpen,
		flex: &s.flex, book: s.book, watch: s.watch, tr: s.tr, dlog: s.dlog}
	return s, nil
}

// Close ends every wait in the hold queue (the calls are told Tollgate is
// shutting down) and waits for attempts in flight.
func (s *Service) Close() error { return s.queue.Close() }

// Settlement reports how the Service books calls.
func (s *Service) Settlement() Settlement { return s.settle }

// Estimator is the estimator admissions use.
func (s *Service) Estimator() costing.Estimator { return s.est }

// Policy is the policy in force.
func (s *Service) Policy() *policy.Set { return s.policies.Policy() }

// SweepPending forgets admitted calls whose reservation lapsed unsettled
// (the store commits them at their estimate), and returns how many.
func (s *Service) SweepPending() int { return s.pending.sweep(s.clock.Now()) }

// Pending is how many admitted calls await settling.
func (s *Service) Pending() int { return s.pending.len() }

// Expire commits up to max reservations past their TTL at their estimate,
// counts them, and lets held calls retry (lapsed reservations gave slots
// back). It returns how many it ended.
func (s *Service) Expire(ctx context.Context, max int) (int, error) {
	s.SweepPending()
	n, err := s.store.Expire(ctx, time.Time{}, max)
	if n > 0 {
		s.m.expired.Add(float64(n))
		s.queue.KickAll()
	}
	return n, err
}

// newReservationID returns 128 random bits in hex.
func newReservationID() string {
	var b [16]byte
	_, _ = rand.Read(b[:]) // crypto/rand.Read never fails
	return hex.EncodeToString(b[:])
}

func (s *Service) logStoreError(ctx context.Context, requestID string, err error) {
	now := time.Now().UnixNano()
	last := s.errLogAt.Load()
	if now-last < int64(time.Second) || !s.errLogAt.CompareAndSwap(last, now) {
		s.errSkipped.Add(1)
		return
	}
	s.log.LogAttrs(ctx, slog.LevelError, "limiter store failed", slog.String("request_id", requestID),
		slog.Any("error", err), slog.Int64("similar_errors_not_logged", s.errSkipped.Swap(0)))
}
