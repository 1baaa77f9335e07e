package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	authv3 "github.com/envoyproxy/go-control-plane/envoy/service/auth/v3"
	extprocv3 "github.com/envoyproxy/go-control-plane/envoy/service/ext_proc/v3"
	rlsv3 "github.com/envoyproxy/go-control-plane/envoy/service/ratelimit/v3"
	"github.com/spf13/cobra"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"

	"github.com/tollgate/tollgate/internal/procstat"
)

type floorFlags struct {
	bin, bareBin          string
	policy, envoyConfig   string
	body, response, url   string
	clientHeader          string
	clients, concurrency  int
	conns                 int
	duration, warmup      time.Duration
	slices                int
	json                  bool
	revision              string
	startTimeout, timeout time.Duration
	modes                 []string
	rlsConfig             string
	store                 string
	redisAddr             string
	redisPrefix           string
	cachePolicy           string
	cacheBody             string
}

func floorCmd() *cobra.Command {
	f := floorFlags{}
	cmd := &cobra.Command{
		Use:   "floor",
		Short: "Measure Tollgate against a bare ext_authz + ext_proc server, each in a process of its own",
		Long: "floor starts a bare gRPC server (decode, answer OK, encode: nothing else) and `tollgate serve`\n" +
			"on the memory store as child processes on loopback, drives both with the same calls in two\n" +
			"modes, and reports throughput, p50/p99 latency and server CPU per call of each, and the ratios\n" +
			"Tollgate/bare. Check: ext_authz Check alone (Tollgate with --settle immediate, as without ext_proc).\n" +
			"Whole call: Check, then the ext_proc stream Envoy runs with --envoy-config's ext_proc filter,\n" +
			"ending with --response (Tollgate with --settle deferred). Then Check at one caller. Windows\n" +
			"take turns between the servers in slices, after a warm-up; server CPU is the process's utime+stime.\n" +
			"--modes rls adds ShouldRateLimit (Tollgate with --rls-config, README example 2's two descriptors per\n" +
			"request, one phone number per client, all under their limits), against a bare RLS answering OK.\n" +
			"--store redis runs Tollgate on --redis-addr and reports its round trips to Redis per call (from its /metrics).\n" +
			"--modes cachehit measures a response-cache hit at one caller: the same deterministic --cache-body for one client,\n" +
			"Tollgate (--settle deferred) under --cache-policy, whose first call is a miss played through ext_proc with\n" +
			"--response (recorded), every later one answered from the cache at Check; against the bare server's no-op Check.\n" +
			"It stops the servers when done, on any error, and on a signal. Paths default to the repository's.",
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			return floor(cmd.Context(), f, cmd.OutOrStdout(), cmd.ErrOrStderr())
		},
	}
	fl := cmd.Flags()
	fl.StringVar(&f.bin, "bin", "", "the tollgate binary to measure, run as `BIN serve` (default: this one)")
	fl.StringVar(&f.bareBin, "bare-bin", "", "the binary whose hidden `bare-floor` command is the bare server (default: this one)")
	fl.StringVar(&f.policy, "policy", "testdata/good/bench.yaml", "Tollgate's policy: every client must be allowed")
	fl.StringVar(&f.envoyConfig, "envoy-config", "envoy/sidecar.yaml", "Envoy config whose ext_proc filter (processing_mode, allow_mode_override) shapes the whole call")
	fl.StringVar(&f.body, "body", "testdata/bodies/openai-chat-1k.json", "request body of every call")
	fl.StringVar(&f.response, "response", "testdata/responses/openai-chat.json", "the upstream's recorded response body, played through ext_proc")
	fl.StringVar(&f.url, "url", "https://api.openai.com/v1/chat/completions", "the upstream URL of every call")
	fl.StringVar(&f.clientHeader, "client-header", "x-tollgate-client", "header that carries the client id")
	fl.IntVar(&f.clients, "clients", 1000, "distinct client ids, spread over the calls")
	fl.IntVar(&f.concurrency, "concurrency", 64, "concurrent callers (a second Check window always runs at one)")
	fl.IntVar(&f.conns, "conns", 2, "gRPC connections to each server, shared by the callers (Envoy opens one per worker thread)")
	fl.DurationVar(&f.duration, "duration", 10*time.Second, "each measured window")
	fl.DurationVar(&f.warmup, "warmup", 2*time.Second, "the warm-up of each server before each mode's windows (not measured)")
	fl.IntVar(&f.slices, "slices", 5, "cut each window in this many slices, taking turns between the servers")
	fl.BoolVar(&f.json, "json", false, "print the report as JSON")
	fl.StringVar(&f.revision, "revision", "", "the source revision measured, for the report (default: the one built into this binary, if any)")
	fl.DurationVar(&f.startTimeout, "start-timeout", 30*time.Second, "how long a server may take to report SERVING on grpc.health.v1")
	fl.DurationVar(&f.timeout, "timeout", 0, "give up after this long (default: twice the windows plus the start timeout)")
	fl.StringSliceVar(&f.modes, "modes", []string{modeCheck, modeWhole}, "what to measure: check (at --concurrency and at one caller), whole_call, rls, cachehit (at one caller)")
	fl.StringVar(&f.rlsConfig, "rls-config", "testdata/rls/bench", "rls: Tollgate's --rls-config, envoyproxy/ratelimit's runtime directory; its limits must allow every call")
	fl.StringVar(&f.store, "store", "memory", "Tollgate's --store: memory, or redis on --redis-addr (round trips to Redis per call are then reported)")
	fl.StringVar(&f.redisAddr, "redis-addr", "127.0.0.1:6379", "the Redis of --store redis")
	fl.StringVar(&f.redisPrefix, "redis-prefix", "tollgate-floor", "Tollgate's --redis-prefix")
	fl.StringVar(&f.cachePolicy, "cache-policy", "testdata/good/bench-cache.yaml", "cachehit: Tollgate's policy, with a cache rule on --url's route")
	fl.StringVar(&f.cacheBody, "cache-body", "testdata/bodies/openai-chat-1k-t0.json", "cachehit: the request body, one the cache rule keeps (temperature 0)")
	return cmd
}

