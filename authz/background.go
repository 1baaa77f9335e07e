package authz

import (
	"context"
	"log/slog"
	"time"

	"github.com/tollgate/tollgate/admission"
)

// expireLoop commits lapsed reservations at their estimate until Shutdown.
// While the store cannot do it (Redis away), it says so once, and once
// again when it works, rather than every tick.
func (s *Server) expireLoop(ctx context.Context) {
	defer close(s.expiryDone)
	if s.cfg.ExpireEvery <= 0 || s.cfg.Settlement == admission.SettleImmediate {
		<-s.stopExpiry
		return
	}
	t := time.NewTicker(s.cfg.ExpireEvery)
	defer t.Stop()
	expiring := &failing{log: s.log, task: "expiring reservations", errors: s.m.backgroundErrors.WithLabelValues("expire")}
	for {
		select {
		case <-s.stopExpiry:
			return
		case <-t.C:
			// A tick's work may take longer than a short interval (tests);
			// the ticker drops the ticks it misses meanwhile.
			ectx, cancel := context.WithTimeout(context.WithoutCancel(ctx), max(s.cfg.ExpireEvery, time.Second))
			n, err := s.svc.Expire(ectx, 10_000)
			cancel()
			expiring.observe(ctx, err)
			if n > 0 {
				s.log.Info("unsettled reservations committed at their estimate", slog.Int("count", n))
			}
		}
	}
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
