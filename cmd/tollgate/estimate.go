package main

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"os"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/spf13/cobra"

	"github.com/tollgate/tollgate/admission"
	"github.com/tollgate/tollgate/authz"
	"github.com/tollgate/tollgate/costing"
	"github.com/tollgate/tollgate/policy"
)

type estimateFlags struct {
	rawURL, bodyFile, contentType, policyPath, addr string
	client, class                                   string // the optimizer's view, for this client
	tokenFile                                       string
	token                                           authz.Secret
	asJSON                                          bool
}

func estimateCmd(getenv func(string) string) *cobra.Command {
	f := estimateFlags{}
	cmd := &cobra.Command{
		Use:   "estimate --url URL [--body FILE]",
		Short: "Estimate what a call costs (units per pool and money), as Check would, without reserving anything",
		Long: "estimate prices a call to URL with the given body under a policy: the bundled one, --policy PATH,\n" +
			"or, with --addr, the policy in force in a running Tollgate (and its learned adaptive ratios).\n" +
			"With --client (and --class) it shows what the optimizer would do to the call: the rules that fire,\n" +
			"the rewrites, and the estimate before and after (with --addr, at the client's budget pressure there).",
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			var err error
			if f.token, err = apiToken(f.tokenFile, getenv); err != nil {
				return err
			}
			return estimate(cmd.Context(), f, cmd.InOrStdin(), cmd.OutOrStdout())
		},
	}
	fl := cmd.Flags()
	fl.StringVar(&f.rawURL, "url", "", "the upstream URL, e.g. https://api.openai.com/v1/chat/completions")
	fl.StringVar(&f.bodyFile, "body", "", "file holding the request body (- for stdin)")
	fl.StringVar(&f.contentType, "content-type", "", "the body's content type (default: form-encoded for Twilio, else JSON)")
	fl.StringVar(&f.policyPath, "policy", "", "policy file or directory (default: the bundled policy)")
	fl.StringVar(&f.addr, "addr", "", "ask a running Tollgate's API address instead (serve --api-addr, e.g. 127.0.0.1:8082)")
	fl.StringVar(&f.client, "client", "", "show what the optimizer would do to the call for this client")
	fl.StringVar(&f.class, "class", "", "the call's class with --client: immediate, fast, normal, batch or deferred (default: the route's)")
	apiTokenFlag(fl, &f.tokenFile, "serve was given, with --addr")
	fl.BoolVar(&f.asJSON, "json", false, "print JSON")
	_ = cmd.MarkFlagRequired("url")
	return cmd
}

func estimate(ctx context.Context, f estimateFlags, stdin io.Reader, out io.Writer) error {
	var body []byte
	var err error
	switch f.bodyFile {
	case "":
	case "-":
		body, err = io.ReadAll(io.LimitReader(stdin, 64<<20))
	default:
		body, err = os.ReadFile(f.bodyFile)
	}
	if err != nil {
		return fmt.Errorf("estimate: body: %w", err)
	}
	ct := f.contentType
	if ct == "" {
		ct = "application/json"
		if strings.Contains(f.rawURL, "twilio.com") {
			ct = "application/x-www-form-urlencoded"
		}
	}
	if f.client != "" {
		return analyzeEstimate(ctx, f, analyzeCall{client: f.client, class: f.class, rawURL: f.rawURL, contentType: ct, body: body}, out)
	}
	if f.class != "" {
		return errors.New("estimate: --class goes with --client: the class decides which optimize rules fire for a client")
	}
	var rep admission.EstimateReport
	if f.addr != "" {
		rep, err = remoteEstimate(ctx, f.addr, f.token, f.rawURL, ct, body)
	} else {
		rep, err = localEstimate(f.policyPath, f.rawURL, ct, body)
	}
	if err != nil {
		return err
	}
	return printReport(out, f.asJSON, rep, printEstimate)
}

// analyzeEstimate prints what the optimizer would do to c.
func analyzeEstimate(ctx context.Context, f estimateFlags, c analyzeCall, out io.Writer) error {
	if _, ok := policy.ParseClass(c.class); c.class != "" && !ok {
		return fmt.Errorf("estimate: --class %q: want immediate, fast, normal, batch or deferred", c.class)
	}
	var rep admission.AnalyzeReport
	var err error
	if f.addr != "" {
		rep, err = remoteAnalyze(ctx, f.addr, f.token, c)
	} else {
		rep, err = localAnalyze(ctx, f.policyPath, c)
	}
	if err != nil {
		return err
	}
	return printReport(out, f.asJSON, rep, printAnalysis)
}

