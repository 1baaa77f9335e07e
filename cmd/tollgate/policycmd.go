package main

import (
	"encoding/json"
	"fmt"

	"github.com/spf13/cobra"

	"github.com/tollgate/tollgate/policy"
)

func policyCmd() *cobra.Command {
	cmd := &cobra.Command{Use: "policy", Short: "Work with policy files"}
	var asJSON bool
	check := &cobra.Command{
		Use:   "check [PATH]",
		Short: "Validate a policy file or directory and print a summary, or every error with file and line",
		Long:  "check validates PATH (a file, or a directory of *.yaml files merged together); without PATH it checks the bundled default.\nExit status 1 when the policy has errors.",
		Args:  cobra.MaximumNArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			var set *policy.Set
			var err error
			if len(args) == 0 {
				set, err = policy.Compile(policy.DefaultSource())
			} else {
				set, err = policy.Load(args[0])
			}
			if err != nil {
				fmt.Fprintln(cmd.OutOrStdout(), err)
				return &exitError{code: 1, err: fmt.Errorf("policy is invalid")}
			}
			if asJSON {
				enc := json.NewEncoder(cmd.OutOrStdout())
				enc.SetIndent("", "  ")
				return enc.Encode(set.Summary())
			}
			fmt.Fprintln(cmd.OutOrStdout(), "policy OK")
			for _, w := range set.Warnings() {
				fmt.Fprintln(cmd.OutOrStdout(), "warning:", w)
			}
			return set.Summary().WriteText(cmd.OutOrStdout())
		},
	}
	check.Flags().BoolVar(&asJSON, "json", false, "print the summary as JSON")
	show := &cobra.Command{
		Use:   "default",
		Short: "Print the bundled default policy (a starting point for your own)",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			_, err := cmd.OutOrStdout().Write(policy.DefaultSource().Data)
			return err
		},
	}
	cmd.AddCommand(check, show)
	return cmd
}
