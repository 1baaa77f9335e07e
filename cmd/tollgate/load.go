package main

import (
	"context"
	"crypto/rand"
	"encoding/base64"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	authv3 "github.com/envoyproxy/go-control-plane/envoy/service/auth/v3"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/spf13/cobra"
	"github.com/spf13/pflag"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"

	"github.com/tollgate/tollgate/admission"
	"github.com/tollgate/tollgate/authz"
	"github.com/tollgate/tollgate/cluster"
	"github.com/tollgate/tollgate/limiter/redisstore"
	"github.com/tollgate/tollgate/policy"
)

type loadFlags struct {
	probe       probeFlags
	concurrency int
	duration    time.Duration
	warmup      time.Duration
	requests    int64
	clients     int
	policyPath  string
	redisAddr   string
	settle      string
	nodes       int
	cluster     bool
	pool        string
}

func loadCmd() *cobra.Command {
	f := loadFlags{}
	cmd := &cobra.Command{
		Use:   "load",
		Short: "Measure Check throughput and latency over loopback gRPC",
		Long: "load sends CheckRequests as fast as --concurrency workers can for --duration (or --requests)\n" +
			"and reports throughput and latency percentiles. Without --addr it starts an in-process\n" +
			"Tollgate on 127.0.0.1 (memory store) and measures that; with --nodes N (and --redis-addr)\n" +
			"a fleet of N members sharing that Redis, the workers spread over them, and it reports how\n" +
			"many Redis round trips the decisions took and, with --overshoot-pool, how far the fleet\n" +
			"admitted past that pool's limit.",
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
	fl.IntVar(&f.nodes, "nodes", 1, "in-process Tollgates: more than one form a fleet (needs --redis-addr)")
	fl.IntVar(&f.nodes, "members", 1, "the same as --nodes: the fleet's members")
	fl.BoolVar(&f.cluster, "cluster", false, "run the in-process Tollgate(s) as fleet members (leases and gossip; implied by --nodes > 1)")
	fl.StringVar(&f.pool, "overshoot-pool", "", "a pool counted in requests: report admitted calls against its capacity + refill × time")
	fl.IntVar(&f.concurrency, "concurrency", 16, "concurrent callers")
	fl.IntVar(&f.clients, "clients", 100, "distinct client ids, spread over the calls")
	fl.DurationVar(&f.duration, "duration", 10*time.Second, "how long to run")
	fl.DurationVar(&f.warmup, "warmup", 0, "run this long first, not measured (every client's keys leased, budgets read): the steady state")
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
	if f.concurrency <= 0 || f.clients <= 0 || (f.duration <= 0 && f.requests <= 0) || f.warmup < 0 {
		return errors.New("load: --concurrency and --clients must be positive, --duration or --requests set, --warmup not negative")
	}
	if f.nodes < 1 || (f.nodes > 1 && f.probe.addr != "") {
		return errors.New("load: --nodes must be at least 1, and starts in-process members (not with --addr)")
	}
	f.cluster = f.cluster || f.nodes > 1
	if f.cluster && f.redisAddr == "" {
		return errors.New("load: a fleet (--nodes > 1 or --cluster) shares a Redis: give --redis-addr")
	}
	var err error
	var overPool *policy.Pool
	if f.pool != "" {
		if overPool, err = overshootPool(f); err != nil {
			return err
		}
	}
	addrs := []string{f.probe.addr}
	var fleet *inProcess
	if f.probe.addr == "" {
		if fleet, err = startInProcess(ctx, f); err != nil {
			return err
		}
		defer fleet.stop()
		addrs = fleet.addrs
		store := "memory store"
		if f.redisAddr != "" {
			store = "redis store at " + f.redisAddr
		}
		if f.cluster {
			store += fmt.Sprintf(", a fleet of %d with leases and gossip", f.nodes)
		}
		fmt.Fprintf(out, "in-process tollgate on %s (%s, %s settlement)\n", strings.Join(addrs, ", "), store, f.settle)
	}
	clients := make([]authv3.AuthorizationClient, len(addrs))
	for i, addr := range addrs {
		conn, err := grpc.NewClient(addr, grpc.WithTransportCredentials(insecure.NewCredentials()))
		if err != nil {
			return fmt.Errorf("load: %w", err)
		}
		defer conn.Close()
		clients[i] = authv3.NewAuthorizationClient(conn)
	}

	reqs := make([]*authv3.CheckRequest, f.clients)
	for i := range reqs {
		pf := f.probe
		pf.client = fmt.Sprintf("load-client-%d", i)
		if reqs[i], err = buildCheckRequest(pf); err != nil {
			return err
		}
	}
	first := time.Now() // an overshoot counts from the first check: the warm-up ones take from the bucket too
	for i, c := range clients {
		if _, err := c.Check(ctx, reqs[0]); err != nil { // fail fast, and warm the connection
			return wrongPort(ctx, "load", addrs[i], protoGRPC, "--grpc-addr", "127.0.0.1:8081", fmt.Errorf("load: first check: %w", err))
		}
	}
	var warmAllowed int64
	if f.warmup > 0 {
		wctx, cancel := context.WithTimeout(ctx, f.warmup)
		var wg sync.WaitGroup
		var n atomic.Int64
		for w := range f.concurrency {
			wg.Add(1)
			go func() {
				defer wg.Done()
				for i := w; wctx.Err() == nil; i += f.concurrency {
					if resp, err := clients[w%len(clients)].Check(wctx, reqs[i%len(reqs)]); err == nil && resp.GetOkResponse() != nil {
						n.Add(1)
					}
				}
			}()
		}
		wg.Wait()
		cancel()
		warmAllowed = n.Load()
		fmt.Fprintf(out, "warmed up for %v (not measured)\n", f.warmup)
	}
	var trips0 int64
	var kinds0 map[string]int64
	if fleet != nil {
		trips0, kinds0 = fleet.trips.Count(), fleet.byKind.snapshot()
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
			client := clients[w%len(clients)]
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
	if fleet != nil && f.redisAddr != "" {
		trips := fleet.trips.Count() - trips0
		perCall := float64(trips) / float64(max(rep.Calls, 1))
		fmt.Fprintf(out, "redis round trips %d: %.0f per 1,000 checks, %.3f per decision", trips, 1000*perCall, perCall)
		if paths, total := fleet.paths(); total > 0 {
			fmt.Fprintf(out, " (decided locally %.1f%%, after a lease %.1f%%, by Redis %.1f%%, on what a member held while Redis was slow %.1f%%, in outage %.1f%%)",
				100*paths["local"]/total, 100*paths["lease"]/total, 100*paths["shared"]/total, 100*paths["slow"]/total, 100*paths["outage"]/total)
		}
		fmt.Fprintln(out)
		fmt.Fprintf(out, "round trips per 1,000 checks by script: %s\n", fleet.byKind.since(kinds0, rep.Calls))
	}
	if over := overPool; over != nil {
		// The warm-up checks were admitted too, from the same bucket.
		admitted := rep.Allowed + int64(len(clients)) + warmAllowed
		elapsed := time.Since(first)
		rt := float64(over.Limit.Refill) / max(over.Limit.Per, time.Second).Seconds() * elapsed.Seconds() // a report, not a ledger
		c := float64(over.Limit.Capacity)
		bound := c + rt + float64(len(clients))
		within := "within it"
		if float64(admitted) > bound {
			within = "ABOVE it"
		}
		fmt.Fprintf(out, "overshoot on pool %s: admitted %d in %v: %.3f × R·t, %.3f × (C + R·t); the bound C + R·t + one call per member is %.0f = %.3f × (C + R·t): %s\n",
			over.Name, admitted, elapsed.Round(time.Millisecond), float64(admitted)/rt, float64(admitted)/(c+rt), bound, bound/(c+rt), within)
	}
	return nil
}

// overshootPool finds the pool a run's overshoot is measured on: counted
// in requests, so that each admitted call is one unit of it.
func overshootPool(f loadFlags) (*policy.Pool, error) {
	set := policy.Default()
	if f.policyPath != "" {
		var err error
		if set, err = policy.Load(f.policyPath); err != nil {
			return nil, err
		}
	}
	p := set.Pools[f.pool]
	if p == nil || p.Unit != policy.UnitRequest || p.Limit.Refill <= 0 {
		return nil, fmt.Errorf("load: --overshoot-pool %q must be a pool of the policy counted in requests, with a refill", f.pool)
	}
	return p, nil
}

// inProcess is the Tollgates a load run started on loopback: one, or a
// fleet sharing one Redis.
type inProcess struct {
	addrs  []string
	regs   []*prometheus.Registry
	fleets []*cluster.Fleet
	seed   string                 // the first member's gossip address
	trips  *redisstore.RoundTrips // all members'
	byKind *tripsByScript         // the same, by script
	stop   func()
}

// startInProcess runs f.nodes Tollgates on loopback ports chosen by the
// kernel; in a fleet, each is a member with gossip on 127.0.0.1.
func startInProcess(ctx context.Context, f loadFlags) (*inProcess, error) {
	set := policy.Default()
	if f.policyPath != "" {
		var err error
		if set, err = policy.Load(f.policyPath); err != nil {
			return nil, err
		}
	}
	sf := serveFlags{redis: redisstore.DefaultClientConfig(), redisPrefix: fmt.Sprintf("load-%d", time.Now().UnixNano()), store: "memory"}
	if f.redisAddr != "" {
		sf.store, sf.redis.Addrs = "redis", []string{f.redisAddr}
	}
	if f.cluster {
		key := make([]byte, 32)
		_, _ = rand.Read(key)
		sf.cluster.register(pflag.NewFlagSet("load", pflag.ContinueOnError)) // the defaults
		sf.cluster.enabled, sf.cluster.key = true, base64.StdEncoding.EncodeToString(key)
		sf.cluster.node.BindAddr, sf.cluster.node.BindPort = "127.0.0.1", 0
	}
	log := slog.New(slog.DiscardHandler)
	p := &inProcess{trips: &redisstore.RoundTrips{}, byKind: newTripsByScript()}
	var stops []func()
	p.stop = func() {
		for i := len(stops) - 1; i >= 0; i-- {
			stops[i]()
		}
	}
	for i := range f.nodes {
		nf := sf
		if f.cluster {
			nf.cluster.node.Name = fmt.Sprintf("load-%d", i)
			if i > 0 {
				nf.cluster.node.Seeds = []string{p.seed}
			}
		}
		reg := prometheus.NewRegistry()
		st, err := openStore(ctx, nf, nil, reg, log) // load never spreads
		if err != nil {
			p.stop()
			return nil, err
		}
		if st.redis != nil {
			st.redis.AddHook(p.trips)
			st.redis.AddHook(p.byKind)
		}
		if st.fleet != nil && i == 0 {
			p.seed = st.fleet.Node.Addr()
		}
		cfg := authz.DefaultConfig()
		cfg.GRPCAddr, cfg.HTTPAddr, cfg.APIAddr, cfg.DrainDelay = "127.0.0.1:0", "127.0.0.1:0", "127.0.0.1:0", 0
		if cfg.Settlement, err = admission.ParseSettlement(f.settle); err != nil {
			p.stop()
			return nil, errors.Join(err, st.close())
		}
		srv, err := authz.New(cfg, authz.Deps{Policies: admission.StaticPolicy{Set: set}, Store: st.store, Registry: reg, Logger: log})
		if err != nil {
			p.stop()
			return nil, errors.Join(err, st.close())
		}
		done := make(chan struct{})
		go func() { defer close(done); _ = srv.Serve(context.WithoutCancel(ctx)) }()
		stops = append(stops, func() {
			_ = srv.Shutdown(context.WithoutCancel(ctx))
			<-done
			_ = st.close()
		})
		p.addrs, p.regs = append(p.addrs, srv.GRPCAddr().String()), append(p.regs, reg)
		p.fleets = append(p.fleets, st.fleet)
	}
	if f.cluster { // every member sees every other before the run
		deadline := time.Now().Add(10 * time.Second)
		for _, fl := range p.fleets {
			for fl.Node.Live() < f.nodes {
				if time.Now().After(deadline) {
					p.stop()
					return nil, fmt.Errorf("load: the fleet did not form: %s sees %d of %d members", fl.Node.Name(), fl.Node.Live(), f.nodes)
				}
				time.Sleep(10 * time.Millisecond)
			}
		}
	}
	return p, nil
}

// paths sums the fleet's decisions by how they were taken.
func (p *inProcess) paths() (map[string]float64, float64) {
	out, total := map[string]float64{}, 0.0
	for _, reg := range p.regs {
		mfs, err := reg.Gather()
		if err != nil {
			continue
		}
		for _, mf := range mfs {
			if mf.GetName() != "tollgate_cluster_decisions_total" {
				continue
			}
			for _, m := range mf.GetMetric() {
				for _, lp := range m.GetLabel() {
					if lp.GetName() == "path" {
						out[lp.GetValue()] += m.GetCounter().GetValue()
						total += m.GetCounter().GetValue()
					}
				}
			}
		}
	}
	return out, total
}
