// Command demo runs Tollgate's demo with nothing but this machine: a
// throwaway redis-server, two `tollgate serve --cluster` processes in one
// fleet on it, the fake provider (cmd/fakeapi), an Envoy stand-in
// (internal/envoysim running envoy/sidecar.yaml) in front of each Tollgate,
// and a traffic driver: four clients on four tiers sending immediate,
// normal and batch calls, one of them over its budget. It prints a table
// every second (admitted, held, downgraded, denied per tier; spend against
// budget; p99 latency) and a summary, and stops by itself.
//
//	make demo                        # builds bin/tollgate and bin/fakeapi, runs 60s
//	make demo DEMO_DURATION=20s
//	go run ./cmd/demo --duration 20s # from the repository root, after make build-demo
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"net/http"
	"os"
	"os/signal"
	"syscall"
	"time"
)

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	err := run(ctx, os.Args[1:], os.Getenv, os.Stdout)
	stop()
	if err != nil {
		fmt.Fprintln(os.Stderr, "demo:", err)
		os.Exit(1)
	}
}

type config struct {
	stack    stackConfig
	duration time.Duration
	pause    time.Duration
	refresh  time.Duration
	clear    bool
}

func run(ctx context.Context, args []string, getenv func(string) string, out io.Writer) error {
	fs := flag.NewFlagSet("demo", flag.ContinueOnError)
	fs.SetOutput(out)
	cfg := config{stack: stackConfig{Members: 2}, duration: 60 * time.Second, refresh: time.Second}
	if v := getenv("DEMO_DURATION"); v != "" {
		d, err := time.ParseDuration(v)
		if err != nil {
			return fmt.Errorf("DEMO_DURATION=%q: %w", v, err)
		}
		cfg.duration = d
	}
	fs.DurationVar(&cfg.duration, "duration", cfg.duration, "how long the traffic runs (env DEMO_DURATION)")
	fs.StringVar(&cfg.stack.Tollgate, "tollgate", "bin/tollgate", "the tollgate binary")
	fs.StringVar(&cfg.stack.FakeAPI, "fakeapi", "bin/fakeapi", "the fakeapi binary")
	fs.StringVar(&cfg.stack.Policy, "policy", "deploy/demo/policy.yaml", "the policy both Tollgates run")
	fs.StringVar(&cfg.stack.EnvoyConfig, "envoy-config", "envoy/sidecar.yaml", "the Envoy config the stand-ins run")
	fs.IntVar(&cfg.stack.Members, "members", cfg.stack.Members, "Tollgates in the fleet, each behind its own Envoy stand-in")
	fs.DurationVar(&cfg.pause, "pause", 200*time.Millisecond, "mean pause of each worker between calls")
	fs.DurationVar(&cfg.refresh, "refresh", cfg.refresh, "how often the table is printed")
	clear := fs.String("clear", "auto", "clear the screen before each table: auto (when stdout is a terminal), always, never")
	if err := fs.Parse(args); err != nil {
		return err
	}
	switch *clear {
	case "auto":
		cfg.clear = isTerminal(out)
	case "always":
		cfg.clear = true
	case "never":
	default:
		return fmt.Errorf("--clear %q: want auto, always or never", *clear)
	}
	if cfg.duration <= 0 || cfg.stack.Members < 1 || cfg.pause <= 0 || cfg.refresh <= 0 {
		return errors.New("--duration, --members, --pause and --refresh must be positive")
	}
	return demo(ctx, cfg, out)
}

func demo(ctx context.Context, cfg config, out io.Writer) (err error) {
	logFile, err := os.CreateTemp("", "tollgate-demo-*.log")
	if err != nil {
		return err
	}
	defer func() { err = errors.Join(err, logFile.Close()) }()
	cfg.stack.Log = logFile

	fmt.Fprintf(out, "starting redis-server, fakeapi, %d Tollgates (%s) and their Envoy stand-ins; logs in %s\n",
		cfg.stack.Members, cfg.stack.Tollgate, logFile.Name())
	s, err := startStack(ctx, cfg.stack)
	if err != nil {
		return err
	}
	defer func() {
		fmt.Fprintln(out, "stopping")
		err = errors.Join(err, s.close())
	}()

	t := newTally(profiles)
	var fronts []string
	for _, m := range s.members {
		fronts = append(fronts, m.front)
	}
	d := &driver{fronts: fronts, pause: cfg.pause, record: t.record,
		client: &http.Client{Transport: &http.Transport{MaxIdleConnsPerHost: 32}}}
	defer d.client.CloseIdleConnections()

	start := time.Now()
	tctx, cancel := context.WithTimeout(ctx, cfg.duration)
	defer cancel()
	done := make(chan struct{})
	go func() { defer close(done); d.run(tctx) }()

	tick := time.NewTicker(cfg.refresh)
	defer tick.Stop()
	api := s.members[0].apiAddr
	for running := true; running; {
		select {
		case <-done:
			running = false
		case <-tick.C:
			pollSpend(ctx, api, s.apiToken, t)
			if cfg.clear {
				fmt.Fprint(out, "\033[H\033[2J")
			}
			elapsed := time.Since(start)
			tot := t.totals()
			calls := 0
			for _, n := range tot {
				calls += n
			}
			fmt.Fprintf(out, "\ntollgate demo: %s of %s; %d Tollgates on Redis %s, fleet; %d calls (%.1f/s)\n\n",
				elapsed.Round(time.Second), cfg.duration, len(s.members), s.redis.Addr, calls, float64(calls)/elapsed.Seconds())
			t.table(out)
		}
	}
	elapsed := time.Since(start)
	// Spend is booked when each call settles: give the last ones a moment.
	time.Sleep(300 * time.Millisecond)
	pollSpend(ctx, api, s.apiToken, t)
	t.summary(out, elapsed) // also when interrupted: the summary of what ran
	return nil
}

func isTerminal(w io.Writer) bool {
	f, ok := w.(*os.File)
	if !ok {
		return false
	}
	st, err := f.Stat()
	return err == nil && st.Mode()&os.ModeCharDevice != 0
}
