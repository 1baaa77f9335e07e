package main

import (
	"context"
	"fmt"
	"io"
	"log/slog"
	"os/exec"
	"slices"
	"strings"
	"time"

	"github.com/spf13/cobra"
	"github.com/spf13/pflag"

	"github.com/tollgate/tollgate/admission"
	"github.com/tollgate/tollgate/internal/pki"
	"github.com/tollgate/tollgate/internal/redirect"
	"github.com/tollgate/tollgate/policy"
)

// caFlags are the pod-local CA's flags, shared by `ca init`, `ca renew`
// and `serve --ca-dir` (docs/transparent.md).
type caFlags struct {
	cfg   pki.Config
	hosts []string // --host: more names than the policy's
}

func (f *caFlags) register(fl *pflag.FlagSet, prefix string) {
	n := func(name string) string {
		if strings.HasPrefix(name, prefix) {
			return name // serve's --ca-life, not --ca-ca-life
		}
		return prefix + name
	}
	fl.StringVar(&f.cfg.Dir, n("dir"), "", "the CA's directory: ca.crt, ca.key (0600) and the leaves on record; mount it in no other container")
	fl.StringVar(&f.cfg.SDSDir, n("sds-dir"), "", "where each leaf goes as an Envoy SDS file, <host>.json, for envoy/sidecar-transparent.yaml (default: DIR/sds)")
	fl.StringVar(&f.cfg.TrustDir, n("trust-dir"), "", "where the worker's trust goes: ca.crt (NODE_EXTRA_CA_CERTS) and bundle.pem, the system roots plus ca.crt (SSL_CERT_FILE, REQUESTS_CA_BUNDLE); off when empty")
	fl.StringVar(&f.cfg.SystemBundle, n("system-bundle"), f.cfg.SystemBundle, "the system CA bundle copied into bundle.pem (empty: bundle.pem holds ca.crt alone)")
	fl.DurationVar(&f.cfg.CALife, n("ca-life"), f.cfg.CALife, "lifetime of a new CA")
	fl.DurationVar(&f.cfg.LeafLife, n("leaf-life"), f.cfg.LeafLife, "lifetime of each leaf; renewed at two thirds of it")
	fl.StringSliceVar(&f.hosts, n("host"), nil, "a host name to issue a leaf for besides those the policy routes (repeatable)")
}

// config is the pki.Config for set's routed hosts plus --host.
func (f *caFlags) config(set *policy.Set) pki.Config {
	cfg := f.cfg
	if cfg.SDSDir == "" && cfg.Dir != "" {
		cfg.SDSDir = cfg.Dir + "/sds"
	}
	cfg.Hosts = routedHosts(set, f.hosts)
	return cfg
}

// routedHosts are the exact and wildcard host names set routes, plus extra,
// sorted: the names transparent mode can terminate. A route for any host
// ("") names none.
func routedHosts(set *policy.Set, extra []string) []string {
	hosts := slices.Clone(extra)
	for _, r := range set.Routes {
		if r.Host != "" {
			hosts = append(hosts, r.Host)
		}
	}
	slices.Sort(hosts)
	return slices.Compact(hosts)
}

func loadPolicyOrDefault(path string) (*policy.Set, error) {
	if path == "" {
		return policy.Default(), nil
	}
	set, err := policy.Load(path)
	if err != nil {
		return nil, fmt.Errorf("policy %s: %w", path, err)
	}
	return set, nil
}

