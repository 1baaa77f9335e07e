package main

// The rig one store's soak drives, and the scheduler that drives it: each
// kind of call at its own steady rate, with a bound on how many of it may
// be in flight, every outcome tallied.

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"strings"
	"sync"
	"time"

	authv3 "github.com/envoyproxy/go-control-plane/envoy/service/auth/v3"
	extprocv3 "github.com/envoyproxy/go-control-plane/envoy/service/ext_proc/v3"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"

	"github.com/tollgate/tollgate/internal/envoysim"
	"github.com/tollgate/tollgate/internal/fakeapi"
)

// listeners are the Envoy listeners of the shipped config the soak sends
// whole calls through, one per provider.
var listeners = []string{"openai", "anthropic", "twilio", "sendgrid"}

// rig is what one store's traffic goes through: for each member, the
// Envoy stand-in's listeners in front of it and a gRPC connection to it
// (Envoy's tollgate cluster, which the direct calls share); behind them
// all, one fake provider.
type rig struct {
	members []*member
	fake    *fakeapi.Server
	proxies []map[string]string // per member: listener → base URL
	conns   []*grpc.ClientConn
	auth    []authv3.AuthorizationClient
	proc    []extprocv3.ExternalProcessorClient
	// web is the workers' HTTP client, to the stand-in's listeners.
	web      *http.Client
	proxyLog *countingHandler
	closers  []func() error
}

// newRig starts the fake provider and a stand-in per member.
func newRig(members []*member, envoyConfig string) (r *rig, err error) {
	r = &rig{members: members, proxyLog: newCountingHandler()}
	defer func() {
		if err != nil {
			err = errors.Join(err, r.close())
		}
	}()
	cfg := fakeapi.DefaultConfig()
	cfg.RetryAfter = time.Second
	cfg.SlowDelay = 40 * time.Millisecond
	r.fake = fakeapi.New(cfg)
	upstream, err := r.serve(r.fake)
	if err != nil {
		return r, err
	}
	lis, err := envoysim.Load(envoyConfig)
	if err != nil {
		return r, err
	}
	for _, m := range members {
		conn, err := grpc.NewClient(m.grpcAddr, grpc.WithTransportCredentials(insecure.NewCredentials()))
		if err != nil {
			return r, fmt.Errorf("soak: %w", err)
		}
		r.closers = append(r.closers, conn.Close)
		// Connect now, so that the connection is part of the member's rest
		// state before the baseline is read.
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		_, err = healthpb.NewHealthClient(conn).Check(ctx, &healthpb.HealthCheckRequest{})
		cancel()
		if err != nil {
			return r, fmt.Errorf("soak: %s: gRPC health: %w", m.name, err)
		}
		auth, proc := authv3.NewAuthorizationClient(conn), extprocv3.NewExternalProcessorClient(conn)
		r.conns, r.auth, r.proc = append(r.conns, conn), append(r.auth, auth), append(r.proc, proc)
		urls := map[string]string{}
		for _, name := range listeners {
			l, ok := lis[name]
			if !ok {
				return r, fmt.Errorf("soak: %s has no listener %q", envoyConfig, name)
			}
			p, err := envoysim.New(envoysim.Config{Listener: l, Authz: auth, Proc: proc, Upstream: upstream,
				Logger: slog.New(r.proxyLog)})
			if err != nil {
				return r, err
			}
			r.closers = append(r.closers, func() error { p.Close(); return nil })
			addr, err := r.serve(p)
			if err != nil {
				return r, err
			}
			urls[name] = "http://" + addr
		}
		r.proxies = append(r.proxies, urls)
	}
	r.web = &http.Client{Timeout: callTimeout, Transport: &http.Transport{MaxIdleConnsPerHost: 64}}
	return r, nil
}

// serve runs h on a loopback port until the rig closes.
func (r *rig) serve(h http.Handler) (string, error) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return "", fmt.Errorf("soak: %w", err)
	}
	srv := &http.Server{Handler: h, ReadHeaderTimeout: 10 * time.Second}
	done := make(chan error, 1)
	go func() { done <- srv.Serve(l) }()
	r.closers = append(r.closers, func() error {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		err := srv.Shutdown(ctx)
		if serr := <-done; !errors.Is(serr, http.ErrServerClosed) {
			err = errors.Join(err, serr)
		}
		return err
	})
	return l.Addr().String(), nil
}

// rest closes the connections that are idle on the soak's side, so that
// the members' rest state holds only the gRPC connections.
func (r *rig) rest() {
	r.web.CloseIdleConnections()
	for _, m := range r.members {
		m.api.CloseIdleConnections()
	}
}

func (r *rig) close() error {
	var errs []error
	for i := len(r.closers) - 1; i >= 0; i-- {
		errs = append(errs, r.closers[i]())
	}
	r.closers = nil
	return errors.Join(errs...)
}

