package authz

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"os"
	"runtime"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	authv3 "github.com/envoyproxy/go-control-plane/envoy/service/auth/v3"
	extprocv3 "github.com/envoyproxy/go-control-plane/envoy/service/ext_proc/v3"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/promhttp"
	"google.golang.org/grpc"
	"google.golang.org/grpc/health"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"

	"github.com/tollgate/tollgate/admission"
	"github.com/tollgate/tollgate/internal/metricset"
	"github.com/tollgate/tollgate/internal/tracing"
	"github.com/tollgate/tollgate/limiter"
	"github.com/tollgate/tollgate/limiter/respcache"
	"github.com/tollgate/tollgate/policy"
)

// Config configures a Server.
type Config struct {
	// GRPCAddr is where Envoy's services listen: "host:port" or
	// "unix:///path".
	GRPCAddr string
	// HTTPAddr serves /healthz, /readyz and /metrics, open to anyone who
	// can reach it (probes and Prometheus).
	HTTPAddr string
	// APIAddr serves the JSON API (/api/...) and /debug/..., every endpoint
	// behind APIToken.
	APIAddr string
	// APIToken is the bearer token the API requires. Empty: the API refuses
	// every call that needs it (403, saying how to set one), so that an
	// unconfigured sidecar never lets anyone settle or read spend.
	APIToken Secret
	// AuthzHTTPAddr, when set, serves Envoy's ext_authz over HTTP (the
	// filter's http_service form, envoy/sidecar-http.yaml): the same
	// decisions as over gRPC. Empty: off.
	AuthzHTTPAddr string
	// ClientHeader names the request header that identifies the client.
	ClientHeader string
	// Client, when set, is the client of every call (serve --client): the
	// header and the context extension are ignored.
	Client string
	// DrainDelay is how long Shutdown reports NOT_SERVING before it stops
	// accepting calls, so that Envoy and Kubernetes notice first.
	DrainDelay time.Duration
	// Settlement picks how admitted calls are booked.
	Settlement admission.Settlement
	// RateLimitHeaders are the headers the RLS service adds (off by
	// default, as in envoyproxy/ratelimit).
	RateLimitHeaders RateLimitHeaders
	// CacheMaxEntry bounds the body of an answer the response cache keeps
	// (beside each cache rule's max_entry_bytes); 0: the rules' alone.
	CacheMaxEntry int64
	// ExpireEvery is how often the server's own loop runs: reservations
	// past their TTL are committed at their estimate (when the store keeps
	// reservations), and the spend of calls let through fail open is
	// booked once the store answers. Zero: never (Shutdown still books).
	ExpireEvery time.Duration
	// WatchEvery is how often the server reads the standing its alerts and
	// gauges show (pools, watched budgets, forecasts) from the store. Zero:
	// only when GET /admin/alerts asks.
	WatchEvery time.Duration
	// Version is what GET /status reports ("dev" when empty).
	Version string
}

// DefaultConfig returns the configuration `tollgate serve` starts from.
func DefaultConfig() Config {
	return Config{GRPCAddr: "127.0.0.1:8081", HTTPAddr: "127.0.0.1:8080", APIAddr: "127.0.0.1:8082", ClientHeader: "x-tollgate-client",
		DrainDelay: time.Second, Settlement: admission.SettleDeferred, ExpireEvery: time.Second, WatchEvery: 15 * time.Second,
		RateLimitHeaders: DefaultRateLimitHeaders()}
}

// Validate reports a configuration that cannot work.
func (c Config) Validate() error {
	var errs []error
	if c.GRPCAddr == "" {
		errs = append(errs, errors.New("authz: gRPC address is empty"))
	}
	if c.HTTPAddr == "" {
		errs = append(errs, errors.New("authz: HTTP address is empty"))
	}
	if c.APIAddr == "" {
		errs = append(errs, errors.New("authz: API address is empty"))
	}
	if err := c.APIToken.validate(); err != nil {
		errs = append(errs, err)
	}
	if c.ClientHeader == "" || c.ClientHeader != strings.ToLower(c.ClientHeader) || strings.ContainsAny(c.ClientHeader, " :") {
		errs = append(errs, fmt.Errorf("authz: client header %q must be a lower-case header name", c.ClientHeader))
	}
	if c.Client != "" {
		if err := policy.ValidClientID(c.Client); err != nil {
			errs = append(errs, fmt.Errorf("authz: client %w", err))
		}
	}
	if c.DrainDelay < 0 {
		errs = append(errs, fmt.Errorf("authz: drain delay %v is negative", c.DrainDelay))
	}
	if c.CacheMaxEntry < 0 {
		errs = append(errs, fmt.Errorf("authz: cache entry bound %d is negative", c.CacheMaxEntry))
	}
	if c.ExpireEvery < 0 {
		errs = append(errs, fmt.Errorf("authz: expiry interval %v is negative", c.ExpireEvery))
	}
	if c.WatchEvery < 0 {
		errs = append(errs, fmt.Errorf("authz: watch interval %v is negative", c.WatchEvery))
	}
	return errors.Join(errs...)
}

