package main

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"maps"
	"net/http"
	"net/url"
	"slices"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/spf13/cobra"

	"github.com/tollgate/tollgate/admission"
	"github.com/tollgate/tollgate/authz"
	"github.com/tollgate/tollgate/limiter/memstore"
	"github.com/tollgate/tollgate/policy"
)

// The optimizer from the command line: `estimate --client` shows what it
// would do to a call, `optimize stats` and `optimize recommendations` what
// it saved a client and what more it could.

// analyzeCall is what `estimate --client` asks about.
type analyzeCall struct {
	client, class, rawURL, contentType string
	body                               []byte
}

// localAnalyze answers as a Tollgate with the policy at policyPath (the
// bundled one for "") would, in a month with nothing spent yet: a service
// on an empty memory store, closed before it returns.
func localAnalyze(ctx context.Context, policyPath string, c analyzeCall) (_ admission.AnalyzeReport, err error) {
	set := policy.Default()
	if policyPath != "" {
		if set, err = policy.Load(policyPath); err != nil {
			return admission.AnalyzeReport{}, err
		}
	}
	store, err := memstore.New(memstore.Config{})
	if err != nil {
		return admission.AnalyzeReport{}, err
	}
	defer func() { err = errors.Join(err, store.Close()) }()
	svc, err := admission.New(admission.Config{Settlement: admission.SettleDeferred},
		admission.Deps{Policies: admission.StaticPolicy{Set: set}, Store: store, Registerer: prometheus.NewRegistry()})
	if err != nil {
		return admission.AnalyzeReport{}, err
	}
	defer func() { err = errors.Join(err, svc.Close()) }()
	headers := map[string]string{"content-type": c.contentType}
	if c.class != "" {
		headers[strings.ToLower(set.Queue.PriorityHeader)] = c.class
	}
	return svc.Analyze(ctx, c.client, c.rawURL, headers, c.body)
}

// remoteAnalyze asks a running Tollgate's POST /api/optimize/analyze.
func remoteAnalyze(ctx context.Context, addr string, tok authz.Secret, c analyzeCall) (admission.AnalyzeReport, error) {
	req := authz.AnalyzeRequest{Client: c.client, URL: c.rawURL, Class: c.class, Headers: map[string]string{"content-type": c.contentType}}
	if len(c.body) > 0 {
		req.Body = c.body
		if !json.Valid(c.body) {
			req.Body, _ = json.Marshal(string(c.body)) // a string always marshals
		}
	}
	payload, err := json.Marshal(req)
	if err != nil {
		return admission.AnalyzeReport{}, fmt.Errorf("estimate: %w", err)
	}
	b, err := callAPI(ctx, "estimate", addr, tok, http.MethodPost, "/api/optimize/analyze", payload)
	if err != nil {
		return admission.AnalyzeReport{}, err
	}
	var rep admission.AnalyzeReport
	if err := json.Unmarshal(b, &rep); err != nil {
		return admission.AnalyzeReport{}, fmt.Errorf("estimate: reply: %w", err)
	}
	return rep, nil
}

// callAPI sends one request to the API at addr and returns the body of a
// 200; any other status is an error with the server's message, named for
// what (the command).
func callAPI(ctx context.Context, what, addr string, tok authz.Secret, method, path string, body []byte) ([]byte, error) {
	ctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, method, "http://"+addr+path, bytes.NewReader(body))
	if err != nil {
		return nil, err
	}
	if body != nil {
		req.Header.Set("Content-Type", "application/json")
	}
	withToken(req, tok)
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return nil, wrongPort(ctx, what, addr, protoHTTP, "--http-addr", "127.0.0.1:8080", fmt.Errorf("%s: %w", what, err))
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(io.LimitReader(resp.Body, 8<<20))
	if err != nil {
		return nil, fmt.Errorf("%s: %w", what, err)
	}
	if resp.StatusCode != http.StatusOK {
		var e struct{ Error string }
		_ = json.Unmarshal(b, &e)
		if resp.StatusCode == http.StatusUnauthorized || resp.StatusCode == http.StatusForbidden {
			return nil, fmt.Errorf("%s: HTTP %d: %s (%w)", what, resp.StatusCode, e.Error, errNoToken)
		}
		return nil, fmt.Errorf("%s: HTTP %d: %s", what, resp.StatusCode, e.Error)
	}
	return b, nil
}