// callTimeout bounds every call the soak makes: a call still unanswered
// after it is an unexpected outcome.
const callTimeout = 30 * time.Second

// kind is one sort of call, sent at rate a second with at most slots in
// flight. run makes call number n and returns its outcome (e.g. "200",
// "429 rate_limited") and, for an outcome the soak must not see, an error.
type kind struct {
	name  string
	rate  float64
	slots int
	run   func(ctx context.Context, r *rig, n int64) (string, error)
}

// tallies are the outcomes of a store's soak, by kind; safe for
// concurrent use.
type tallies struct {
	mu sync.Mutex
	m  map[string]*tally
}

func (t *tallies) add(k, outcome string, err error) {
	t.mu.Lock()
	defer t.mu.Unlock()
	t.get(k).add(outcome, err)
}

func (t *tallies) skip(k string) {
	t.mu.Lock()
	defer t.mu.Unlock()
	t.get(k).Skipped++
}

// calls is how many calls have been made so far.
func (t *tallies) calls() int64 {
	t.mu.Lock()
	defer t.mu.Unlock()
	var n int64
	for _, x := range t.m {
		n += x.Calls
	}
	return n
}

func (t *tallies) get(k string) *tally {
	if t.m == nil {
		t.m = map[string]*tally{}
	}
	if t.m[k] == nil {
		t.m[k] = &tally{}
	}
	return t.m[k]
}

// drive sends every kind at its rate, scaled, until d has passed or ctx
// ends, then waits for the calls in flight. The first call of each kind
// goes at once, so a short run still sends every kind.
func drive(ctx context.Context, r *rig, kinds []kind, scale float64, d time.Duration, seq *seqs, t *tallies) {
	ctx, cancel := context.WithTimeout(ctx, d)
	defer cancel()
	var calls sync.WaitGroup
	var loops sync.WaitGroup
	for _, k := range kinds {
		loops.Go(func() {
			slots := make(chan struct{}, k.slots)
			every := max(time.Millisecond, time.Duration(float64(time.Second)/(k.rate*scale)))
			tick := time.NewTicker(every)
			defer tick.Stop()
			for {
				select {
				case slots <- struct{}{}:
					n := seq.next(k.name)
					calls.Go(func() {
						defer func() { <-slots }()
						cctx, ccancel := context.WithTimeout(context.WithoutCancel(ctx), callTimeout)
						defer ccancel()
						outcome, err := k.run(cctx, r, n)
						t.add(k.name, outcome, err)
					})
				default:
					t.skip(k.name)
				}
				select {
				case <-ctx.Done():
					return
				case <-tick.C:
				}
			}
		})
	}
	loops.Wait()
	calls.Wait()
}

// seqs numbers each kind's calls across the phases of a store's soak.
type seqs struct {
	mu sync.Mutex
	n  map[string]int64
}

func (s *seqs) next(k string) int64 {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.n == nil {
		s.n = map[string]int64{}
	}
	n := s.n[k]
	s.n[k]++
	return n
}

// countingHandler is the Envoy stand-in's logger: it counts warnings by
// message and by what failed (a message timeout, a cancelled call, other).
type countingHandler struct {
	mu     sync.Mutex
	counts map[string]int64
	other  []string
}

func newCountingHandler() *countingHandler { return &countingHandler{counts: map[string]int64{}} }

func (h *countingHandler) Enabled(_ context.Context, l slog.Level) bool { return l >= slog.LevelWarn }
func (h *countingHandler) WithAttrs([]slog.Attr) slog.Handler           { return h }
func (h *countingHandler) WithGroup(string) slog.Handler                { return h }

func (h *countingHandler) Handle(_ context.Context, rec slog.Record) error {
	var msg string
	rec.Attrs(func(a slog.Attr) bool {
		if a.Key == "error" {
			msg = a.Value.String()
		}
		return true
	})
	cause := causeOf(msg)
	h.mu.Lock()
	defer h.mu.Unlock()
	h.counts[rec.Message+": "+cause]++
	if cause == "other" && len(h.other) < maxExamples {
		h.other = append(h.other, rec.Message+": "+msg)
	}
	return nil
}

// causeOf sorts a stand-in's error: the 200 ms ext_proc message timeout
// of the shipped config, a call its worker gave up on, or anything else.
func causeOf(err string) string {
	switch {
	case strings.Contains(err, "message timeout"):
		return "message timeout"
	case strings.Contains(err, "context canceled"), strings.Contains(err, "code = Canceled"):
		return "cancelled"
	}
	return "other"
}

func (h *countingHandler) snapshot() (map[string]int64, []string) {
	h.mu.Lock()
	defer h.mu.Unlock()
	c := make(map[string]int64, len(h.counts))
	for k, v := range h.counts {
		c[k] = v
	}
	return c, append([]string(nil), h.other...)
}