func caCmd() *cobra.Command {
	cmd := &cobra.Command{Use: "ca", Short: "The pod-local CA of transparent mode (docs/transparent.md)"}
	var policyPath string
	f := caFlags{cfg: pki.DefaultConfig()}

	initCmd := &cobra.Command{
		Use:   "init",
		Short: "Make the CA (if DIR has none) and a leaf for every host the policy routes",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			set, err := loadPolicyOrDefault(policyPath)
			if err != nil {
				return err
			}
			res, err := pki.Init(f.config(set), time.Now())
			if err != nil {
				return err
			}
			return reportCA(cmd.OutOrStdout(), res)
		},
	}
	initCmd.Flags().BoolVar(&f.cfg.Remake, "remake", false, "replace a CA that does not cover every host (after the policy added one); the worker must be restarted to trust the new CA")

	var watchLoop bool
	renewCmd := &cobra.Command{
		Use:   "renew",
		Short: "Renew the leaves due (two thirds into their life); --watch keeps doing it",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			load := func() (pki.Config, error) {
				set, err := loadPolicyOrDefault(policyPath)
				if err != nil {
					return pki.Config{}, err
				}
				return f.config(set), nil
			}
			if watchLoop {
				log, err := newLogger(cmd.ErrOrStderr(), "info", "text")
				if err != nil {
					return err
				}
				renewLoop(cmd.Context(), load, log)
				return nil
			}
			cfg, err := load()
			if err != nil {
				return err
			}
			res, err := pki.Renew(cfg, time.Now())
			if err != nil {
				return err
			}
			return reportCA(cmd.OutOrStdout(), res)
		},
	}
	renewCmd.Flags().BoolVar(&watchLoop, "watch", false, "keep renewing until stopped, re-reading the policy each turn")

	hostsCmd := &cobra.Command{
		Use:   "hosts",
		Short: "Print the host names the policy routes: those the CA covers",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			set, err := loadPolicyOrDefault(policyPath)
			if err != nil {
				return err
			}
			for _, h := range routedHosts(set, f.hosts) {
				fmt.Fprintln(cmd.OutOrStdout(), h)
			}
			return nil
		},
	}
	for _, c := range []*cobra.Command{initCmd, renewCmd, hostsCmd} {
		c.Flags().StringVar(&policyPath, "policy", "", "policy file or directory whose routed hosts get leaves (default: the bundled policy)")
		if c != hostsCmd {
			f.register(c.Flags(), "")
			_ = c.MarkFlagRequired("dir")
		} else {
			c.Flags().StringSliceVar(&f.hosts, "host", nil, "a host name to add (repeatable)")
		}
	}
	cmd.AddCommand(initCmd, renewCmd, hostsCmd)
	return cmd
}

// reportCA prints what Init or Renew did; hosts left uncovered make it an
// error (exit status 1), after the covered ones were done.
func reportCA(w io.Writer, res pki.Result) error {
	if res.NewCA {
		fmt.Fprintln(w, "made a new CA")
	}
	if len(res.Renewed) == 0 {
		fmt.Fprintln(w, "no leaf was due")
	} else {
		fmt.Fprintln(w, "issued leaves for:", strings.Join(res.Renewed, " "))
	}
	if !res.Next.IsZero() {
		fmt.Fprintln(w, "next renewal:", res.Next.UTC().Format(time.RFC3339))
	}
	if len(res.Uncovered) > 0 {
		return &exitError{code: 1, err: uncoveredError(res.Uncovered)}
	}
	return nil
}

func uncoveredError(hosts []string) error {
	return fmt.Errorf("the CA does not cover %s (the policy routes it since the CA was made): no leaf for it; make a new CA with ca init --remake (or a new pod) and restart the worker to trust it", strings.Join(hosts, ", "))
}

// Bounds of the renewal loop's wait: at least a minute (a failing renewal
// is retried, not spun on), at most an hour (a policy change or a clock
// jump is noticed within it).
const (
	minRenewWait = time.Minute
	maxRenewWait = time.Hour
)

// renewLoop renews the leaves until ctx ends: each turn reads the config
// again (the policy may have changed), renews what is due, and waits until
// the next renewal, within [minRenewWait, maxRenewWait]. A failure is
// logged and the old leaves stay in place; they are renewed at two thirds
// of their life, so a third of it is left to fix the cause.
func renewLoop(ctx context.Context, load func() (pki.Config, error), log *slog.Logger) {
	for {
		wait := maxRenewWait
		cfg, err := load()
		if err == nil {
			var res pki.Result
			res, err = pki.Renew(cfg, time.Now())
			if len(res.Renewed) > 0 {
				log.Info("ca: issued leaves", slog.Any("hosts", res.Renewed), slog.Time("next", res.Next))
			}
			if len(res.Uncovered) > 0 {
				log.Error("ca: "+uncoveredError(res.Uncovered).Error(), slog.Any("hosts", res.Uncovered))
			}
			if !res.Next.IsZero() {
				wait = min(max(time.Until(res.Next), minRenewWait), maxRenewWait)
			}
		}
		if err != nil {
			log.Error("ca: renewal failed; the current leaves stay in place", slog.Any("error", err))
			wait = minRenewWait
		}
		t := time.NewTimer(wait)
		select {
		case <-ctx.Done():
			t.Stop()
			return
		case <-t.C:
		}
	}
}

