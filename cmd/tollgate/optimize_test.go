package main

import (
	"bytes"
	"context"
	"encoding/json"
	"io"
	"os"
	"path/filepath"
	"regexp"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/tollgate/tollgate/admission"
	"github.com/tollgate/tollgate/policy"
)

// optimizePolicy: gpt-4o and gpt-4o-mini (with flex prices) on one
// OpenAI route, acme on a $100 month, and one rule: batch-class gpt-4o
// calls go as gpt-4o-mini at the flex tier.
const optimizePolicy = `
defaults:
  unknown_client: deny
pools:
  gpt: {unit: token, capacity: 100000, refill_per_second: 1000}
models:
  "gpt-4o-mini*": {input: "0.15/1M", output: "0.60/1M", cached_input: "0.075/1M", flex_input: "0.075/1M", flex_output: "0.30/1M", flex_cached_input: "0.0375/1M"}
  "gpt-4o*": {input: "2.50/1M", output: "10/1M", cached_input: "1.25/1M"}
routes:
  openai: {host: api.openai.com, path_prefix: /v1/, provider: openai, pools: [gpt]}
tiers:
  team: {priority: 20, max_concurrent: 10, monthly_budget: "100"}
clients:
  acme: {tier: team}
optimize:
  rules:
    - name: batch-to-mini
      when: {classes: [batch], models: ["gpt-4o*"]}
      downgrade: gpt-4o-mini
      flex: true
`

// gpt4oBody writes a gpt-4o chat body to a file and returns its path.
func gpt4oBody(t *testing.T) string {
	t.Helper()
	path := filepath.Join(t.TempDir(), "body.json")
	require.NoError(t, os.WriteFile(path, []byte(`{"model":"gpt-4o","max_tokens":300,"messages":[{"role":"user","content":"Summarize the quarterly report."}]}`), 0o600))
	return path
}

// TestEstimateClient: `estimate --client` shows what the optimizer would
// do to a call, locally from a policy file and from a running server
// alike.
func TestEstimateClient(t *testing.T) {
	pol, body := writePolicy(t, optimizePolicy), gpt4oBody(t)
	base := []string{"--url", tourURL, "--body", body}

	out, err := runEstimate("", append(base, "--policy", pol, "--client", "acme", "--class", "batch")...)
	require.NoError(t, err, out)
	assert.Regexp(t, `(?m)^model +gpt-4o-mini +priced by "gpt-4o-mini\*"$`, out, "the call as it would go")
	assert.Contains(t, out, "\noptimizer for client acme (tier team, class batch, budget pressure 0%)\n")
	assert.Regexp(t, `(?m)^rules +batch-to-mini$`, out)
	assert.Regexp(t, `(?m)^rewrites +downgrade, flex; downgraded from gpt-4o$`, out)
	assert.Regexp(t, `(?m)^before +\$[0-9.]+ +as sent: gpt-4o, in \d+, out 300$`, out)
	assert.Regexp(t, `(?m)^after +\$[0-9.]+ +as rewritten: gpt-4o-mini, in \d+, out 300$`, out)
	assert.Regexp(t, `(?m)^saving +\$[0-9.]+ +estimated$`, out)

	out, err = runEstimate("", append(base, "--policy", pol, "--client", "acme")...)
	require.NoError(t, err, out)
	assert.Contains(t, out, "(tier team, class normal, budget pressure 0%)")
	assert.Regexp(t, `(?m)^rewrites +none: the call goes as sent$`, out)

	local, err := runEstimate("", append(base, "--policy", pol, "--client", "acme", "--class", "batch", "--json")...)
	require.NoError(t, err, local)
	var l admission.AnalyzeReport
	require.NoError(t, json.Unmarshal([]byte(local), &l), local)
	assert.Equal(t, []string{"downgrade", "flex"}, l.Strategies)
	in := l.Before.InputTokens
	assert.Equal(t, moneyOf(in*2500+300*10_000), l.Before.Cost, "gpt-4o")
	assert.Equal(t, moneyOf(in*75+300*300), l.After.Cost, "gpt-4o-mini at flex")

	grpcAddr, httpAddr := freePort(t), freePort(t)
	startRun(t, noEnv, httpAddr, serveArgs(grpcAddr, httpAddr, "--policy", pol)...)
	remote, err := runEstimate("", append(base, "--addr", httpAddr, "--client", "acme", "--class", "batch", "--json")...)
	require.NoError(t, err, remote)
	var r admission.AnalyzeReport
	require.NoError(t, json.Unmarshal([]byte(remote), &r), remote)
	assert.Equal(t, l, r, "the server's analysis is the local one")

	for name, tc := range map[string]struct {
		args    []string
		wantErr string
	}{
		"class without client": {[]string{"--policy", pol, "--class", "batch"}, "--class goes with --client"},
		"a bad class":          {[]string{"--policy", pol, "--client", "acme", "--class", "urgent"}, `--class "urgent"`},
		"unknown client here":  {[]string{"--policy", pol, "--client", "stranger"}, "unknown client"},
		"unknown client there": {[]string{"--addr", httpAddr, "--client", "stranger"}, "estimate: HTTP 404: unknown client"},
	} {
		t.Run(name, func(t *testing.T) {
			_, err := runEstimate("", append(base, tc.args...)...)
			require.ErrorContains(t, err, tc.wantErr)
		})
	}
	t.Run("no token", func(t *testing.T) {
		err := runIO(context.Background(), append([]string{"estimate"}, cliArgs(append(base, "--addr", httpAddr, "--client", "acme"))...),
			noEnv, nil, io.Discard, io.Discard)
		require.ErrorContains(t, err, "HTTP 401")
		require.ErrorContains(t, err, "TOLLGATE_API_TOKEN")
	})
}

