package main

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/spf13/cobra"

	"github.com/tollgate/tollgate/authz"
	"github.com/tollgate/tollgate/limiter/memstore"
	"github.com/tollgate/tollgate/policy"
	"github.com/tollgate/tollgate/policy/watch"
)

type serveFlags struct {
	authz           authz.Config
	policyPath      string
	logLevel        string
	logFormat       string
	shutdownTimeout time.Duration
}

func serveCmd() *cobra.Command {
	f := serveFlags{authz: authz.DefaultConfig()}
	cmd := &cobra.Command{
		Use:   "serve",
		Short: "Run the sidecar: ext_authz on gRPC, health and metrics on HTTP",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			return serve(cmd.Context(), f, cmd.ErrOrStderr())
		},
	}
	fl := cmd.Flags()
	fl.StringVar(&f.authz.GRPCAddr, "grpc-addr", f.authz.GRPCAddr, "gRPC listen address for Envoy (host:port or unix:///path)")
	fl.StringVar(&f.authz.HTTPAddr, "http-addr", f.authz.HTTPAddr, "admin HTTP listen address: /healthz /readyz /metrics /debug/policy")
	fl.StringVar(&f.authz.ClientHeader, "client-header", f.authz.ClientHeader, "request header that identifies the client")
	fl.DurationVar(&f.authz.DrainDelay, "drain-delay", f.authz.DrainDelay, "on shutdown, report NOT_SERVING this long before refusing new checks")
	fl.DurationVar(&f.shutdownTimeout, "shutdown-timeout", 15*time.Second, "on shutdown, wait this long for in-flight checks")
	fl.StringVar(&f.policyPath, "policy", "", "policy file or directory (default: the bundled policy); reloaded on change")
	fl.StringVar(&f.logLevel, "log-level", "info", "debug, info, warn or error")
	fl.StringVar(&f.logFormat, "log-format", "text", "text or json")
	return cmd
}

func serve(ctx context.Context, f serveFlags, stderr interface{ Write([]byte) (int, error) }) (err error) {
	log, err := newLogger(stderr, f.logLevel, f.logFormat)
	if err != nil {
		return err
	}
	reg := prometheus.NewRegistry()
	reg.MustRegister(
		collectors.NewGoCollector(),
		collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}),
		collectors.NewBuildInfoCollector(),
	)

	var wg sync.WaitGroup
	defer wg.Wait()
	runCtx, cancel := context.WithCancel(ctx)
	defer cancel()

	var policies authz.PolicySource
	if f.policyPath == "" {
		policies = authz.StaticPolicy{Set: policy.Default()}
		log.Info("using the bundled default policy", slog.String("policy", "bundled"))
	} else {
		w, err := watch.New(watch.DefaultConfig(f.policyPath), reg, log)
		if err != nil {
			return fmt.Errorf("policy %s: %w", f.policyPath, err)
		}
		wg.Add(1)
		go func() { defer wg.Done(); _ = w.Run(runCtx) }()
		policies = w
		log.Info("policy loaded; watching for changes", slog.String("policy", f.policyPath))
	}

	store, err := memstore.New(memstore.DefaultConfig())
	if err != nil {
		return err
	}
	defer func() { err = errors.Join(err, store.Close()) }()

	srv, err := authz.New(f.authz, authz.Deps{Policies: policies, Store: store, Registry: reg, Logger: log})
	if err != nil {
		return err
	}
	serveErr := make(chan error, 1)
	go func() { serveErr <- srv.Serve(runCtx) }()

	select {
	case err := <-serveErr:
		return err
	case <-ctx.Done():
	}
	log.Info("shutting down: draining in-flight checks", slog.Duration("drain_delay", f.authz.DrainDelay))
	sctx, scancel := context.WithTimeout(context.WithoutCancel(ctx), f.shutdownTimeout+f.authz.DrainDelay)
	defer scancel()
	err = errors.Join(srv.Shutdown(sctx), <-serveErr)
	if err == nil {
		log.Info("stopped")
	}
	return err
}