// Deps are the collaborators a Server uses; Server does not own them (the
// caller closes the store).
type Deps struct {
	Policies admission.PolicySource
	Store    admission.Store
	// Registry receives the server's metrics and is served on /metrics; a
	// *metricset.Registry also serves its catalog on /debug/metrics.
	Registry Registry
	Logger   *slog.Logger
	// Checks are readiness probes by component ("redis"); /readyz fails
	// while any fails, except with a *DegradedError: the component works,
	// not fully, and /readyz shows why and stays ready.
	Checks map[string]func(context.Context) error
	// Degraded are reports by component that /readyz shows but that never
	// fail it: each returns "" while all is well, else what is degraded
	// (a fleet member in outage mode still decides, on its share).
	Degraded map[string]func() string
	// Cluster, when set, reports the fleet on GET /api/cluster.
	Cluster func() any
	// Clock picks budget periods and dates reservations; nil is the
	// system clock.
	Clock limiter.Clock
	// RateLimits is the envoyproxy/ratelimit config the RLS service
	// (ShouldRateLimit) decides on; nil: none, every descriptor passes.
	RateLimits admission.RateLimitSource
	// Cache keeps upstream answers for the policy's cache rules (the
	// caller closes it); nil: none, and DELETE /api/cache/... answers 404.
	Cache respcache.Cache
	// Tracer traces checks, rate limit decisions, held calls' waits, store
	// calls and settles (the caller shuts it down); nil: tracing off.
	Tracer *tracing.Tracer
	// DecisionLog, when set, receives every decision and settle
	// (admission.DecisionLog; the caller closes it after Shutdown).
	DecisionLog admission.DecisionLog
}

// Registry is where metrics are registered and gathered from:
// *prometheus.Registry or *metricset.Registry.
type Registry interface {
	prometheus.Registerer
	prometheus.Gatherer
}

// Server serves Envoy's gRPC services and the admin HTTP endpoints.
type Server struct {
	cfg      Config
	log      *slog.Logger
	deps     Deps
	svc      *admission.Service
	m        *metrics
	grpc     *grpc.Server
	health   *health.Server
	http     *http.Server
	api      *http.Server
	grpcLis  net.Listener
	httpLis  net.Listener
	apiLis   net.Listener
	draining atomic.Bool
	began    time.Time // when New ran, for GET /status's uptime

	// authzHTTP serves ext_authz over HTTP on authzHTTPLis; both nil when
	// Config.AuthzHTTPAddr is empty.
	authzHTTP    *http.Server
	authzHTTPLis net.Listener

	shutdownOnce sync.Once
	shutdownErr  error
	done         chan struct{}
	stopLoop     chan struct{}
	loopDone     chan struct{}

	mu      sync.Mutex
	started bool // Serve ran (its expiry loop must be waited for)
	stopped bool // Shutdown began: Serve must not start loops
}

