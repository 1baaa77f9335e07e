package redisstore

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"sync"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/tollgate/tollgate/limiter"
)

// HealthConfig configures a Health.
type HealthConfig struct {
	// Every is how often Run probes.
	Every time.Duration
	// Timeout bounds one probe (the client's own timeouts bound each
	// attempt within it).
	Timeout time.Duration
	// Clock dates the changes it reports (nil: the system clock).
	Clock  limiter.Clock
	Logger *slog.Logger
}

// DefaultHealthConfig probes every second, each probe bounded by a second.
func DefaultHealthConfig() HealthConfig {
	return HealthConfig{Every: time.Second, Timeout: time.Second}
}

// Validate reports a configuration that cannot work.
func (c HealthConfig) Validate() error {
	if c.Every <= 0 || c.Timeout <= 0 {
		return errors.New("redisstore: health probe interval and timeout must be positive")
	}
	return nil
}

// Health follows whether Redis answers: it PINGs it when asked (Probe) and
// every HealthConfig.Every (Run), and remembers what it found, for
// readiness and metrics. Each change is logged once — Redis not reachable
// at start, unreachable, reachable again with how long it was away and how
// many probes failed — never each failed probe. Safe for concurrent use.
type Health struct {
	c   redis.UniversalClient
	cfg HealthConfig
	log *slog.Logger

	mu sync.Mutex
	st HealthState
}

// HealthState is what the probes found.
type HealthState struct {
	// Probed: at least one probe has finished.
	Probed bool
	// Reachable: the last probe had Redis's answer.
	Reachable bool
	// Reached: some probe since start had Redis's answer.
	Reached bool
	// Since is when Reachable took its value (the first probe's time, or
	// the change's).
	Since time.Time
	// Failed counts the probes failed since Since (0 while reachable).
	Failed int
	// Err is the last probe's error while Redis is unreachable.
	Err error
}

// String describes the state for /readyz: "ok", or since when and why
// Redis does not answer.
func (s HealthState) String() string {
	switch {
	case !s.Probed:
		return "not probed yet"
	case s.Reachable:
		return "ok"
	case !s.Reached:
		return fmt.Sprintf("not reached since start (%s, %d failed probes): %v", s.Since.UTC().Format(time.RFC3339), s.Failed, s.Err)
	}
	return fmt.Sprintf("unreachable since %s (%d failed probes): %v", s.Since.UTC().Format(time.RFC3339), s.Failed, s.Err)
}

// NewHealth follows the Redis that c talks to. Nothing is probed until
// Probe or Run.
func NewHealth(c redis.UniversalClient, cfg HealthConfig) (*Health, error) {
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	if c == nil {
		return nil, errors.New("redisstore: nil client")
	}
	if cfg.Clock == nil {
		cfg.Clock = limiter.SystemClock{}
	}
	log := cfg.Logger
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	return &Health{c: c, cfg: cfg, log: log.With(slog.String("component", "redis"))}, nil
}

// State returns what the probes found so far.
func (h *Health) State() HealthState {
	h.mu.Lock()
	defer h.mu.Unlock()
	return h.st
}

// Probe PINGs Redis once (within Timeout and ctx), records the answer and
// returns its error.
func (h *Health) Probe(ctx context.Context) error {
	pctx, cancel := context.WithTimeout(ctx, h.cfg.Timeout)
	err := h.c.Ping(pctx).Err()
	cancel()
	if err != nil && ctx.Err() != nil {
		return err // the caller gave up (shutdown): not Redis's answer
	}
	h.record(err)
	return err
}

// record notes one probe's result and logs a change.
func (h *Health) record(err error) {
	now := h.cfg.Clock.Now()
	h.mu.Lock()
	prev := h.st
	st := prev
	st.Probed, st.Reachable = true, err == nil
	switch {
	case err == nil:
		st.Reached, st.Failed, st.Err = true, 0, nil
	case prev.Probed && !prev.Reachable:
		st.Failed, st.Err = prev.Failed+1, err
	default:
		st.Failed, st.Err = 1, err
	}
	if !prev.Probed || prev.Reachable != st.Reachable {
		st.Since = now
	}
	h.st = st
	h.mu.Unlock()

	ctx := context.Background()
	switch {
	case err != nil && !prev.Probed:
		h.log.LogAttrs(ctx, slog.LevelWarn, "redis not reachable yet", slog.Any("error", err))
	case err != nil && prev.Reachable:
		h.log.LogAttrs(ctx, slog.LevelWarn, "redis unreachable", slog.Any("error", err))
	case err == nil && prev.Probed && !prev.Reachable && !prev.Reached:
		h.log.LogAttrs(ctx, slog.LevelInfo, "redis reachable", slog.Duration("after", now.Sub(prev.Since)), slog.Int("failed_probes", prev.Failed))
	case err == nil && prev.Probed && !prev.Reachable:
		h.log.LogAttrs(ctx, slog.LevelInfo, "redis reachable again", slog.Duration("down_for", now.Sub(prev.Since)), slog.Int("failed_probes", prev.Failed))
	}
}

// Run probes every Every until ctx ends.
func (h *Health) Run(ctx context.Context) {
	t := time.NewTicker(h.cfg.Every)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
			_ = h.Probe(ctx) // recorded and logged
		}
	}
}
