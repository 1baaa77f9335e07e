package main

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"os/signal"
	"sync"
	"syscall"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/redis/go-redis/v9"
	"github.com/spf13/cobra"

	"github.com/tollgate/tollgate/admission"
	"github.com/tollgate/tollgate/admission/decisionlog"
	"github.com/tollgate/tollgate/authz"
	"github.com/tollgate/tollgate/cluster"
	"github.com/tollgate/tollgate/internal/metricset"
	"github.com/tollgate/tollgate/internal/pki"
	"github.com/tollgate/tollgate/internal/tracing"
	"github.com/tollgate/tollgate/limiter"
	"github.com/tollgate/tollgate/limiter/memstore"
	"github.com/tollgate/tollgate/limiter/redisstore"
	"github.com/tollgate/tollgate/limiter/respcache"
	"github.com/tollgate/tollgate/policy"
	"github.com/tollgate/tollgate/policy/watch"
)

type serveFlags struct {
	authz           authz.Config
	store           string
	redis           redisstore.ClientConfig
	redisPrefix     string
	redisSpread     bool
	ended           memstore.EndedLimits
	historyMonths   int
	costTTL         time.Duration
	stateDir        string
	settle          string
	policyPath      string
	logLevel        string
	logFormat       string
	shutdownTimeout time.Duration
	cluster         clusterFlags
	apiTokenFile    string
	rlsConfig       string
	cacheBytes      int64
	cacheMaxEntry   int64
	ca              caFlags
	tracing         tracing.Config
	decisionLog     string
	decisionLogCfg  decisionlog.Config
}

