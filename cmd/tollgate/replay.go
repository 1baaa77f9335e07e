package main

import (
	"errors"
	"fmt"
	"os"

	"github.com/spf13/cobra"

	"github.com/tollgate/tollgate/admission/decisionlog"
	"github.com/tollgate/tollgate/policy"
)

func replayCmd() *cobra.Command {
	var logPath, newPath, basePath string
	var asJSON bool
	cmd := &cobra.Command{
		Use:   "replay --policy NEW --log FILE [--base OLD]",
		Short: "Replay a decision log under another policy: how admissions, holds, refusals, downgrades and spend would change",
		Long: "Replays every decision of a decision log (serve --decision-log) under the base policy and under the new one,\n" +
			"each on its own memory store and a fake clock that follows the log's times, and prints per tier and per client\n" +
			"what changes. The same log and policies always print the same bytes. See docs/replay.md.",
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if logPath == "" || newPath == "" {
				return errors.New("replay needs --log FILE and --policy NEW")
			}
			f, err := os.Open(logPath)
			if err != nil {
				return err
			}
			lg, err := decisionlog.Parse(f)
			if cerr := f.Close(); err == nil {
				err = cerr
			}
			if err != nil {
				return fmt.Errorf("decision log %s: %w", logPath, err)
			}
			if basePath == "" {
				if basePath = lg.Policy; basePath == "" {
					return fmt.Errorf("decision log %s names no policy: give the one it was recorded under with --base", logPath)
				}
			}
			base, err := loadReplayPolicy(basePath)
			if err != nil {
				return fmt.Errorf("base policy: %w", err)
			}
			next, err := loadReplayPolicy(newPath)
			if err != nil {
				return fmt.Errorf("new policy: %w", err)
			}
			rep, err := decisionlog.Compare(cmd.Context(), lg, base, next, basePath, newPath)
			if err != nil {
				return err
			}
			if asJSON {
				return rep.WriteJSON(cmd.OutOrStdout())
			}
			return rep.WriteText(cmd.OutOrStdout())
		},
	}
	fl := cmd.Flags()
	fl.StringVar(&logPath, "log", "", "the decision log to replay (serve --decision-log)")
	fl.StringVar(&newPath, "policy", "", "the policy to try (file or directory)")
	fl.StringVar(&basePath, "base", "", "the policy to compare with (default: the one the log was recorded under; \"bundled\" for the bundled default)")
	fl.BoolVar(&asJSON, "json", false, "print JSON")
	return cmd
}

func loadReplayPolicy(path string) (*policy.Set, error) {
	if path == "bundled" {
		return policy.Default(), nil
	}
	return policy.Load(path)
}