// The modes a window measures.
const (
	modeCheck = "check"
	modeWhole = "whole_call"
	modeRLS   = "rls"
	// modeCacheHit is a response-cache hit at one caller.
	modeCacheHit = "cachehit"
)

// floorModes are the modes, in the order their windows run.
var floorModes = []string{modeCheck, modeWhole, modeRLS, modeCacheHit}

// floorSteps are the windows the modes ask for, in the order they run,
// or an error naming an unknown mode.
func floorSteps(modes []string, concurrency int) ([]floorStep, error) {
	var steps []floorStep
	for _, want := range floorModes {
		if want == modeCacheHit {
			continue // last, at one caller
		}
		if slices.Contains(modes, want) {
			steps = append(steps, floorStep{want, concurrency})
		}
	}
	for _, m := range modes {
		if !slices.Contains(floorModes, m) {
			return nil, fmt.Errorf("floor: --modes: unknown mode %q (want check, whole_call, rls or cachehit)", m)
		}
	}
	if slices.Contains(modes, modeCheck) && concurrency > 1 {
		// after the whole call, as before rls existed; rls last
		i := len(steps)
		if slices.Contains(modes, modeRLS) {
			i--
		}
		steps = slices.Insert(steps, i, floorStep{modeCheck, 1})
	}
	if slices.Contains(modes, modeCacheHit) {
		steps = append(steps, floorStep{modeCacheHit, 1})
	}
	if len(steps) == 0 {
		return nil, errors.New("floor: --modes: nothing to measure")
	}
	return steps, nil
}

type floorStep struct {
	mode    string
	callers int
}