// New validates cfg, builds the services and binds its listeners, so that an
// address in use fails here and not later.
func New(cfg Config, deps Deps) (*Server, error) {
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	if deps.Policies == nil || deps.Store == nil || deps.Registry == nil {
		return nil, errors.New("authz: Deps needs Policies, Store and Registry")
	}
	if deps.Logger == nil {
		deps.Logger = slog.New(slog.DiscardHandler)
	}
	s := &Server{cfg: cfg, log: deps.Logger, deps: deps, done: make(chan struct{}), began: time.Now(),
		stopLoop: make(chan struct{}), loopDone: make(chan struct{})}

	// Bind first, so that a failed New leaves nothing behind: not even
	// metrics in the caller's registry, which a retry would collide with.
	var err error
	if s.grpcLis, err = listen(cfg.GRPCAddr); err != nil {
		return nil, fmt.Errorf("authz: gRPC listener: %w", err)
	}
	if s.httpLis, err = listen(cfg.HTTPAddr); err != nil {
		return nil, errors.Join(fmt.Errorf("authz: HTTP listener: %w", err), s.grpcLis.Close())
	}
	if s.apiLis, err = listen(cfg.APIAddr); err != nil {
		return nil, errors.Join(fmt.Errorf("authz: API listener: %w", err), s.grpcLis.Close(), s.httpLis.Close())
	}

	if cfg.AuthzHTTPAddr != "" {
		if s.authzHTTPLis, err = listen(cfg.AuthzHTTPAddr); err != nil {
			return nil, errors.Join(fmt.Errorf("authz: ext_authz HTTP listener: %w", err), s.grpcLis.Close(), s.httpLis.Close(), s.apiLis.Close())
		}
	}

	closeListeners := func(err error) error {
		err = errors.Join(err, s.grpcLis.Close(), s.httpLis.Close(), s.apiLis.Close())
		if s.authzHTTPLis != nil {
			err = errors.Join(err, s.authzHTTPLis.Close())
		}
		return err
	}
	if s.m, err = newMetrics(deps.Registry); err != nil {
		return nil, closeListeners(err)
	}
	s.svc, err = admission.New(admission.Config{Settlement: cfg.Settlement, CacheMaxEntry: cfg.CacheMaxEntry}, admission.Deps{Policies: deps.Policies,
		Store: deps.Store, Registerer: deps.Registry, Logger: deps.Logger, Clock: deps.Clock, Cache: deps.Cache,
		Tracer: deps.Tracer, DecisionLog: deps.DecisionLog})
	if err != nil {
		s.m.set.Unregister(deps.Registry)
		return nil, closeListeners(err)
	}

	// Stream workers keep their goroutines (and the stacks an admission grows
	// them to) from call to call; a call held in the queue occupies one, and
	// gRPC starts a goroutine of its own when all are busy.
	s.grpc = grpc.NewServer(grpc.NumStreamWorkers(uint32(4 * runtime.GOMAXPROCS(0))))
	clients := clientSource{header: cfg.ClientHeader, pinned: cfg.Client}
	authv3.RegisterAuthorizationServer(s.grpc, &authServer{svc: s.svc, clients: clients, m: s.m, tr: deps.Tracer})
	extprocv3.RegisterExternalProcessorServer(s.grpc, &procServer{svc: s.svc, m: s.m, tr: deps.Tracer})
	if err := s.registerRLS(); err != nil {
		s.m.set.Unregister(deps.Registry)
		return nil, closeListeners(errors.Join(err, s.svc.Close()))
	}
	s.health = health.NewServer()
	healthpb.RegisterHealthServer(s.grpc, s.health)
	s.health.SetServingStatus("", healthpb.HealthCheckResponse_SERVING)
	for _, svc := range []string{authv3.Authorization_ServiceDesc.ServiceName, extprocv3.ExternalProcessor_ServiceDesc.ServiceName, rlsServiceName} {
		s.health.SetServingStatus(svc, healthpb.HealthCheckResponse_SERVING)
	}

	s.http = &http.Server{Handler: s.healthMux(), ReadHeaderTimeout: 5 * time.Second}
	s.api = &http.Server{Handler: s.apiMux(), ReadHeaderTimeout: 5 * time.Second}
	if s.authzHTTPLis != nil {
		s.authzHTTP = newHTTPAuthzServer(&httpAuthz{svc: s.svc, clients: clients, m: s.m, tr: deps.Tracer})
	}
	return s, nil
}

// Service returns the admission service the server uses.
func (s *Server) Service() *admission.Service { return s.svc }

// GRPCAddr is the bound gRPC address (useful with port 0).
func (s *Server) GRPCAddr() net.Addr { return s.grpcLis.Addr() }

// HTTPAddr is the bound health and metrics address.
func (s *Server) HTTPAddr() net.Addr { return s.httpLis.Addr() }

// APIAddr is the bound API address.
func (s *Server) APIAddr() net.Addr { return s.apiLis.Addr() }

// AuthzHTTPAddr is the bound ext_authz HTTP address, nil when off.
func (s *Server) AuthzHTTPAddr() net.Addr {
	if s.authzHTTPLis == nil {
		return nil
	}
	return s.authzHTTPLis.Addr()
}

