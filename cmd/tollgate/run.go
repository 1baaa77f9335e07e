package main

import (
	"context"
	"fmt"
	"io"
	"log/slog"
	"strings"

	"github.com/spf13/cobra"
	"github.com/spf13/pflag"
)

// version is set at build time with -ldflags "-X main.version=...".
var version = "dev"

// run is the whole program: main only adds signals and the exit status, so
// tests call run directly.
func run(ctx context.Context, args []string, getenv func(string) string, stdout, stderr io.Writer) error {
	return runIO(ctx, args, getenv, nil, stdout, stderr)
}

// runIO is run with stdin (nil: the process's own).
func runIO(ctx context.Context, args []string, getenv func(string) string, stdin io.Reader, stdout, stderr io.Writer) error {
	root := &cobra.Command{
		Use:           "tollgate",
		Short:         "Rate-limit and spend-control sidecar for calls to paid APIs",
		SilenceUsage:  true,
		SilenceErrors: true,
		Version:       version,
	}
	root.SetArgs(args)
	root.SetOut(stdout)
	root.SetErr(stderr)
	if stdin != nil {
		root.SetIn(stdin)
	}
	root.AddCommand(serveCmd(getenv), probeCmd(), policyCmd(), caCmd(), redirectCmd(), loadCmd(), usageCmd(getenv), estimateCmd(getenv), optimizeCmd(getenv), floorCmd(), bareFloorCmd(), replayCmd())
	// Every flag can also come from TOLLGATE_<FLAG> (dashes as underscores);
	// a flag given on the command line wins.
	root.PersistentPreRunE = func(cmd *cobra.Command, _ []string) error {
		var errs []string
		cmd.Flags().VisitAll(func(f *pflag.Flag) {
			if f.Changed {
				return
			}
			if v := getenv(envName(f.Name)); v != "" {
				if err := cmd.Flags().Set(f.Name, v); err != nil {
					errs = append(errs, fmt.Sprintf("%s=%q: %v", envName(f.Name), v, err))
				}
			}
		})
		if len(errs) > 0 {
			return fmt.Errorf("environment: %s", strings.Join(errs, "; "))
		}
		return nil
	}
	return root.ExecuteContext(ctx)
}

func envName(flag string) string {
	return "TOLLGATE_" + strings.ToUpper(strings.ReplaceAll(flag, "-", "_"))
}

func newLogger(w io.Writer, level, format string) (*slog.Logger, error) {
	var lv slog.Level
	if err := lv.UnmarshalText([]byte(level)); err != nil {
		return nil, fmt.Errorf("log level %q: want debug, info, warn or error", level)
	}
	opts := &slog.HandlerOptions{Level: lv}
	switch format {
	case "text":
		return slog.New(slog.NewTextHandler(w, opts)), nil
	case "json":
		return slog.New(slog.NewJSONHandler(w, opts)), nil
	}
	return nil, fmt.Errorf("log format %q: want text or json", format)
}