func floor(ctx context.Context, f floorFlags, out, progress io.Writer) error {
	if f.clients <= 0 || f.concurrency <= 0 || f.conns <= 0 || f.slices <= 0 || f.duration <= 0 || f.warmup < 0 {
		return errors.New("floor: --clients, --concurrency, --conns, --slices and --duration must be positive, --warmup not negative")
	}
	self, err := os.Executable()
	if err != nil {
		return fmt.Errorf("floor: %w", err)
	}
	if f.bin == "" {
		f.bin = self
	}
	if f.bareBin == "" {
		f.bareBin = self
	}
	proc, err := loadEnvoyProc(f.envoyConfig)
	if err != nil {
		return err
	}
	work, err := newFloorWork(f, proc)
	if err != nil {
		return err
	}
	steps, err := floorSteps(f.modes, f.concurrency)
	if err != nil {
		return err
	}
	if f.store != "memory" && f.store != "redis" {
		return fmt.Errorf("floor: --store %q: want memory or redis", f.store)
	}
	windows := time.Duration(2*len(steps)) * (f.warmup + f.duration)
	if f.timeout <= 0 {
		f.timeout = 3*f.startTimeout + 2*windows
	}
	ctx, cancel := context.WithTimeout(ctx, f.timeout)
	defer cancel()

	rep := newFloorReport(f, work, proc)
	// Check-only is a deployment without ext_proc, which settles at
	// admission; the whole call is the shipped one, settled by ext_proc.
	servers := map[string]*floorServer{}
	defer func() {
		for _, s := range servers {
			s.stop()
		}
	}()
	// The RLS server gets the --rls-config; it settles nothing.
	for _, s := range []struct{ key, name, settle string }{
		{"bare", "bare", ""}, {modeCheck, "tollgate", "immediate"}, {modeWhole, "tollgate", "deferred"}, {modeRLS, "tollgate", ""},
		{modeCacheHit, "tollgate", "deferred"},
	} {
		if s.key != "bare" && !slices.Contains(f.modes, s.key) {
			continue
		}
		fmt.Fprintf(progress, "floor: starting %s\n", s.key)
		var args []string
		var httpAddr string
		if s.name == "bare" {
			args = []string{"bare-floor"}
		} else {
			if httpAddr, err = freeLoopbackAddr(); err != nil {
				return err
			}
			pol := f.policy
			if s.key == modeCacheHit {
				pol = f.cachePolicy
			}
			args = []string{"serve", "--store", f.store, "--policy", pol,
				"--http-addr", httpAddr, "--api-addr", "127.0.0.1:0", "--log-level", "warn", "--drain-delay", "0s"}
			if s.settle != "" {
				args = append(args, "--settle", s.settle)
			}
			if s.key == modeRLS {
				args = append(args, "--rls-config", f.rlsConfig)
			}
			if f.store == "redis" {
				args = append(args, "--redis-addr", f.redisAddr, "--redis-prefix", f.redisPrefix)
			}
		}
		bin := f.bin
		if s.name == "bare" {
			bin = f.bareBin
		}
		srv, err := startFloorServer(ctx, s.name, s.settle, bin, args, f)
		if srv != nil {
			servers[s.key] = srv
		}
		if err != nil {
			return err
		}
		if f.store == "redis" {
			srv.metrics = httpAddr
		}
	}

	for i, st := range steps {
		pair := []*floorServer{servers["bare"], servers[st.mode]}
		if f.warmup > 0 {
			for _, s := range pair {
				fmt.Fprintf(progress, "floor: %s %s ×%d: warm-up %v\n", s.name, st.mode, st.callers, f.warmup)
				if smp, err := s.measure(ctx, work, st, f.warmup); err != nil {
					return err
				} else if smp.errs > 0 {
					return fmt.Errorf("floor: %s %s ×%d: warm-up: %d errors, the first: %s", s.name, st.mode, st.callers, smp.errs, smp.firstErr)
				}
			}
		}
		// The window is cut in slices that take turns, the first of each
		// pair alternating, so that a burst of other work on the machine
		// falls on both servers rather than on one window.
		fmt.Fprintf(progress, "floor: %s ×%d: measuring %v on each, in %d alternating slices\n", st.mode, st.callers, f.duration, f.slices)
		samples := make([][]floorSample, len(pair))
		for k := range f.slices {
			order := []int{0, 1}
			if (i+k)%2 == 1 {
				order = []int{1, 0}
			}
			for _, j := range order {
				smp, err := pair[j].measure(ctx, work, st, f.duration/time.Duration(f.slices))
				if err != nil {
					return err
				}
				samples[j] = append(samples[j], smp)
			}
		}
		for j, s := range pair {
			rep.Windows = append(rep.Windows, s.window(st, samples[j]))
		}
	}
	rep.ratios()
	if f.json {
		err = rep.writeJSON(out)
	} else {
		rep.write(out)
	}
	if err != nil {
		return err
	}
	return rep.check()
}

