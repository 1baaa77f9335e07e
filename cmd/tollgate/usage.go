package main

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"maps"
	"net/http"
	"net/url"
	"slices"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/spf13/cobra"

	"github.com/tollgate/tollgate/admission"
	"github.com/tollgate/tollgate/authz"
)

func usageCmd(getenv func(string) string) *cobra.Command {
	var addr, tokenFile string
	var asJSON bool
	cmd := &cobra.Command{
		Use:   "usage CLIENT",
		Short: "Show a client's spend this month, calls in flight, and budget left along its parent chain",
		Args:  cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			tok, err := apiToken(tokenFile, getenv)
			if err != nil {
				return err
			}
			return usage(cmd.Context(), addr, tok, args[0], asJSON, cmd.OutOrStdout())
		},
	}
	cmd.Flags().StringVar(&addr, "addr", "127.0.0.1:8082", "Tollgate's API address (serve --api-addr)")
	apiTokenFlag(cmd.Flags(), &tokenFile, "serve was given")
	cmd.Flags().BoolVar(&asJSON, "json", false, "print the server's JSON as is")
	return cmd
}

func usage(ctx context.Context, addr string, tok authz.Secret, client string, asJSON bool, out io.Writer) error {
	ctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, "http://"+addr+"/api/usage/"+url.PathEscape(client)+"/current", nil)
	if err != nil {
		return err
	}
	withToken(req, tok)
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return wrongPort(ctx, "usage", addr, protoHTTP, "--http-addr", "127.0.0.1:8080", fmt.Errorf("usage: %w", err))
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(io.LimitReader(resp.Body, 1<<20))
	if err != nil {
		return fmt.Errorf("usage: %w", err)
	}
	if resp.StatusCode != http.StatusOK {
		var e struct{ Error string }
		_ = json.Unmarshal(body, &e)
		if resp.StatusCode == http.StatusUnauthorized || resp.StatusCode == http.StatusForbidden {
			return fmt.Errorf("usage %s: HTTP %d: %s (%w)", client, resp.StatusCode, e.Error, errNoToken)
		}
		return fmt.Errorf("usage %s: HTTP %d: %s", client, resp.StatusCode, e.Error)
	}
	if asJSON {
		_, err := out.Write(body)
		return err
	}
	var rep admission.UsageReport
	if err := json.Unmarshal(body, &rep); err != nil {
		return fmt.Errorf("usage: reply: %w", err)
	}
	known := ""
	if !rep.Known {
		known = " (not in the policy: default tier)"
	}
	fmt.Fprintf(out, "client %s, tier %s%s\n", rep.Client, rep.Tier, known)
	fmt.Fprintf(out, "period %s (ends %s), calls in flight %d of %d\n\n", rep.Period, rep.PeriodEnds.Format(time.RFC3339), rep.InFlight, rep.MaxConcurrent)
	tw := tabwriter.NewWriter(out, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "BUDGET\tLIMIT\tSPENT\tIN FLIGHT\tREMAINING")
	for _, b := range rep.Budgets {
		fmt.Fprintf(tw, "%s\t%s\t$%s\t$%s\t%s\n", b.Owner, dollars(b.Limit), b.Spent, b.Reserved, dollars(b.Remaining))
	}
	if err := tw.Flush(); err != nil {
		return err
	}
	printForecast(out, rep)
	return printSavings(out, rep)
}

// printForecast prints the projection of the client's own budget to the
// period's end; nothing for a client the alerts do not watch.
func printForecast(out io.Writer, rep admission.UsageReport) {
	f := rep.Forecast
	if f == nil {
		return
	}
	if f.RateWindow == "0s" {
		fmt.Fprintf(out, "\nforecast: too few samples of %s's spend yet for a rate (the server samples it every 15 s)\n", rep.Client)
		return
	}
	fmt.Fprintf(out, "\nforecast: $%s by the period's end, at $%s an hour (the rate over the last %s)\n", f.Spend, f.PerHour, f.RateWindow)
	switch {
	case f.ExceedsBudget && f.CrossesAt != nil:
		fmt.Fprintf(out, "the budget runs out at that rate at %s\n", f.CrossesAt.Format(time.RFC3339))
	case f.ExceedsBudget:
		fmt.Fprintln(out, "the budget is used up already")
	}
}

// printSavings prints what the optimizer saved the client this period, by
// strategy, and the total; nothing when it saved nothing.
func printSavings(out io.Writer, rep admission.UsageReport) error {
	if len(rep.Savings) == 0 {
		return nil
	}
	fmt.Fprintf(out, "\nsaved this period by the optimizer (%s only, not its parents)\n", rep.Client)
	tw := tabwriter.NewWriter(out, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "STRATEGY\tSAVED")
	for _, name := range slices.Sorted(maps.Keys(rep.Savings)) {
		fmt.Fprintf(tw, "%s\t%s\n", name, signedDollars(rep.Savings[name]))
	}
	fmt.Fprintf(tw, "total\t%s\n", signedDollars(rep.SavingsTotal))
	return tw.Flush()
}

// signedDollars writes a decimal amount as dollars, its sign first.
func signedDollars(s string) string {
	if rest, ok := strings.CutPrefix(s, "-"); ok {
		return "-$" + rest
	}
	return "$" + s
}

func dollars(s string) string {
	if s == "unlimited" {
		return s
	}
	return "$" + s
}