// printAnalysis prints the call as it would go, then what the optimizer
// did to it.
func printAnalysis(out io.Writer, r admission.AnalyzeReport) {
	printEstimate(out, r.After)
	pressure := "no budget"
	if r.PressurePercent >= 0 {
		pressure = fmt.Sprintf("budget pressure %d%%", r.PressurePercent)
	}
	if r.Aggressive {
		pressure += ", aggressive mode"
	}
	fmt.Fprintf(out, "\noptimizer for client %s (tier %s, class %s, %s)\n", r.Client, r.Tier, r.Class, pressure)
	tw := tabwriter.NewWriter(out, 0, 4, 2, ' ', 0)
	if len(r.Strategies) == 0 {
		fmt.Fprintf(tw, "rewrites\tnone: the call goes as sent\n")
		if len(r.Rules) > 0 {
			fmt.Fprintf(tw, "rules\t%s\t(matched, changed nothing)\n", strings.Join(r.Rules, ", "))
		}
		_ = tw.Flush()
		return
	}
	fmt.Fprintf(tw, "rules\t%s\n", strings.Join(r.Rules, ", "))
	rewrites := strings.Join(r.Strategies, ", ")
	if r.DowngradedFrom != "" {
		rewrites += "; downgraded from " + r.DowngradedFrom
	}
	fmt.Fprintf(tw, "rewrites\t%s\n", rewrites)
	fmt.Fprintf(tw, "before\t$%s\tas sent: %s, in %d, out %d\n", r.Before.Cost, orNone(r.Before.Model), r.Before.InputTokens, r.Before.OutputTokens)
	fmt.Fprintf(tw, "after\t$%s\tas rewritten: %s, in %d, out %d\n", r.After.Cost, orNone(r.After.Model), r.After.InputTokens, r.After.OutputTokens)
	fmt.Fprintf(tw, "saving\t$%s\testimated\n", r.Saving)
	_ = tw.Flush()
}

func optimizeCmd(getenv func(string) string) *cobra.Command {
	cmd := &cobra.Command{Use: "optimize", Short: "What the optimizer saved a client this month, and what more it could save"}
	var addr, tokenFile string
	var asJSON bool
	sub := func(use, short, path string, print func(io.Writer, []byte) error) *cobra.Command {
		c := &cobra.Command{
			Use: use + " CLIENT", Short: short, Args: cobra.ExactArgs(1),
			RunE: func(cmd *cobra.Command, args []string) error {
				tok, err := apiToken(tokenFile, getenv)
				if err != nil {
					return err
				}
				b, err := callAPI(cmd.Context(), "optimize "+use+" "+args[0], addr, tok, http.MethodGet, path+url.PathEscape(args[0]), nil)
				if err != nil {
					return err
				}
				if asJSON {
					_, err := cmd.OutOrStdout().Write(b)
					return err
				}
				return print(cmd.OutOrStdout(), b)
			},
		}
		c.Flags().StringVar(&addr, "addr", "127.0.0.1:8082", "Tollgate's API address (serve --api-addr)")
		apiTokenFlag(c.Flags(), &tokenFile, "serve was given")
		c.Flags().BoolVar(&asJSON, "json", false, "print the server's JSON as is")
		return c
	}
	cmd.AddCommand(
		sub("stats", "Show a client's savings this month by strategy, against its spend, and its calls rewritten", "/api/optimize/stats/", printStats),
		sub("recommendations", "Show what would have cut a client's bill this month, from its calls, with the rule for each", "/api/optimize/recommendations/", printRecommendations),
	)
	return cmd
}

func printStats(out io.Writer, b []byte) error {
	var st admission.OptimizeStats
	if err := json.Unmarshal(b, &st); err != nil {
		return fmt.Errorf("optimize stats: reply: %w", err)
	}
	fmt.Fprintf(out, "client %s, period %s: saved $%s of $%s (%s%%); spent $%s\n\n", st.Client, st.Period, st.SavingsTotal, st.WouldHaveCost, st.SavedPercent, st.Spent)
	tw := tabwriter.NewWriter(out, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "STRATEGY\tSAVED\tCALLS REWRITTEN")
	names := slices.Sorted(maps.Keys(st.Savings))
	for s := range st.Rewrites {
		if _, ok := st.Savings[s]; !ok {
			names = append(names, s)
		}
	}
	slices.Sort(names)
	for _, s := range names {
		saved := "-"
		if v, ok := st.Savings[s]; ok {
			saved = "$" + v
		}
		fmt.Fprintf(tw, "%s\t%s\t%d\n", s, saved, st.Rewrites[s])
	}
	if err := tw.Flush(); err != nil {
		return err
	}
	_, err := fmt.Fprintf(out, "\ncalls rewritten are this sidecar's, of %d settled from their usage this month\n", st.ObservedCalls)
	return err
}

func printRecommendations(out io.Writer, b []byte) error {
	var rep admission.RecommendationsReport
	if err := json.Unmarshal(b, &rep); err != nil {
		return fmt.Errorf("optimize recommendations: reply: %w", err)
	}
	var calls int64
	for _, o := range rep.Observed {
		calls += o.Calls
	}
	fmt.Fprintf(out, "client %s, period %s, from %d calls this sidecar settled\n", rep.Client, rep.Period, calls)
	if len(rep.Recommendations) == 0 {
		_, err := fmt.Fprintln(out, "\nno recommendations: nothing observed would have cost less")
		return err
	}
	for i, r := range rep.Recommendations {
		fmt.Fprintf(out, "\n%d. %s, saves $%s\n   %s\n", i+1, r.Kind, r.Saving, r.Message)
		for _, line := range strings.Split(strings.TrimRight(r.Rule, "\n"), "\n") {
			fmt.Fprintf(out, "     %s\n", line)
		}
	}
	return nil
}