// floorServer is one server under measure: a child process on loopback
// and the connections the callers share.
type floorServer struct {
	name, settle string
	cmd          *exec.Cmd
	stderr       *tailBuffer
	exited       chan struct{} // closed once the process has been waited for
	conns        []*grpc.ClientConn
	auth         []authv3.AuthorizationClient
	proc         []extprocv3.ExternalProcessorClient
	rls          []rlsv3.RateLimitServiceClient
	// metrics, for a Tollgate on Redis, is its HTTP address, whose
	// /metrics counts its round trips to Redis.
	metrics string
}

// startFloorServer starts bin with args and a free loopback --grpc-addr,
// and waits until it reports SERVING. The server it returns (even with an
// error) must be stopped.
func startFloorServer(ctx context.Context, name, settle, bin string, args []string, f floorFlags) (*floorServer, error) {
	addr, err := freeLoopbackAddr()
	if err != nil {
		return nil, err
	}
	s := &floorServer{name: name, settle: settle, stderr: &tailBuffer{max: 8 << 10}, exited: make(chan struct{})}
	s.cmd = exec.Command(bin, append(args, "--grpc-addr", addr)...)
	s.cmd.Env = childEnv(os.Environ())
	s.cmd.Stdout, s.cmd.Stderr = s.stderr, s.stderr
	// The child dies with the driver even if the driver is killed outright.
	s.cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	if err := s.cmd.Start(); err != nil {
		return nil, fmt.Errorf("floor: start %s: %w", name, err)
	}
	go func() { _ = s.cmd.Wait(); close(s.exited) }()
	for range f.conns {
		conn, err := grpc.NewClient(addr, grpc.WithTransportCredentials(insecure.NewCredentials()))
		if err != nil {
			return s, fmt.Errorf("floor: %s: %w", name, err)
		}
		s.conns = append(s.conns, conn)
		s.auth = append(s.auth, authv3.NewAuthorizationClient(conn))
		s.proc = append(s.proc, extprocv3.NewExternalProcessorClient(conn))
		s.rls = append(s.rls, rlsv3.NewRateLimitServiceClient(conn))
	}
	return s, s.waitServing(ctx, f.startTimeout)
}

func (s *floorServer) waitServing(ctx context.Context, timeout time.Duration) error {
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	hc := healthpb.NewHealthClient(s.conns[0])
	for {
		cctx, ccancel := context.WithTimeout(ctx, time.Second)
		r, err := hc.Check(cctx, &healthpb.HealthCheckRequest{})
		ccancel()
		if err == nil && r.GetStatus() == healthpb.HealthCheckResponse_SERVING {
			return nil
		}
		select {
		case <-s.exited:
			return fmt.Errorf("floor: %s exited before serving (%v); its output:\n%s", s.name, s.cmd.ProcessState, s.stderr)
		case <-ctx.Done():
			return fmt.Errorf("floor: %s not serving after %v (last: %v); its output:\n%s", s.name, timeout, err, s.stderr)
		case <-time.After(20 * time.Millisecond):
		}
	}
}