// redirectCmd prints (or applies) the packet-filter rules that send the
// worker's outbound HTTPS to Envoy: the init container of transparent mode
// runs it with --apply.
func redirectCmd() *cobra.Command {
	cfg := redirect.DefaultConfig()
	var format string
	var apply bool
	cmd := &cobra.Command{
		Use:   "redirect",
		Short: "Print the iptables or nftables rules that send outbound :443 (but Envoy's) to Envoy's transparent listener; --apply installs them",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if format == "auto" {
				format = "iptables"
				if _, err := exec.LookPath("nft"); err == nil {
					format = "nft"
				}
			}
			type step struct {
				script string
				argv   []string
			}
			var steps []step
			switch format {
			case "nft":
				s, err := cfg.NFT()
				if err != nil {
					return err
				}
				steps = []step{{s, []string{"nft", "-f", "-"}}}
			case "iptables":
				v4, err := cfg.IPTables()
				if err != nil {
					return err
				}
				v6, err := cfg.IP6Tables()
				if err != nil {
					return err
				}
				steps = []step{{v4, []string{"iptables-restore", "--noflush"}}, {v6, []string{"ip6tables-restore", "--noflush"}}}
			default:
				return fmt.Errorf("--format %q: want auto, iptables or nft", format)
			}
			for _, s := range steps {
				if !apply {
					fmt.Fprint(cmd.OutOrStdout(), s.script)
					continue
				}
				c := exec.CommandContext(cmd.Context(), s.argv[0], s.argv[1:]...)
				c.Stdin = strings.NewReader(s.script)
				if out, err := c.CombinedOutput(); err != nil {
					return fmt.Errorf("redirect: %s: %w: %s", strings.Join(s.argv, " "), err, out)
				}
				fmt.Fprintf(cmd.OutOrStdout(), "applied with %s\n", strings.Join(s.argv, " "))
			}
			return nil
		},
	}
	fl := cmd.Flags()
	fl.IntVar(&cfg.EnvoyUID, "envoy-uid", cfg.EnvoyUID, "the uid Envoy runs as: its own connections are never redirected")
	fl.IntSliceVar(&cfg.ExtraUIDs, "exclude-uid", nil, "more uids left alone (repeatable)")
	fl.IntVar(&cfg.ListenPort, "port", cfg.ListenPort, "Envoy's transparent listener on 127.0.0.1")
	fl.IntSliceVar(&cfg.Ports, "dest-port", cfg.Ports, "destination ports redirected")
	fl.StringVar(&format, "format", "auto", "auto (nft when installed, else iptables), iptables or nft")
	fl.BoolVar(&apply, "apply", false, "install the rules (needs NET_ADMIN) instead of printing them")
	return cmd
}

// startCA makes the CA and the leaves at once (a failure stops serve before
// it is ready), then renews them in the background until ctx ends, for the
// hosts of the policy in force at each turn.
func startCA(ctx context.Context, wg interface{ Go(func()) }, f caFlags, policies admission.PolicySource, log *slog.Logger) error {
	res, err := pki.Init(f.config(policies.Policy()), time.Now())
	if err != nil {
		return fmt.Errorf("transparent mode: %w", err)
	}
	log.Info("ca: ready", slog.Bool("new_ca", res.NewCA), slog.Any("hosts", res.Renewed), slog.Time("next", res.Next))
	if len(res.Uncovered) > 0 {
		log.Error("ca: "+uncoveredError(res.Uncovered).Error(), slog.Any("hosts", res.Uncovered))
	}
	wg.Go(func() {
		renewLoop(ctx, func() (pki.Config, error) { return f.config(policies.Policy()), nil }, log)
	})
	return nil
}
