package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	authv3 "github.com/envoyproxy/go-control-plane/envoy/service/auth/v3"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/spf13/cobra"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"

	"github.com/tollgate/tollgate/authz"
	"github.com/tollgate/tollgate/limiter/redisstore"
	"github.com/tollgate/tollgate/policy"
)

type loadFlags struct {
	probe       probeFlags
	concurrency int
	duration    time.Duration
	requests    int64
	clients     int
	policyPath  string
	redisAddr   string
	settle      string
}

func loadCmd() *cobra.Command {
	f := loadFlags{}
	cmd := &cobra.Command{
		Use:   "load",
		Short: "Measure Check throughput and latency over loopback gRPC",
		Long: "load sends CheckRequests as fast as --concurrency workers can for --duration (or --requests)\n" +
			"and reports throughput and latency percentiles. Without --addr it starts an in-process\n" +
			"Tollgate on 127.0.0.1 (memory store) and measures that.",
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			return load(cmd.Context(), f, cmd.OutOrStdout())
		},
	}
	fl := cmd.Flags()
	fl.StringVar(&f.probe.addr, "addr", "", "Tollgate's gRPC address (default: start one in-process on loopback)")
	fl.StringVar(&f.probe.rawURL, "url", "https://api.openai.com/v1/chat/completions", "the upstream URL of every call")
	fl.StringVar(&f.probe.bodyFile, "body", "", "request body file")
	fl.StringVar(&f.probe.clientHeader, "client-header", "x-tollgate-client", "header that carries the client id")
	fl.StringVar(&f.policyPath, "policy", "", "policy for the in-process server (default: the bundled policy)")
	fl.StringVar(&f.redisAddr, "redis-addr", "", "give the in-process server a Redis store at this address (default: memory)")
	fl.StringVar(&f.settle, "settle", "immediate", "the in-process server's settlement: immediate or deferred")
	fl.IntVar(&f.concurrency, "concurrency", 16, "concurrent callers")
	fl.IntVar(&f.clients, "clients", 100, "distinct client ids, spread over the calls")
	fl.DurationVar(&f.duration, "duration", 10*time.Second, "how long to run")
	fl.Int64Var(&f.requests, "requests", 0, "stop after this many calls (0: run for --duration)")
	return cmd
}

// loadReport is what a load run measured.
type loadReport struct {
	Calls, Allowed, Denied, Errors int64
	Elapsed                        time.Duration
	P50, P90, P99, P999, Max       time.Duration
}

func (r loadReport) write(w io.Writer) {
	rate := float64(r.Calls) / r.Elapsed.Seconds()
	fmt.Fprintf(w, "calls %d in %v: %.0f checks/s (allowed %d, denied %d, errors %d)\n",
		r.Calls, r.Elapsed.Round(time.Millisecond), rate, r.Allowed, r.Denied, r.Errors)
	fmt.Fprintf(w, "latency p50 %v  p90 %v  p99 %v  p999 %v  max %v\n", r.P50, r.P90, r.P99, r.P999, r.Max)
}