func moneyOf(nanos int64) string { return policy.Money(nanos).String() }

// TestOptimizeCommands: probe shows the rewrite a batch call got (the
// body sent, the worker's headers, the estimate of what runs); `optimize
// stats` and `optimize recommendations` then report on the calls settled.
func TestOptimizeCommands(t *testing.T) {
	pol, body := writePolicy(t, optimizePolicy), gpt4oBody(t)
	grpcAddr, httpAddr := freePort(t), freePort(t)
	startRun(t, noEnv, httpAddr, serveArgs(grpcAddr, httpAddr, "--policy", pol)...)
	probe := func(extra ...string) string {
		t.Helper()
		out, err := probeTour(grpcAddr, append([]string{"--body", body, "--response", "../../testdata/responses/openai-chat.json"}, extra...)...)
		require.NoError(t, err, out)
		return out
	}

	analysis, err := runEstimate("", "--url", tourURL, "--body", body, "--policy", pol, "--client", "acme", "--class", "batch", "--json")
	require.NoError(t, err)
	var a admission.AnalyzeReport
	require.NoError(t, json.Unmarshal([]byte(analysis), &a))

	out := probe("--header", "x-tollgate-priority: batch")
	assert.Contains(t, out, "  x-tollgate-estimated-cost: "+a.After.Cost+"\n", "the estimate of the call that runs")
	assert.Regexp(t, `(?m)^ext_proc: request body rewritten upstream: \{.*"model":"gpt-4o-mini"`, out)
	assert.Regexp(t, `(?m)^ext_proc: request body rewritten upstream: \{.*"service_tier":"flex"`, out)
	assert.Contains(t, out, "ext_proc: response headers for the worker:\n"+
		"  x-tollgate-downgraded-from: gpt-4o\n"+
		"  x-tollgate-optimized: downgrade,flex\n")
	out = probe() // a normal call: untouched
	assert.NotContains(t, out, "x-tollgate-optimized")
	assert.NotContains(t, out, "rewritten upstream")

	runOpt := func(args ...string) (string, error) {
		var buf bytes.Buffer
		err := run(context.Background(), append([]string{"optimize"}, cliArgs(args)...), withTestToken(noEnv), &buf, io.Discard)
		return buf.String(), err
	}

	t.Run("stats", func(t *testing.T) {
		out, err := runOpt("stats", "acme", "--addr", httpAddr)
		require.NoError(t, err, out)
		// openai-chat.json's usage, as gpt-4o: $0.0019725 each; the batch
		// call ran as gpt-4o-mini at flex: $0.000059175.
		assert.Regexp(t, `^client acme, period \d{4}-\d{2}: saved \$0\.001913325 of \$0\.003945 \(48\.5%\); spent \$0\.002031675\n`+
			`\n`+
			`STRATEGY +SAVED +CALLS REWRITTEN\n`+
			`downgrade +\$0\.00185415 +1\n`+
			`flex +\$0\.000059175 +1\n`+
			`\n`+
			`calls rewritten are this sidecar's, of 2 settled from their usage this month\n$`, out)

		js, err := runOpt("stats", "acme", "--addr", httpAddr, "--json")
		require.NoError(t, err)
		var st admission.OptimizeStats
		require.NoError(t, json.Unmarshal([]byte(js), &st), js)
		assert.Equal(t, int64(4850), st.SavedBasisPoints)
	})

	t.Run("recommendations", func(t *testing.T) {
		out, err := runOpt("recommendations", "acme", "--addr", httpAddr)
		require.NoError(t, err, out)
		assert.Regexp(t, regexp.QuoteMeta(`client acme, period `)+`\d{4}-\d{2}`+regexp.QuoteMeta(`, from 2 calls this sidecar settled

1. downgrade, saves $0.00185415
   100% of your normal-class gpt-4o calls on route openai (1 of 1) wrote fewer than 300 output tokens: downgrading them to gpt-4o-mini would have saved $0.00185415 this month.
     optimize:
       rules:
         - name: "acme-gpt-4o-normal-downgrade"
           when: {clients: ["acme"], routes: ["openai"], classes: [normal], models: ["gpt-4o"]}
           downgrade: "gpt-4o-mini"
`)+"$", out)
	})

	t.Run("errors", func(t *testing.T) {
		_, err := runOpt("stats", "stranger", "--addr", httpAddr)
		require.EqualError(t, err, "optimize stats stranger: HTTP 404: unknown client, and the policy denies unknown clients")
		_, err = runOpt("recommendations", "acme", "--addr", freePort(t))
		require.ErrorContains(t, err, "connection refused")
		_, err = runOpt("stats")
		require.ErrorContains(t, err, "accepts 1 arg")
	})
}