// printReport writes rep as indented JSON, or as text with print.
func printReport[T any](out io.Writer, asJSON bool, rep T, print func(io.Writer, T)) error {
	if asJSON {
		enc := json.NewEncoder(out)
		enc.SetIndent("", "  ")
		return enc.Encode(rep)
	}
	print(out, rep)
	return nil
}

func localEstimate(policyPath, rawURL, ct string, body []byte) (admission.EstimateReport, error) {
	set := policy.Default()
	if policyPath != "" {
		var err error
		if set, err = policy.Load(policyPath); err != nil {
			return admission.EstimateReport{}, err
		}
	}
	tok, err := costing.SharedTokenizer()
	if err != nil {
		return admission.EstimateReport{}, err
	}
	return admission.EstimateCall(set, costing.Estimator{Tok: tok}, rawURL, ct, body)
}

func remoteEstimate(ctx context.Context, addr string, tok authz.Secret, rawURL, ct string, body []byte) (admission.EstimateReport, error) {
	ctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, "http://"+addr+"/api/estimate?url="+url.QueryEscape(rawURL), bytes.NewReader(body))
	if err != nil {
		return admission.EstimateReport{}, err
	}
	req.Header.Set("Content-Type", ct)
	withToken(req, tok)
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return admission.EstimateReport{}, wrongPort(ctx, "estimate", addr, protoHTTP, "--http-addr", "127.0.0.1:8080", fmt.Errorf("estimate: %w", err))
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(io.LimitReader(resp.Body, 1<<20))
	if err != nil {
		return admission.EstimateReport{}, fmt.Errorf("estimate: %w", err)
	}
	if resp.StatusCode != http.StatusOK {
		var e struct{ Error string }
		_ = json.Unmarshal(b, &e)
		if resp.StatusCode == http.StatusUnauthorized || resp.StatusCode == http.StatusForbidden {
			return admission.EstimateReport{}, fmt.Errorf("estimate: HTTP %d: %s (%w)", resp.StatusCode, e.Error, errNoToken)
		}
		return admission.EstimateReport{}, fmt.Errorf("estimate: HTTP %d: %s", resp.StatusCode, e.Error)
	}
	var rep admission.EstimateReport
	if err := json.Unmarshal(b, &rep); err != nil {
		return admission.EstimateReport{}, fmt.Errorf("estimate: %w", err)
	}
	return rep, nil
}

func printEstimate(out io.Writer, r admission.EstimateReport) {
	tw := tabwriter.NewWriter(out, 0, 4, 2, ' ', 0)
	fmt.Fprintf(tw, "route\t%s (%s)\n", r.Route, r.Provider)
	if r.Model != "" || r.InputTokens > 0 {
		priced := "not priced by model: the pools' prices"
		switch {
		case r.PriceEntry != "" && r.ModelKnown:
			priced = fmt.Sprintf("priced by %q", r.PriceEntry)
		case r.PriceEntry != "":
			priced = fmt.Sprintf("unknown model, priced by %q", r.PriceEntry)
		}
		fmt.Fprintf(tw, "model\t%s\t%s\n", orNone(r.Model), priced)
		how := "counted exactly"
		if !r.Exact {
			how = "from the body's size"
		}
		fmt.Fprintf(tw, "tokens\tin %d, out %d\t%s\n", r.InputTokens, r.OutputTokens, how)
	}
	for _, p := range r.Pools {
		fmt.Fprintf(tw, "pool\t%s\t%d %ss\n", p.Pool, p.Units, p.Unit)
	}
	fmt.Fprintf(tw, "cost\t$%s\tinput $%s, output $%s, images $%s, audio $%s, unit-priced $%s\n", r.Cost,
		r.Breakdown.Input, r.Breakdown.Output, r.Breakdown.Images, r.Breakdown.Audio, r.Breakdown.Units)
	fmt.Fprintf(tw, "reserve\t$%s\t%s, %d%% of the estimate\n", r.Reserve, r.Strategy, r.ReservePercent)
	_ = tw.Flush()
}

func orNone(s string) string {
	if s == "" {
		return "(none)"
	}
	return s
}