// Serve serves until Shutdown completes or a listener fails. It returns nil
// after a clean Shutdown.
func (s *Server) Serve(ctx context.Context) error {
	type httpServer struct {
		srv *http.Server
		lis net.Listener
	}
	servers := []httpServer{{s.http, s.httpLis}, {s.api, s.apiLis}}
	if s.authzHTTP != nil {
		servers = append(servers, httpServer{s.authzHTTP, s.authzHTTPLis})
	}
	errc := make(chan error, 1+len(servers))
	s.mu.Lock()
	if !s.stopped {
		s.started = true
		go s.backgroundLoop(ctx)
	}
	s.mu.Unlock()
	go func() { errc <- s.grpc.Serve(s.grpcLis) }()
	for _, hs := range servers {
		go func() {
			if err := hs.srv.Serve(hs.lis); !errors.Is(err, http.ErrServerClosed) {
				errc <- err
				return
			}
			errc <- nil
		}()
	}
	s.log.LogAttrs(ctx, slog.LevelInfo, "serving", slog.String("grpc", s.GRPCAddr().String()), slog.String("http", s.HTTPAddr().String()),
		slog.String("api", s.APIAddr().String()), slog.Bool("api_token", !s.cfg.APIToken.empty()))
	if s.cfg.APIToken.empty() {
		s.log.LogAttrs(ctx, slog.LevelWarn, "no API token: the API refuses every call (set --api-token-file or TOLLGATE_API_TOKEN)")
	}
	if a := s.AuthzHTTPAddr(); a != nil {
		s.log.LogAttrs(ctx, slog.LevelInfo, "serving ext_authz over HTTP", slog.String("authz_http", a.String()))
	}
	var first error
	for range 1 + len(servers) {
		if err := <-errc; err != nil && first == nil && !errors.Is(err, grpc.ErrServerStopped) {
			first = err
			go func() { _ = s.Shutdown(context.WithoutCancel(ctx)) }() // one server failed: stop the other
		}
	}
	<-s.done
	return first
}

// Shutdown drains and stops the server: health goes NOT_SERVING, then after
// DrainDelay the gRPC server stops accepting calls and waits for those in
// flight (until ctx ends, when it stops hard), then the HTTP server closes.
// It is idempotent.
func (s *Server) Shutdown(ctx context.Context) error {
	s.shutdownOnce.Do(func() {
		defer close(s.done)
		// gRPC health first, so that whoever sees /readyz say draining
		// also sees NOT_SERVING.
		s.health.Shutdown()
		s.draining.Store(true)
		if s.cfg.DrainDelay > 0 {
			t := time.NewTimer(s.cfg.DrainDelay)
			select {
			case <-t.C:
			case <-ctx.Done():
				t.Stop()
			}
		}
		// Held calls are answered now (503 shutting_down) rather than at
		// their deadline, which could outlast the shutdown timeout.
		var errs []error
		if err := s.svc.Close(); err != nil {
			errs = append(errs, fmt.Errorf("authz: close the queue: %w", err))
		}
		stopped := make(chan struct{})
		go func() { s.grpc.GracefulStop(); close(stopped) }()
		select {
		case <-stopped:
		case <-ctx.Done():
			s.grpc.Stop()
			<-stopped
			errs = append(errs, fmt.Errorf("authz: in-flight checks cut short: %w", ctx.Err()))
		}
		if err := s.http.Shutdown(ctx); err != nil {
			errs = append(errs, fmt.Errorf("authz: HTTP shutdown: %w", err))
		}
		if err := s.api.Shutdown(ctx); err != nil {
			errs = append(errs, fmt.Errorf("authz: API shutdown: %w", err))
		}
		if s.authzHTTP != nil {
			if err := s.authzHTTP.Shutdown(ctx); err != nil {
				errs = append(errs, fmt.Errorf("authz: ext_authz HTTP shutdown: %w", err))
			}
		}
		s.mu.Lock()
		s.stopped = true
		started := s.started
		s.mu.Unlock()
		close(s.stopLoop)
		if started {
			<-s.loopDone
		}
		if err := s.bookLeft(ctx); err != nil {
			errs = append(errs, err)
		}
		// Serve closes the listeners it ran; these closes free them when it
		// never ran.
		lis := []net.Listener{s.grpcLis, s.httpLis, s.apiLis}
		if s.authzHTTPLis != nil {
			lis = append(lis, s.authzHTTPLis)
		}
		for _, l := range lis {
			if err := l.Close(); err != nil && !errors.Is(err, net.ErrClosed) {
				errs = append(errs, fmt.Errorf("authz: close %s: %w", l.Addr(), err))
			}
		}
		s.shutdownErr = errors.Join(errs...)
	})
	return s.shutdownErr
}