// stop kills the process and waits for it: a measuring instrument has
// nothing to drain.
func (s *floorServer) stop() {
	for _, c := range s.conns {
		_ = c.Close()
	}

	select {
	case <-s.exited:
	default:
		_ = s.cmd.Process.Kill()
		<-s.exited
	}
}

// floorSample is what one slice of a window measured on one server.
type floorSample struct {
	lat                         []time.Duration // of answered calls, denials included
	denied, errs, msgs          int64
	misses                      int64 // cachehit: calls the cache did not answer
	redisTrips                  int64 // the server's round trips to Redis
	firstErr                    string
	elapsed, server, driver, by time.Duration // by: the rest of the machine
}

// measure runs st's calls on s for d. Callers start no call after d;
// calls in flight then finish and count, so none is cut off.
func (s *floorServer) measure(ctx context.Context, w *floorWork, st floorStep, d time.Duration) (floorSample, error) {
	var smp floorSample
	pid := strconv.Itoa(s.cmd.Process.Pid)
	cpu0, err := procstat.CPU(pid)
	if err != nil {
		return smp, err
	}
	self0, err := procstat.CPU("self")
	if err != nil {
		return smp, err
	}
	busy0, err := procstat.MachineCPU()
	if err != nil {
		return smp, err
	}
	var trips0 int64
	if s.metrics != "" {
		if trips0, err = redisRoundTrips(ctx, s.metrics); err != nil {
			return smp, err
		}
	}
	var denied, errs, msgs, misses atomic.Int64
	var firstErr atomic.Value
	lat := make([][]time.Duration, st.callers)
	var wg sync.WaitGroup
	start := time.Now()
	end := start.Add(d)
	for c := range st.callers {
		wg.Go(func() {
			auth, proc, rl := s.auth[c%len(s.auth)], s.proc[c%len(s.proc)], s.rls[c%len(s.rls)]
			mine := make([]time.Duration, 0, 1<<12)
			for i := c; ctx.Err() == nil && time.Now().Before(end); i += st.callers {
				client := i % len(w.checks)
				t0 := time.Now()
				var err error
				switch st.mode {
				case modeCheck:
					_, err = w.check(ctx, auth, client)
				case modeRLS:
					err = w.rateLimit(ctx, rl, client)
				case modeCacheHit:
					if s.name == "bare" {
						_, err = w.checkRequest(ctx, auth, w.hit)
						break
					}
					if err = w.cacheHit(ctx, auth, proc); errors.Is(err, errCacheMiss) {
						misses.Add(1) // the call that fills the cache: not a hit's latency
						continue
					}
				default:
					var finish func() error
					var n int
					finish, n, err = w.wholeCall(ctx, auth, proc, client)
					msgs.Add(int64(n))
					if err == nil {
						took := time.Since(t0)
						if err = finish(); err == nil {
							mine = append(mine, took)
							continue
						}
					}
				}
				took := time.Since(t0)
				switch {
				case err == nil:
					mine = append(mine, took)
				case errors.Is(err, errDenied):
					denied.Add(1)
					mine = append(mine, took)
				default:
					errs.Add(1)
					firstErr.CompareAndSwap(nil, err.Error())
				}
			}
			lat[c] = mine
		})
	}
	wg.Wait()
	smp.elapsed = time.Since(start)
	cpu1, err := procstat.CPU(pid)
	if err != nil {
		return smp, err
	}
	self1, err := procstat.CPU("self")
	if err != nil {
		return smp, err
	}
	busy1, err := procstat.MachineCPU()
	if err != nil {
		return smp, err
	}
	if s.metrics != "" {
		trips1, err := redisRoundTrips(ctx, s.metrics)
		if err != nil {
			return smp, err
		}
		smp.redisTrips = trips1 - trips0
	}
	if err := ctx.Err(); err != nil {
		return smp, fmt.Errorf("floor: %s %s: %w", s.name, st.mode, err)
	}
	select {
	case <-s.exited:
		return smp, fmt.Errorf("floor: %s exited during the run (%v); its output:\n%s", s.name, s.cmd.ProcessState, s.stderr)
	default:
	}
	smp.lat = slices.Concat(lat...)
	smp.denied, smp.errs, smp.msgs, smp.misses = denied.Load(), errs.Load(), msgs.Load(), misses.Load()
	if e, ok := firstErr.Load().(string); ok {
		smp.firstErr = e
	}
	smp.server, smp.driver = cpu1-cpu0, self1-self0
	smp.by = max(0, busy1-busy0-smp.server-smp.driver)
	return smp, nil
}