func load(ctx context.Context, f loadFlags, out io.Writer) error {
	if f.concurrency <= 0 || f.clients <= 0 || (f.duration <= 0 && f.requests <= 0) {
		return errors.New("load: --concurrency and --clients must be positive, and --duration or --requests set")
	}
	addr := f.probe.addr
	if addr == "" {
		stop, a, err := startInProcess(ctx, f)
		if err != nil {
			return err
		}
		defer stop()
		addr = a
		store := "memory store"
		if f.redisAddr != "" {
			store = "redis store at " + f.redisAddr
		}
		fmt.Fprintf(out, "in-process tollgate on %s (%s, %s settlement)\n", addr, store, f.settle)
	}
	conn, err := grpc.NewClient(addr, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		return fmt.Errorf("load: %w", err)
	}
	defer conn.Close()
	client := authv3.NewAuthorizationClient(conn)

	reqs := make([]*authv3.CheckRequest, f.clients)
	for i := range reqs {
		pf := f.probe
		pf.client = fmt.Sprintf("load-client-%d", i)
		if reqs[i], err = buildCheckRequest(pf); err != nil {
			return err
		}
	}
	if _, err := client.Check(ctx, reqs[0]); err != nil { // fail fast, and warm the connection
		return fmt.Errorf("load: first check: %w", err)
	}

	runCtx := ctx
	if f.duration > 0 {
		var cancel context.CancelFunc
		runCtx, cancel = context.WithTimeout(ctx, f.duration)
		defer cancel()
	}
	// The run is over once its deadline has passed, even before runCtx's
	// timer fires: gRPC fails a call whose deadline has passed at once, so
	// waiting for runCtx.Err() would spin and count those failures as errors.
	deadline, hasDeadline := runCtx.Deadline()
	over := func() bool { return runCtx.Err() != nil || (hasDeadline && !time.Now().Before(deadline)) }
	var calls, allowed, denied, errs atomic.Int64
	lat := make([][]time.Duration, f.concurrency)
	var wg sync.WaitGroup
	start := time.Now()
	for w := range f.concurrency {
		wg.Add(1)
		go func() {
			defer wg.Done()
			mine := make([]time.Duration, 0, 1<<16)
			for i := w; !over(); i += f.concurrency {
				if f.requests > 0 && calls.Add(1) > f.requests {
					break
				} else if f.requests == 0 {
					calls.Add(1)
				}
				t0 := time.Now()
				resp, err := client.Check(runCtx, reqs[i%len(reqs)])
				d := time.Since(t0)
				switch {
				case err != nil:
					if !over() {
						errs.Add(1)
					} else {
						calls.Add(-1) // cut off by the end of the run, not a failure
					}
					continue
				case resp.GetOkResponse() != nil:
					allowed.Add(1)
				default:
					denied.Add(1)
				}
				mine = append(mine, d)
			}
			lat[w] = mine
		}()
	}
	wg.Wait()
	elapsed := time.Since(start)
	all := slices.Concat(lat...)
	slices.Sort(all)
	rep := loadReport{Calls: int64(len(all)) + errs.Load(), Allowed: allowed.Load(), Denied: denied.Load(), Errors: errs.Load(), Elapsed: elapsed}
	if n := len(all); n > 0 {
		q := func(p float64) time.Duration { return all[min(n-1, int(p*float64(n)))] }
		rep.P50, rep.P90, rep.P99, rep.P999, rep.Max = q(.50), q(.90), q(.99), q(.999), all[n-1]
	}
	rep.write(out)
	return nil
}

// startInProcess runs a Tollgate on loopback ports chosen by the kernel.
func startInProcess(ctx context.Context, f loadFlags) (stop func(), addr string, err error) {
	set := policy.Default()
	if f.policyPath != "" {
		if set, err = policy.Load(f.policyPath); err != nil {
			return nil, "", err
		}
	}
	sf := serveFlags{redis: redisstore.DefaultClientConfig(), redisPrefix: fmt.Sprintf("load-%d", time.Now().UnixNano()), store: "memory"}
	if f.redisAddr != "" {
		sf.store, sf.redis.Addrs = "redis", []string{f.redisAddr}
	}
	log := slog.New(slog.DiscardHandler)
	store, _, closeStore, err := openStore(ctx, sf, log)
	if err != nil {
		return nil, "", err
	}
	cfg := authz.DefaultConfig()
	cfg.GRPCAddr, cfg.HTTPAddr, cfg.DrainDelay = "127.0.0.1:0", "127.0.0.1:0", 0
	if cfg.Settlement, err = authz.ParseSettlement(f.settle); err != nil {
		return nil, "", errors.Join(err, closeStore())
	}
	srv, err := authz.New(cfg, authz.Deps{Policies: authz.StaticPolicy{Set: set}, Store: store,
		Registry: prometheus.NewRegistry(), Logger: log})
	if err != nil {
		return nil, "", errors.Join(err, closeStore())
	}
	done := make(chan struct{})
	go func() { defer close(done); _ = srv.Serve(context.WithoutCancel(ctx)) }()
	return func() {
		_ = srv.Shutdown(context.WithoutCancel(ctx))
		<-done
		_ = closeStore()
	}, srv.GRPCAddr().String(), nil
}