// healthMux serves what probes and Prometheus need, to anyone: nothing
// there changes state or names a client.
func (s *Server) healthMux() *http.ServeMux {
	mux := http.NewServeMux()
	mux.HandleFunc("GET /healthz", func(w http.ResponseWriter, _ *http.Request) {
		w.Header().Set("Content-Type", "text/plain; charset=utf-8")
		_, _ = w.Write([]byte("ok\n"))
	})
	// /health is the seed API's name for /healthz: the same answer.
	mux.HandleFunc("GET /health", func(w http.ResponseWriter, _ *http.Request) {
		w.Header().Set("Content-Type", "text/plain; charset=utf-8")
		_, _ = w.Write([]byte("ok\n"))
	})
	mux.HandleFunc("GET /readyz", s.readyz)
	mux.Handle("GET /metrics", promhttp.HandlerFor(s.deps.Registry, promhttp.HandlerOpts{Registry: s.deps.Registry}))
	return mux
}

// apiMux serves the JSON API and the debug views, every one behind the
// token: they settle, release and dequeue calls, or show a client's spend
// and savings, the queue, the fleet and the policy (its clients and
// budgets). The status page (GET /, status.go) checks the token itself, by
// header or by its session cookie.
func (s *Server) apiMux() http.Handler {
	top := http.NewServeMux()
	s.statusRoutes(top)
	mux := http.NewServeMux()
	top.Handle("/", s.requireToken(mux))
	if c, ok := s.deps.Registry.(interface{ Catalog() []metricset.Spec }); ok {
		mux.HandleFunc("GET /debug/metrics", func(w http.ResponseWriter, _ *http.Request) {
			writeJSON(w, http.StatusOK, c.Catalog())
		})
	}
	mux.HandleFunc("GET /debug/policy", s.debugPolicy)
	s.apiRoutes(mux)
	s.alertRoutes(mux)
	s.estimateRoute(mux)
	s.optimizeRoutes(mux)
	s.queueRoutes(mux)
	s.cacheRoutes(mux)
	s.resourceRoutes(mux)
	s.internalRoutes(mux)
	if s.deps.Cluster != nil {
		mux.HandleFunc("GET /api/cluster", func(w http.ResponseWriter, _ *http.Request) {
			writeJSON(w, http.StatusOK, s.deps.Cluster())
		})
	}
	return top
}

// DegradedError is what a readiness check returns for a component that
// works, but not fully (Redis away while a fleet member decides on its
// share): /readyz shows Reason and says "degraded", and stays ready.
type DegradedError struct{ Reason string }

func (e *DegradedError) Error() string { return e.Reason }

func (s *Server) readyz(w http.ResponseWriter, r *http.Request) {
	components := map[string]string{"policy": "ok", "server": "ok"}
	ready, degraded := true, false
	if s.deps.Policies.Policy() == nil {
		components["policy"], ready = "no policy loaded", false
	}
	if s.draining.Load() {
		components["server"], ready = "draining", false
	}
	for name, check := range s.deps.Checks {
		ctx, cancel := context.WithTimeout(r.Context(), time.Second)
		err := check(ctx)
		cancel()
		var d *DegradedError
		switch {
		case err == nil:
			components[name] = "ok"
		case errors.As(err, &d):
			components[name], degraded = d.Reason, true
		default:
			components[name], ready = err.Error(), false
		}
	}
	for name, report := range s.deps.Degraded {
		components[name] = "ok"
		if d := report(); d != "" {
			components[name], degraded = d, true
		}
	}
	w.Header().Set("Content-Type", "application/json")
	if !ready {
		w.WriteHeader(http.StatusServiceUnavailable)
	}
	_ = json.NewEncoder(w).Encode(map[string]any{"ready": ready, "degraded": degraded, "components": components})
}

func (s *Server) debugPolicy(w http.ResponseWriter, _ *http.Request) {
	w.Header().Set("Content-Type", "application/json")
	enc := json.NewEncoder(w)
	enc.SetIndent("", "  ")
	_ = enc.Encode(s.deps.Policies.Policy().Summary())
}

// listen binds "host:port" or "unix:///path" (removing a stale socket).
func listen(addr string) (net.Listener, error) {
	if path, ok := strings.CutPrefix(addr, "unix://"); ok {
		if err := os.Remove(path); err != nil && !errors.Is(err, os.ErrNotExist) {
			return nil, err
		}
		return net.Listen("unix", path)
	}
	return net.Listen("tcp", addr)
}
