// Command soak runs `tollgate serve` (the built binary) for a long while
// under mixed and hostile traffic on each store, and says whether it stayed
// well: every outcome one the soak expects, resident memory and goroutines
// flat, nothing left held once the traffic stops, a clean exit on SIGTERM.
//
//	soak --bin bin/tollgate --duration 10m --stores memory,redis,cluster
//
// For each store it starts the members (one process; or a fleet of
// --members sharing one Redis), a throwaway redis-server when the store
// needs one, the fake provider (internal/fakeapi) and the Envoy stand-in
// (internal/envoysim, running envoy/sidecar.yaml) in front of each member,
// all on 127.0.0.1. Traffic runs for --warmup, stops until the members are
// at rest (their baseline), then runs for --duration while each member's
// RSS (/proc/<pid>/status) and goroutines (go_goroutines on /metrics) are
// read every --sample-every; then it waits for the queue and every
// client's calls in flight and reservations to drain to zero, reads the
// members at rest again, and stops them with SIGTERM. It prints a report
// per store and exits 1 if any store failed. It stops by itself: every
// call and wait is bounded, and the children die with it.
//
// It is a separate command rather than a `tollgate` subcommand: it drives
// the Envoy stand-in and the fake provider, which have no place in the
// shipped binary (and sit at the binaries' layer themselves).
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"os/signal"
	"regexp"
	"slices"
	"strings"
	"syscall"
	"time"
)

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	err := run(ctx, os.Args[1:], os.Stdout, os.Stderr)
	stop()
	if errors.Is(err, flag.ErrHelp) {
		return
	}
	if err != nil {
		fmt.Fprintln(os.Stderr, "soak:", err)
		os.Exit(1)
	}
}

// config is one soak run.
type config struct {
	bin, policy, envoyConfig string
	stores                   []string
	members                  int
	duration, warmup, every  time.Duration
	scale                    float64
	rss, goroutines          tolerance
	idleGoroutines, idleFDs  tolerance
	startTimeout, restQuiet  time.Duration
	kinds                    *regexp.Regexp
}

// stores are the stores a soak can run on.
var stores = []string{"memory", "redis", "cluster"}

func parseFlags(args []string, stderr io.Writer) (config, error) {
	fs := flag.NewFlagSet("soak", flag.ContinueOnError)
	fs.SetOutput(stderr)
	c := config{}
	var storeList, kinds string
	var rssMiB, rssPct, goAbs, goPct, idleGo, idleFDs float64
	fs.StringVar(&c.bin, "bin", "bin/tollgate", "the tollgate binary to soak (run as: BIN serve ...)")
	fs.StringVar(&c.policy, "policy", "testdata/good/soak.yaml", "the members' policy (its clients and routes are the soak's)")
	fs.StringVar(&c.envoyConfig, "envoy-config", "envoy/sidecar.yaml", "the Envoy config the stand-in runs")
	fs.StringVar(&storeList, "stores", strings.Join(stores, ","), "stores to soak in turn, comma- or space-separated: memory, redis, cluster (a fleet on one Redis)")
	fs.IntVar(&c.members, "members", 3, "members of the fleet of the cluster store")
	fs.DurationVar(&c.duration, "duration", 10*time.Minute, "measured traffic per store, after the warm-up")
	fs.DurationVar(&c.warmup, "warmup", 0, "traffic before the baseline, not judged (default: a tenth of --duration, 2s to 60s)")
	fs.DurationVar(&c.every, "sample-every", 2*time.Second, "read each member's RSS and goroutines this often")
	fs.Float64Var(&c.scale, "scale", 1, "multiply every kind's rate (about 80 calls a second at 1)")
	fs.Float64Var(&rssMiB, "rss-tolerance-mib", 16, "RSS may grow this much and still be flat, or --rss-tolerance-pct of its start if larger")
	fs.Float64Var(&rssPct, "rss-tolerance-pct", 20, "see --rss-tolerance-mib")
	fs.Float64Var(&goAbs, "goroutine-tolerance", 25, "goroutines under load may grow this much and still be flat, or --goroutine-tolerance-pct of their start if larger")
	fs.Float64Var(&goPct, "goroutine-tolerance-pct", 25, "see --goroutine-tolerance")
	fs.Float64Var(&idleGo, "idle-goroutines", 10, "goroutines at rest after the run may exceed those before by this many")
	fs.Float64Var(&idleFDs, "idle-fds", 10, "open files at rest (but connections to Redis) after the run may exceed those before by this many")
	fs.StringVar(&kinds, "kinds", "", "send only the kinds of call whose name matches this regular expression (default: all)")
	fs.DurationVar(&c.restQuiet, "rest-quiet", 3*time.Second, "once the traffic stops, wait this long before reading a member at rest")
	fs.DurationVar(&c.startTimeout, "start-timeout", 30*time.Second, "how long a member may take to be ready")
	if err := fs.Parse(args); err != nil {
		return c, err
	}
	if fs.NArg() > 0 {
		return c, fmt.Errorf("unexpected arguments %q", fs.Args())
	}
	for _, s := range strings.FieldsFunc(storeList, func(r rune) bool { return r == ',' || r == ' ' }) {
		if !slices.Contains(stores, s) {
			return c, fmt.Errorf("--stores: %q is not one of %s", s, strings.Join(stores, ", "))
		}
		c.stores = append(c.stores, s)
	}
	var errs []error
	var err error
	if c.kinds, err = regexp.Compile(kinds); err != nil {
		errs = append(errs, fmt.Errorf("--kinds: %w", err))
	}
	if len(c.stores) == 0 {
		errs = append(errs, errors.New("--stores names no store"))
	}
	if c.duration <= 0 || c.every <= 0 || c.scale <= 0 || c.warmup < 0 || c.restQuiet < 0 || c.members < 1 {
		errs = append(errs, errors.New("--duration, --sample-every, --scale and --members must be positive, --warmup and --rest-quiet not negative"))
	}
	if c.warmup == 0 {
		c.warmup = min(max(c.duration/10, 2*time.Second), time.Minute)
	}
	c.rss = tolerance{Abs: rssMiB * (1 << 20), Rel: rssPct / 100}
	c.goroutines = tolerance{Abs: goAbs, Rel: goPct / 100}
	c.idleGoroutines, c.idleFDs = tolerance{Abs: idleGo}, tolerance{Abs: idleFDs}
	return c, errors.Join(errs...)
}

// run soaks each store in turn and fails if any store failed.
func run(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	c, err := parseFlags(args, stderr)
	if err != nil {
		return err
	}
	if _, err := os.Stat(c.bin); err != nil {
		return fmt.Errorf("--bin: %w (make build makes it)", err)
	}
	var reps []*storeReport
	var failed []string
	for _, s := range c.stores {
		rep, err := soakStore(ctx, c, s, stderr)
		if rep != nil {
			rep.write(stdout)
			reps = append(reps, rep)
			if len(rep.Problems) > 0 {
				failed = append(failed, s)
			}
		}
		if err != nil {
			return fmt.Errorf("%s: %w", s, err)
		}
	}
	summary(stdout, reps)
	if len(failed) > 0 {
		return fmt.Errorf("the soak failed on %s", strings.Join(failed, ", "))
	}
	return nil
}
