package main

import (
	"errors"
	"fmt"
	"log/slog"
	"sync/atomic"

	"github.com/tollgate/tollgate/policy/rls"
)

// rlsConfig is the envoyproxy/ratelimit config the RLS service decides on
// (serve --rls-config): loaded at start, reloaded on SIGHUP; a config that
// fails to load is logged and the old one stays in force.
type rlsConfig struct {
	dir string
	log *slog.Logger
	cur atomic.Pointer[rls.Config]
}

func loadRLSConfig(dir string, log *slog.Logger) (*rlsConfig, error) {
	c := &rlsConfig{dir: dir, log: log}
	conf, err := rls.Load(dir)
	if err != nil {
		return nil, fmt.Errorf("rls config %s: %w", dir, err)
	}
	c.cur.Store(conf)
	log.Info("rate limit service config loaded", slog.String("rls_config", dir), slog.Int("domains", conf.Domains()), slog.Int("rules", len(conf.Rules)))
	return c, nil
}

// RateLimitConfig returns the config in force.
func (c *rlsConfig) RateLimitConfig() *rls.Config { return c.cur.Load() }

// Reload loads the directory again.
func (c *rlsConfig) Reload() error {
	conf, err := rls.Load(c.dir)
	if err != nil {
		c.log.Error("rate limit service config reload failed; the previous config stays in force", slog.String("rls_config", c.dir), slog.Any("error", err))
		return err
	}
	c.cur.Store(conf)
	c.log.Info("rate limit service config reloaded", slog.String("rls_config", c.dir), slog.Int("domains", conf.Domains()), slog.Int("rules", len(conf.Rules)))
	return nil
}

// alsoReload runs both reloads (either may be nil), joining their errors.
func alsoReload(a, b func() error) func() error {
	switch {
	case a == nil:
		return b
	case b == nil:
		return a
	}
	return func() error { return errors.Join(a(), b()) }
}