// window sums a window's slices.
func (s *floorServer) window(st floorStep, smps []floorSample) floorWindow {
	win := floorWindow{Mode: st.mode, Callers: st.callers, Server: s.name, Settle: s.settle}
	var all []time.Duration
	for _, smp := range smps {
		all = append(all, smp.lat...)
		win.Denied += smp.denied
		win.Errors += smp.errs
		win.ProcMessages += smp.msgs
		win.CacheMisses += smp.misses
		win.RedisRoundTrips += smp.redisTrips
		if win.FirstError == "" {
			win.FirstError = smp.firstErr
		}
		win.Elapsed += smp.elapsed
		win.ServerCPU += smp.server
		win.DriverCPU += smp.driver
		win.OtherCPU += smp.by
	}
	slices.Sort(all)
	win.Calls = int64(len(all))
	if n := len(all); n > 0 {
		win.PerSecond = float64(n) / win.Elapsed.Seconds()
		win.P50, win.P99 = all[min(n-1, n/2)], all[min(n-1, n*99/100)]
		win.CPUPerCall = win.ServerCPU / time.Duration(n)
	}
	return win
}

// redisRoundTrips reads a server's tollgate_redis_round_trips_total
// from its /metrics at addr: its round trips to Redis so far (the
// readiness probe's PING every second among them).
func redisRoundTrips(ctx context.Context, addr string) (int64, error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, "http://"+addr+"/metrics", nil)
	if err != nil {
		return 0, fmt.Errorf("floor: redis round trips: %w", err)
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return 0, fmt.Errorf("floor: redis round trips: %w", err)
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		return 0, fmt.Errorf("floor: redis round trips: %w", err)
	}
	return metricValue(string(b), "tollgate_redis_round_trips_total")
}

// metricValue is the value of an unlabelled metric in a text exposition.
func metricValue(text, name string) (int64, error) {
	for line := range strings.Lines(text) {
		v, ok := strings.CutPrefix(strings.TrimSpace(line), name+" ")
		if !ok {
			continue
		}
		f, err := strconv.ParseFloat(strings.TrimSpace(v), 64)
		if err != nil {
			return 0, fmt.Errorf("floor: %s: %w", name, err)
		}
		return int64(f), nil
	}
	return 0, fmt.Errorf("floor: no %s in the server's /metrics", name)
}

// freeLoopbackAddr asks the kernel for a free port on 127.0.0.1.
func freeLoopbackAddr() (string, error) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return "", fmt.Errorf("floor: %w", err)
	}
	addr := l.Addr().String()
	return addr, l.Close()
}

// childEnv is the driver's environment without TOLLGATE_* variables,
// which would otherwise set the servers' flags behind the driver's back.
func childEnv(env []string) []string {
	return slices.DeleteFunc(slices.Clone(env), func(kv string) bool { return strings.HasPrefix(kv, "TOLLGATE_") })
}

// tailBuffer keeps the last max bytes written to it, for an error message.
type tailBuffer struct {
	mu  sync.Mutex
	max int
	b   []byte
}

func (t *tailBuffer) Write(p []byte) (int, error) {
	t.mu.Lock()
	defer t.mu.Unlock()
	t.b = append(t.b, p...)
	if over := len(t.b) - t.max; over > 0 {
		t.b = append(t.b[:0], t.b[over:]...)
	}
	return len(p), nil
}

func (t *tailBuffer) String() string {
	t.mu.Lock()
	defer t.mu.Unlock()
	return string(t.b)
}