func serveCmd(getenv func(string) string) *cobra.Command {
	f := serveFlags{authz: authz.DefaultConfig(), redis: redisstore.DefaultClientConfig(), ended: memstore.DefaultEnded,
		ca: caFlags{cfg: pki.DefaultConfig()}, tracing: tracing.DefaultConfig(), decisionLogCfg: decisionlog.DefaultConfig()}
	cmd := &cobra.Command{
		Use:   "serve",
		Short: "Run the sidecar: ext_authz on gRPC, health and metrics on HTTP",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			tok, err := apiToken(f.apiTokenFile, getenv)
			if err != nil {
				return err
			}
			f.authz.APIToken = tok
			return serve(cmd.Context(), f, cmd.ErrOrStderr())
		},
	}
	fl := cmd.Flags()
	fl.StringVar(&f.authz.GRPCAddr, "grpc-addr", f.authz.GRPCAddr, "gRPC listen address for Envoy (host:port or unix:///path)")
	fl.StringVar(&f.authz.HTTPAddr, "http-addr", f.authz.HTTPAddr, "health and metrics HTTP listen address, open: /healthz /readyz /metrics")
	fl.StringVar(&f.authz.APIAddr, "api-addr", f.authz.APIAddr, "JSON API listen address, every endpoint behind the API token: /api/... /debug/...")
	fl.StringVar(&f.authz.AuthzHTTPAddr, "authz-http-addr", "", "ext_authz over HTTP (Envoy's http_service form, envoy/sidecar-http.yaml) listen address; off when empty")
	apiTokenFlag(fl, &f.apiTokenFile, "the API requires (without one the API refuses every call)")
	fl.StringVar(&f.authz.ClientHeader, "client-header", f.authz.ClientHeader, "request header that identifies the client")
	fl.StringVar(&f.authz.Client, "client", "", "pin the client id of every call (the header and Envoy's context extension are ignored): one sidecar per worker")
	fl.DurationVar(&f.authz.DrainDelay, "drain-delay", f.authz.DrainDelay, "on shutdown, report NOT_SERVING this long before refusing new checks")
	fl.DurationVar(&f.shutdownTimeout, "shutdown-timeout", 15*time.Second, "on shutdown, wait this long for in-flight checks")
	fl.StringVar(&f.policyPath, "policy", "", "policy file or directory (default: the bundled policy); reloaded on change")
	fl.StringVar(&f.store, "store", "memory", "limiter store: memory (this process only) or redis (shared by every sidecar)")
	fl.StringVar(&f.settle, "settle", "deferred", "deferred: hold a call's estimate (and a concurrency slot) until ext_proc settles it from the response; immediate: book the estimate at admission (for Envoy without ext_proc)")
	fl.StringSliceVar(&f.redis.Addrs, "redis-addr", f.redis.Addrs, "Redis address(es): the server, the sentinels, or cluster seeds")
	fl.StringVar(&f.redis.Mode, "redis-mode", f.redis.Mode, "single, sentinel or cluster")
	fl.StringVar(&f.redis.MasterName, "redis-master", "", "sentinel master name")
	fl.StringVar(&f.redis.Username, "redis-username", "", "Redis ACL user")
	fl.StringVar(&f.redis.Password, "redis-password", "", "Redis password (prefer TOLLGATE_REDIS_PASSWORD)")
	fl.IntVar(&f.redis.DB, "redis-db", 0, "Redis database number")
	fl.BoolVar(&f.redis.TLS, "redis-tls", false, "connect to Redis over TLS")
	fl.StringVar(&f.redis.TLSCAFile, "redis-tls-ca", "", "PEM CA bundle for Redis TLS (default: system roots)")
	fl.StringVar(&f.redis.TLSServer, "redis-tls-server-name", "", "server name to verify for Redis TLS")
	fl.IntVar(&f.redis.PoolSize, "redis-pool-size", 0, "Redis connections per node (0: 10 per CPU)")
	fl.DurationVar(&f.redis.DialTimeout, "redis-dial-timeout", f.redis.DialTimeout, "Redis connect timeout")
	fl.DurationVar(&f.redis.ReadTimeout, "redis-read-timeout", f.redis.ReadTimeout, "Redis read timeout")
	fl.DurationVar(&f.redis.WriteTimeout, "redis-write-timeout", f.redis.WriteTimeout, "Redis write timeout")
	fl.StringVar(&f.redisPrefix, "redis-prefix", redisstore.DefaultConfig().Prefix, "key prefix and hash tag: fleets sharing a Redis use distinct prefixes")
	fl.BoolVar(&f.redisSpread, "redis-spread", false, "spread keys over a Redis Cluster's slots: a hash tag per tenant (the root of a client's parent chain) and per shared pool, instead of one for the prefix (docs/redis.md#redis-cluster); state kept under the other layout is not read")
	fl.DurationVar(&f.ended.Retention, "ended-retention", f.ended.Retention, "keep the outcome of an ended reservation this long, so a repeated settle is recognised (both stores; whole seconds up to 168h on Redis)")
	fl.DurationVar(&f.authz.WatchEvery, "watch-every", f.authz.WatchEvery, "read the pools, watched budgets and forecasts behind the gauges and alerts this often (0: only when GET /admin/alerts or the status page asks)")
	fl.IntVar(&f.historyMonths, "history-months", limiter.DefaultHistoryMonths, "keep each client's usage history (by month, route and model) this many months after its last call (both stores)")
	fl.DurationVar(&f.costTTL, "cost-record-ttl", limiter.DefaultCostTTL, "keep each call's cost record (GET /api/cost/{requestId}) this long (both stores; whole seconds up to 2160h)")
	fl.IntVar(&f.ended.MaxCount, "ended-max", f.ended.MaxCount, "memory store: keep at most this many ended reservations' outcomes, forgetting the oldest first")
	fl.Int64Var(&f.ended.MaxBytes, "ended-max-bytes", f.ended.MaxBytes, "memory store: keep at most this many bytes (estimated) of ended reservations' outcomes")
	fl.Int64Var(&f.cacheBytes, "cache-bytes", respcache.DefaultMaxBytes, "response cache: bytes of answers kept in this process for the policy's cache rules (0: no cache, no idempotency)")
	fl.Int64Var(&f.cacheMaxEntry, "cache-max-entry", respcache.DefaultMaxEntryBytes, "response cache: the largest answer kept, in bytes (each cache rule's max_entry_bytes may say less)")
	fl.StringVar(&f.stateDir, "state-dir", "", "memory store: keep budgets' spend across restarts in a journal in this directory (default: off, spend lives in this process only)")
	fl.StringVar(&f.rlsConfig, "rls-config", "", "envoyproxy/ratelimit config for the rate limit service (ShouldRateLimit, on the gRPC port): its runtime directory, RUNTIME_ROOT/RUNTIME_SUBDIRECTORY, whose config/*.yaml are read; reloaded on SIGHUP")
	fl.BoolVar(&f.authz.RateLimitHeaders.Enabled, "rls-response-headers", false, "rate limit service: add RateLimit-Limit, RateLimit-Remaining and RateLimit-Reset to responses (envoyproxy/ratelimit's LIMIT_RESPONSE_HEADERS_ENABLED)")
	fl.StringVar(&f.tracing.Endpoint, "otlp-endpoint", "", "OpenTelemetry: send spans to this OTLP/gRPC collector, host:port; tracing is off when empty (OTEL_EXPORTER_OTLP_ENDPOINT does not turn it on; docs/tracing.md)")
	fl.Float64Var(&f.tracing.SampleRatio, "trace-sample", f.tracing.SampleRatio, "OpenTelemetry: share of traces started here that are kept, 0 to 1; a call whose Envoy span is sampled (or not) follows it")
	fl.BoolVar(&f.tracing.Insecure, "otlp-insecure", false, "OpenTelemetry: send spans without TLS (a collector on the node or in the pod)")
	fl.StringVar(&f.decisionLog, "decision-log", "", "append one JSON line per decision and per settle to this file, for `tollgate replay` (no body, no header; docs/replay.md); off when empty")
	fl.IntVar(&f.decisionLogCfg.Buffer, "decision-log-buffer", f.decisionLogCfg.Buffer, "decision log: records waiting for the writer at most; beyond, records are dropped and counted, never waited for")
	fl.Int64Var(&f.decisionLogCfg.MaxBytes, "decision-log-max-bytes", f.decisionLogCfg.MaxBytes, "decision log: rotate the file to FILE.1 when it would pass this size (0: never)")
	f.cluster.register(fl)
	// Transparent mode (docs/transparent.md): with --ca-dir, serve keeps
	// the pod-local CA's leaves for the hosts its policy routes, made
	// before it reports ready (so Envoy, started after it, finds them).
	f.ca.register(fl, "ca-")
	fl.StringVar(&f.logLevel, "log-level", "info", "debug, info, warn or error")
	fl.StringVar(&f.logFormat, "log-format", "text", "text or json")
	return cmd
}

