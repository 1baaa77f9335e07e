package authz

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"time"

	"github.com/tollgate/tollgate/admission"
)

// backgroundLoop does the server's own work until Shutdown: every
// ExpireEvery it commits lapsed reservations at their estimate (deferred
// settlement), and books the spend of calls let through fail open once the
// store answers; every WatchEvery it refreshes the standing the alerts and
// their gauges read. While the store cannot do a task (Redis away), the
// task says so once, and once again when it works, rather than every tick.
func (s *Server) backgroundLoop(ctx context.Context) {
	defer close(s.loopDone)
	var expireC, watchC <-chan time.Time // nil: that task is off
	if s.cfg.ExpireEvery > 0 {
		t := time.NewTicker(s.cfg.ExpireEvery)
		defer t.Stop()
		expireC = t.C
	}
	if s.cfg.WatchEvery > 0 {
		t := time.NewTicker(s.cfg.WatchEvery)
		defer t.Stop()
		watchC = t.C
	}
	expire := s.cfg.Settlement == admission.SettleDeferred
	expiring := &failing{log: s.log, task: "expiring reservations", errors: s.m.backgroundErrors.WithLabelValues("expire")}
	booking := &failing{log: s.log, task: "booking the spend of calls let through fail open", errors: s.m.backgroundErrors.WithLabelValues("fail_open_book")}
	watching := &failing{log: s.log, task: "reading the alerts' standing from the store", errors: s.m.backgroundErrors.WithLabelValues("watch")}
	for {
		select {
		case <-s.stopLoop:
			return
		case <-watchC:
			_, err := s.round(ctx, func(ctx context.Context) (int, error) { return 0, s.svc.Refresh(ctx) })
			watching.observe(ctx, err)
		case <-expireC:
			if expire {
				n, err := s.round(ctx, func(ctx context.Context) (int, error) { return s.svc.Expire(ctx, 10_000) })
				expiring.observe(ctx, err)
				if n > 0 {
					s.log.Info("unsettled reservations committed at their estimate", slog.Int("count", n))
				}
			}
			_, err := s.round(ctx, func(ctx context.Context) (int, error) { return 0, s.svc.BookFailOpen(ctx) })
			booking.observe(ctx, err)
		}
	}
}

// round runs one task of a tick, bounded by the tick or a second, whichever
// is longer: a short interval (tests) must not turn a slow round into a
// failure, and the ticker drops the ticks it misses meanwhile.
func (s *Server) round(ctx context.Context, task func(context.Context) (int, error)) (int, error) {
	rctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), max(s.cfg.ExpireEvery, time.Second))
	defer cancel()
	return task(rctx)
}

// bookLeft books, when the server stops, the fail-open spend and the
// savings of answers from the cache the loop has not: what cannot be
// booked now is lost with the process, and the error says so.
func (s *Server) bookLeft(ctx context.Context) error {
	bctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 2*time.Second)
	defer cancel()
	var err error
	for bctx.Err() == nil {
		if n, _ := s.svc.FailOpenUnbooked(); n == 0 && !s.svc.CacheSavingsUnbooked() {
			return nil
		}
		if err = s.svc.BookFailOpen(bctx); err != nil { // the cache's savings too
			break
		}
	}
	n, _ := s.svc.FailOpenUnbooked()
	if n == 0 { // only what answers from the cache saved is left: no spend is lost
		s.log.LogAttrs(ctx, slog.LevelWarn, "savings of answers from the cache not booked: lost with this process", slog.Any("error", err))
		return fmt.Errorf("authz: savings of answers from the cache not booked: %w", errors.Join(err, bctx.Err()))
	}
	s.log.LogAttrs(ctx, slog.LevelError, "spend of calls let through fail open not booked: lost with this process",
		slog.Int("budget_periods", n), slog.Any("error", err))
	return fmt.Errorf("authz: spend of calls let through fail open not booked (%d budget periods): %w", n, errors.Join(err, bctx.Err()))
}

// counter is the part of a Prometheus counter failing uses.
type counter interface{ Inc() }

// failing follows a task a loop repeats that may fail for a while (its
// store away): it counts every failure, and logs the first one, with its
// error, and the recovery, with how long the task failed and how many
// attempts did, never each failure in between. Used by one goroutine.
type failing struct {
	log    *slog.Logger
	task   string // "expiring reservations": logged as "<task> failed"
	errors counter

	down     bool
	since    time.Time
	attempts int
}

func (f *failing) observe(ctx context.Context, err error) {
	switch {
	case err != nil && !f.down:
		f.errors.Inc()
		f.down, f.since, f.attempts = true, time.Now(), 1
		f.log.LogAttrs(ctx, slog.LevelWarn, f.task+" failed; logged again when it works", slog.Any("error", err))
	case err != nil:
		f.errors.Inc()
		f.attempts++
	case f.down:
		f.down = false
		f.log.LogAttrs(ctx, slog.LevelInfo, f.task+" works again", slog.Duration("failed_for", time.Since(f.since)),
			slog.Int("failed_attempts", f.attempts))
	}
}