func serve(ctx context.Context, f serveFlags, stderr interface{ Write([]byte) (int, error) }) (err error) {
	log, err := newLogger(stderr, f.logLevel, f.logFormat)
	if err != nil {
		return err
	}
	reg, err := newRegistry()
	if err != nil {
		return err
	}

	// SIGHUP reloads the policy; caught first, so that one arriving while
	// the server starts does not kill it (its default action).
	hup := make(chan os.Signal, 1)
	signal.Notify(hup, syscall.SIGHUP)
	defer signal.Stop(hup)

	var wg sync.WaitGroup
	defer wg.Wait()
	runCtx, cancel := context.WithCancel(ctx)
	defer cancel()

	var policies admission.PolicySource
	var reload func() error // nil for the bundled policy
	if f.policyPath == "" {
		policies = admission.StaticPolicy{Set: policy.Default()}
		log.Info("using the bundled default policy", slog.String("policy", "bundled"))
	} else {
		w, err := watch.New(watch.DefaultConfig(f.policyPath), reg, log)
		if err != nil {
			return fmt.Errorf("policy %s: %w", f.policyPath, err)
		}
		wg.Add(1)
		go func() { defer wg.Done(); _ = w.Run(runCtx) }()
		policies = w
		reload = w.Reload
		log.Info("policy loaded; watching for changes", slog.String("policy", f.policyPath))
	}
	var rateLimits admission.RateLimitSource
	if f.rlsConfig != "" {
		rc, err := loadRLSConfig(f.rlsConfig, log)
		if err != nil {
			return err
		}
		rateLimits, reload = rc, alsoReload(reload, rc.Reload)
	}
	wg.Add(1)
	go func() { defer wg.Done(); onHangup(runCtx, hup, reload, log) }()
	if f.ca.cfg.Dir != "" {
		if err := startCA(runCtx, &wg, f.ca, policies, log); err != nil {
			return err
		}
	}

	if f.authz.Settlement, err = admission.ParseSettlement(f.settle); err != nil {
		return err
	}
	st, err := openStore(ctx, f, budgetRoot(policies), reg, log)
	if err != nil {
		return err
	}
	defer func() { err = errors.Join(err, st.close()) }()

	cache, err := openCache(f, st, reg, log)
	if err != nil {
		return err
	}
	if cache != nil { // closed before the store's Redis client, which its L2 uses
		defer func() { err = errors.Join(err, cache.Close()) }()
	}
	f.authz.CacheMaxEntry = f.cacheMaxEntry
	var dlog admission.DecisionLog
	if f.decisionLog != "" {
		cfg := f.decisionLogCfg
		cfg.Policy, cfg.Settlement = cmp.Or(f.policyPath, "bundled"), f.authz.Settlement.String()
		w, err := decisionlog.Open(f.decisionLog, cfg, reg, log)
		if err != nil {
			return err
		}
		// Closed after the server has stopped deciding: every decision
		// and settle is flushed.
		defer func() { err = errors.Join(err, w.Close()) }()
		dlog = w
		log.Info("writing the decision log", slog.String("decision_log", f.decisionLog), slog.Int64("rotate_at_bytes", cfg.MaxBytes))
	}
	tr, err := openTracing(ctx, f.tracing, log)
	if err != nil {
		return err
	}
	// Flushed after the server's shutdown, so that the settles of calls
	// drained at shutdown are among the spans sent.
	defer func() { err = errors.Join(err, closeTracing(tr)) }()
	srv, err := authz.New(f.authz, authz.Deps{Policies: policies, Store: st.store, Registry: reg, Logger: log,
		Checks: st.checks, Degraded: st.degraded, Cluster: st.cluster, RateLimits: rateLimits, Cache: cache, DecisionLog: dlog, Tracer: tr})
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

// onHangup reloads the policy on each SIGHUP until ctx ends. A reload that
// fails is logged and counted by the watcher, and the old policy stays: a
// hangup never stops the server.
func onHangup(ctx context.Context, hup <-chan os.Signal, reload func() error, log *slog.Logger) {
	for {
		select {
		case <-ctx.Done():
			return
		case <-hup:
			if reload == nil {
				log.Info("SIGHUP: nothing to reload: the bundled default policy is in force", slog.String("policy", "bundled"))
				continue
			}
			log.Info("SIGHUP: reloading the policy")
			_ = reload() // logged and counted by the watcher
		}
	}
}

// openedStore is the limiter store the flags ask for, what /readyz and
// /api/cluster report of it, and how it is released.
type openedStore struct {
	store    admission.Store
	redis    redis.UniversalClient // nil for the memory store
	fleet    *cluster.Fleet        // nil outside a fleet
	checks   map[string]func(context.Context) error
	degraded map[string]func() string
	cluster  func() any
	close    func() error
}

// budgetRoot is the root of an owner's budget chain in the policy in
// force (the owner itself when the policy does not know it): a spread
// Redis store's tenant. A reload that gives a client another root moves its
// keys to that tenant's slot.
func budgetRoot(src admission.PolicySource) func(owner string) string {
	return func(owner string) string {
		c, ok := src.Policy().Client(owner)
		if !ok {
			return owner
		}
		for range 64 { // policy refuses loops; bounded all the same
			if c.Parent == nil {
				break
			}
			c = c.Parent
		}
		return c.ID
	}
}

// openStore builds the limiter store the flags ask for; tenant names a
// spread Redis store's tenants.
func openStore(ctx context.Context, f serveFlags, tenant func(string) string, reg prometheus.Registerer, log *slog.Logger) (openedStore, error) {
	if f.stateDir != "" && f.store != "memory" {
		return openedStore{}, errors.New("--state-dir is for --store memory: Redis keeps its own state")
	}
	if f.redisSpread && f.store != "redis" {
		return openedStore{}, errors.New("--redis-spread is for --store redis")
	}
	if f.cluster.enabled && f.store != "redis" {
		return openedStore{}, errors.New("--cluster needs --store redis: the fleet shares its limits in Redis")
	}
	switch f.store {
	case "memory":
		cfg := memstore.DefaultConfig()
		cfg.Ended, cfg.StateDir, cfg.HistoryMonths, cfg.CostTTL = f.ended, f.stateDir, f.historyMonths, f.costTTL
		s, err := memstore.New(cfg)
		if err != nil {
			return openedStore{}, err
		}
		if f.stateDir == "" {
			log.Info("budgets are kept in this process only: a restart forgets their spend (set --state-dir to keep it)")
		} else {
			rep := s.Replayed()
			log.Info("budgets restored from the state directory", slog.String("state_dir", f.stateDir),
				slog.Int("budgets", rep.Budgets), slog.Int("committed_in_flight", rep.Committed), slog.Bool("torn_last_line", rep.Torn))
		}
		if err := registerEnded(s, reg); err != nil {
			return openedStore{}, errors.Join(err, s.Close())
		}
		log.Info("limiter store: memory (this process only)", slog.Duration("ended_retention", f.ended.Retention),
			slog.Int("ended_max", f.ended.MaxCount), slog.Int64("ended_max_bytes", f.ended.MaxBytes))
		return openedStore{store: s, close: s.Close}, nil
	case "redis":
		redis.SetLogger(redisLog{log.With(slog.String("component", "redis"))}) // go-redis has only a global logger
		client, err := redisstore.NewClient(f.redis)
		if err != nil {
			return openedStore{}, err
		}
		scfg := redisstore.Config{Prefix: f.redisPrefix, DoneRetention: f.ended.Retention, Spread: f.redisSpread,
			HistoryMonths: f.historyMonths, CostTTL: f.costTTL}
		if f.redisSpread {
			scfg.Tenant = tenant
		}
		s, err := redisstore.New(client, scfg)
		if err != nil {
			return openedStore{}, errors.Join(err, client.Close())
		}
		// Not fatal: Redis may come up after us. Health says so on /readyz
		// (and logs it) meanwhile, and each check follows the policy's
		// store_unavailable (or, in a fleet, outage mode).
		hcfg := redisstore.DefaultHealthConfig()
		hcfg.Logger = log
		health, err := redisstore.NewHealth(client, hcfg)
		if err != nil {
			return openedStore{}, errors.Join(err, client.Close())
		}
		if health.Probe(ctx) == nil {
			lctx, cancel := context.WithTimeout(ctx, f.redis.DialTimeout+f.redis.ReadTimeout)
			if err := s.Load(lctx); err != nil {
				log.Warn("redis scripts not loaded ahead of use; each loads on its first call", slog.Any("error", err))
			}
			cancel()
		}
		rt := &redisstore.RoundTrips{}
		client.AddHook(rt)
		if err := registerHealth(health, rt, s, reg); err != nil {
			return openedStore{}, errors.Join(err, client.Close())
		}
		log.Info("limiter store: redis", slog.Any("addrs", f.redis.Addrs), slog.String("mode", f.redis.Mode), slog.String("prefix", f.redisPrefix),
			slog.Bool("spread", f.redisSpread))
		checks := map[string]func(context.Context) error{"redis": redisReady(health, f.cluster.enabled)}
		if !f.cluster.enabled {
			stop := probeEvery(health)
			return openedStore{store: s, redis: client, checks: checks, close: func() error { stop(); return client.Close() }}, nil
		}
		fleet, stopKeys, err := f.cluster.joinFleet(s, reg, log)
		if err != nil {
			return openedStore{}, errors.Join(err, client.Close())
		}
		stop := probeEvery(health)
		// A member whose Redis is away still decides: degraded, not unready.
		return openedStore{
			store:    fleet.Store,
			redis:    client,
			fleet:    fleet,
			checks:   checks,
			degraded: map[string]func() string{"cluster": degraded(fleet)},
			cluster:  func() any { return fleet.Status() },
			close: func() error {
				stop()
				stopKeys()
				return errors.Join(leave(fleet, 5*time.Second), client.Close())
			},
		}, nil
	}
	return openedStore{}, fmt.Errorf("store %q: want memory or redis", f.store)
}

// registerEnded exports what the memory store keeps of ended reservations.
func registerEnded(s *memstore.Store, reg prometheus.Registerer) error {
	var set metricset.Set
	set.GaugeFunc(prometheus.GaugeOpts{
		Name: "tollgate_store_ended_reservations",
		Help: "Outcomes of ended reservations the memory store keeps for repeated settles.",
	}, func() float64 { return float64(s.Ended().Kept) })
	set.GaugeFunc(prometheus.GaugeOpts{
		Name: "tollgate_store_ended_reservations_bytes",
		Help: "Estimated bytes of the outcomes of ended reservations the memory store keeps.",
	}, func() float64 { return float64(s.Ended().Bytes) })
	set.CounterFunc(prometheus.CounterOpts{
		Name: "tollgate_store_ended_reservations_evicted_total",
		Help: "Outcomes of ended reservations forgotten before their retention, to stay within --ended-max and --ended-max-bytes.",
	}, func() float64 { return float64(s.Ended().Evicted) })
	return set.Register("memstore", reg)
}

// probeEvery probes Redis every second until the returned stop, which
// waits for the loop to end (before the client closes under it).
func probeEvery(h *redisstore.Health) (stop func()) {
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { defer close(done); h.Run(ctx) }()
	return func() { cancel(); <-done }
}

// redisReady is the redis component of /readyz. A sidecar is not ready
// until Redis has answered once since it started: a pod that never reached
// its store is not put in service (a rollout waits rather than replace
// working pods with it), and a fleet member would decide on its share of
// budgets it never read. Redis away after that is reported degraded, and
// the sidecar stays ready: every sidecar shares that Redis, so failing
// readiness would take the whole fleet out of its Services at once, while
// each sidecar still answers every check (by the policy's
// store_unavailable, or as a fleet member on its share).
func redisReady(h *redisstore.Health, fleet bool) func(context.Context) error {
	meanwhile := "; each check follows the policy's store_unavailable"
	if fleet {
		meanwhile = "; this member decides on its share of each pool and budget"
	}
	return func(context.Context) error {
		st := h.State()
		switch {
		case st.Reachable:
			return nil
		case !st.Reached:
			return errors.New(st.String() + meanwhile)
		}
		return &authz.DegradedError{Reason: st.String() + meanwhile}
	}
}

// registerHealth exports whether Redis answers the readiness probe.
func registerHealth(h *redisstore.Health, rt *redisstore.RoundTrips, st *redisstore.Store, reg prometheus.Registerer) error {
	var set metricset.Set
	set.CounterFunc(prometheus.CounterOpts{
		Name: "tollgate_redis_pool_refunds_lost_total",
		Help: "With --redis-spread, give-backs of shared pools' units that failed after a later step of an admission or finish did (the pool stays charged until it refills).",
	}, func() float64 { return float64(st.LostRefunds()) })
	set.CounterFunc(prometheus.CounterOpts{
		Name: "tollgate_redis_round_trips_total",
		Help: "Round trips to Redis (a command, a script or a pipeline each), the readiness probe's included.",
	}, func() float64 { return float64(rt.Count()) })
	set.GaugeFunc(prometheus.GaugeOpts{
		Name: "tollgate_redis_reachable",
		Help: "1 while Redis answers the readiness probe (a PING every second), else 0.",
	}, func() float64 {
		if h.State().Reachable {
			return 1
		}
		return 0
	})
	return set.Register("redis health", reg)
}

// redisLog sends go-redis's own messages (dial failures and the like) to
// slog at debug level: each failed check already logs its error.
type redisLog struct{ l *slog.Logger }

func (r redisLog) Printf(ctx context.Context, format string, v ...any) {
	r.l.DebugContext(ctx, fmt.Sprintf(format, v...))
}

// newRegistry is the registry serve exposes on /metrics, with the Go,
// process and build-info collectors; every component registers its own
// metrics in it, all or none, returning an error rather than panicking.
func newRegistry() (*metricset.Registry, error) {
	reg := metricset.NewRegistry()
	var base metricset.Set
	metricset.Add(&base, collectors.NewGoCollector())
	metricset.Add(&base, collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	metricset.Add(&base, collectors.NewBuildInfoCollector())
	return reg, base.Register("serve", reg)
}

// openCache builds the response cache the flags ask for: --cache-bytes of
// answers in this process and, with --store redis, a Redis level under it
// that the fleet shares (flights, entries and idempotency records seen by
// every sidecar). Nil for --cache-bytes 0: no response cache and no
// idempotency, whatever the policy's cache rules say.
func openCache(f serveFlags, st openedStore, reg prometheus.Registerer, log *slog.Logger) (respcache.Cache, error) {
	if f.cacheBytes < 0 || f.cacheMaxEntry < 0 {
		return nil, fmt.Errorf("--cache-bytes %d and --cache-max-entry %d must not be negative", f.cacheBytes, f.cacheMaxEntry)
	}
	if f.cacheBytes == 0 {
		log.Info("response cache: off (--cache-bytes 0): the policy's cache rules are ignored")
		return nil, nil
	}
	if f.cacheMaxEntry == 0 || f.cacheMaxEntry > f.cacheBytes {
		return nil, fmt.Errorf("--cache-max-entry %d must be between 1 and --cache-bytes %d", f.cacheMaxEntry, f.cacheBytes)
	}
	m, err := respcache.NewMetrics(reg)
	if err != nil {
		return nil, err
	}
	mem, err := respcache.NewMemory(respcache.MemoryConfig{MaxBytes: f.cacheBytes, MaxEntryBytes: f.cacheMaxEntry, Metrics: m})
	if err != nil {
		return nil, err
	}
	if st.redis == nil {
		log.Info("response cache: in this process", slog.Int64("cache_bytes", f.cacheBytes), slog.Int64("cache_max_entry", f.cacheMaxEntry))
		return mem, nil
	}
	cfg := respcache.DefaultRedisConfig()
	cfg.Prefix, cfg.MaxEntryBytes, cfg.Metrics = f.redisPrefix, f.cacheMaxEntry, m
	l2, err := respcache.NewRedis(st.redis, cfg)
	if err != nil {
		return nil, errors.Join(err, mem.Close())
	}
	log.Info("response cache: in this process and in Redis, shared by the fleet", slog.Int64("cache_bytes", f.cacheBytes),
		slog.Int64("cache_max_entry", f.cacheMaxEntry), slog.String("prefix", f.redisPrefix))
	return respcache.NewTiered(mem, l2), nil
}
