package main

import (
	"bytes"
	"context"
	"encoding/json"
	"io"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/tollgate/tollgate/admission"
)

// TestUsageCommand: `tollgate usage` against a memory-store server in
// deferred settlement, after one admitted call.
func TestUsageCommand(t *testing.T) {
	grpcAddr, httpAddr := freePort(t), freePort(t)
	startRun(t, noEnv, httpAddr, serveArgs(grpcAddr, httpAddr, "--policy", writePolicy(t, spendPolicy("")), "--settle", "deferred")...)
	out, err := probeHold(grpcAddr)
	require.NoError(t, err, out)
	require.Regexp(t, reservationLine, out)

	t.Run("table", func(t *testing.T) {
		out, err := runUsage("acme", "--addr", httpAddr)
		require.NoError(t, err, out)
		assert.Regexp(t, `^client acme, tier team\n`+
			`period \d{4}-\d{2} \(ends \d{4}-\d{2}-01T00:00:00Z\), calls in flight 1 of 10\n`+
			`\n`+
			`BUDGET +LIMIT +SPENT +IN FLIGHT +REMAINING\n`+
			`acme +\$0\.036 +\$0 +\$0\.012 +\$0\.024\n`+
			`acme-group +unlimited +\$0 +\$0\.012 +unlimited\n$`, out)
	})

	t.Run("json passes the server's reply through", func(t *testing.T) {
		out, err := runUsage("acme", "--addr", httpAddr, "--json")
		require.NoError(t, err, out)
		resp, err := httpClient.Get("http://" + httpAddr + "/api/usage/acme/current") // the period alone: the CLI shows no history
		require.NoError(t, err)
		direct, err := io.ReadAll(resp.Body)
		require.NoError(t, resp.Body.Close())
		require.NoError(t, err)
		assert.Equal(t, string(direct), out)

		var rep admission.UsageReport
		require.NoError(t, json.Unmarshal([]byte(out), &rep), out)
		assert.Equal(t, int64(1), rep.InFlight)
		assert.Equal(t, "0.012", rep.Budgets[0].Reserved, "a deferred hold is 120% of the $0.01 estimate")
	})

	t.Run("unknown client", func(t *testing.T) {
		out, err := runUsage("stranger", "--addr", httpAddr)
		require.EqualError(t, err, "usage stranger: HTTP 404: unknown client, and the policy denies unknown clients")
		assert.Empty(t, out)
		assert.Equal(t, 1, exitCode(err, io.Discard))
	})

	t.Run("a client id is escaped into the path", func(t *testing.T) {
		_, err := runUsage("acme/../acme", "--addr", httpAddr)
		require.ErrorContains(t, err, "usage acme/../acme: HTTP 404")
	})
}

// TestUsageCommandDefaultTier: a client the policy does not list, under a
// policy that admits unknown clients, is reported under the default tier.
func TestUsageCommandDefaultTier(t *testing.T) {
	grpcAddr, httpAddr := freePort(t), freePort(t)
	startRun(t, noEnv, httpAddr, serveArgs(grpcAddr, httpAddr, "--policy", tourPolicy)...)
	out, err := runUsage("stranger", "--addr", httpAddr)
	require.NoError(t, err, out)
	assert.Contains(t, out, "client stranger, tier basic (not in the policy: default tier)\n")
	assert.Regexp(t, `(?m)^stranger +\$100 +\$0 +\$0 +\$100$`, out)
}

// TestUsageCommandNoServer: with nothing listening, usage fails with the
// reason.
func TestUsageCommandNoServer(t *testing.T) {
	addr := freePort(t)
	out, err := runUsage("acme", "--addr", addr)
	require.Error(t, err)
	assert.Empty(t, out)
	assert.ErrorContains(t, err, "usage: ")
	assert.ErrorContains(t, err, addr)
	assert.ErrorContains(t, err, "connection refused")
	assert.Equal(t, 1, exitCode(err, io.Discard))
}

// TestProbeSettles: probe finishes an allowed call the way Envoy does,
// through ext_proc, so the README's walk-through books a recorded
// response's real cost, and an upstream 429 pauses the pool.
func TestProbeSettles(t *testing.T) {
	grpcAddr, httpAddr := freePort(t), freePort(t)
	startRun(t, noEnv, httpAddr, serveArgs(grpcAddr, httpAddr)...) // the bundled policy, deferred settlement
	probe := func(args ...string) (string, error) {
		var out bytes.Buffer
		err := run(context.Background(), append([]string{"probe", "--addr", grpcAddr, "--client", "acme",
			"--url", "https://api.openai.com/v1/chat/completions", "--body", "../../testdata/bodies/openai/chat-simple-stream.json"}, args...),
			noEnv, &out, io.Discard)
		return out.String(), err
	}
	out, err := probe("--response", "../../testdata/responses/openai-chat-stream.sse")
	require.NoError(t, err, out)
	assert.Contains(t, out, "the call is settled")
	out, err = runUsage("acme", "--addr", httpAddr)
	require.NoError(t, err)
	// The stream's usage (19 in, 10 out) at gpt-4o-mini's bundled prices:
	// 19 × $0.15/1M + 10 × $0.60/1M.
	assert.Regexp(t, `(?m)^acme +\$100 +\$0\.00000885 +\$0 +\$99\.99999115$`, out)
	assert.Contains(t, out, "calls in flight 0 of 5")

	out, err = probe("--status", "429", "--response-header", "retry-after: 30")
	require.NoError(t, err, out)
	out, err = probe()
	require.Error(t, err, out)
	assert.Contains(t, out, "x-tollgate-reason: rate_limited")
	// 30 s of pause, then the call's ~555 tokens in the gpt-4o-mini pool,
	// refilling 200,000 a minute (a sixth of a second).
	assert.Regexp(t, `retry-after: 3[01]\n`, out, "the pool is paused for the upstream's Retry-After")
}

// TestUsageSavings: `tollgate usage` lists the client's savings by
// strategy, signed, with their total, after its budgets; a client that
// saved nothing gets no such table (TestUsageCommand).
func TestUsageSavings(t *testing.T) {
	tests := map[string]struct {
		savings map[string]string
		total   string
		want    string
	}{
		"none": {savings: map[string]string{}, total: "0"},
		"signed, by name": {
			savings: map[string]string{"prompt_cache": "-0.0000015", "flex": "0.003", "downgrade": "0.0412"},
			total:   "0.0441985",
			want: "\nsaved this period by the optimizer (acme only, not its parents)\n" +
				"STRATEGY      SAVED\n" +
				"downgrade     $0.0412\n" +
				"flex          $0.003\n" +
				"prompt_cache  -$0.0000015\n" +
				"total         $0.0441985\n",
		},
		"a net loss": {
			savings: map[string]string{"prompt_cache": "-2"},
			total:   "-2",
			want: "\nsaved this period by the optimizer (acme only, not its parents)\n" +
				"STRATEGY      SAVED\n" +
				"prompt_cache  -$2\n" +
				"total         -$2\n",
		},
	}
	for name, tc := range tests {
		t.Run(name, func(t *testing.T) {
			var out bytes.Buffer
			require.NoError(t, printSavings(&out, admission.UsageReport{Client: "acme", Savings: tc.savings, SavingsTotal: tc.total}))
			assert.Equal(t, tc.want, out.String())
		})
	}
}

// TestUsageForecast: `tollgate usage` shows the projection of the client's
// budget, and when it runs out; nothing for a client not watched.
func TestUsageForecast(t *testing.T) {
	at := time.Date(2026, 12, 10, 9, 0, 0, 0, time.UTC)
	tests := map[string]struct {
		f    *admission.UsageForecast
		want string
	}{
		"not watched": {nil, ""},
		"no rate yet": {&admission.UsageForecast{Spend: "3", PerHour: "0", RateWindow: "0s"},
			"\nforecast: too few samples of acme's spend yet for a rate (the server samples it every 15 s)\n"},
		"within the budget": {&admission.UsageForecast{Spend: "40.5", PerHour: "0.05", RateWindow: "1h0m0s"},
			"\nforecast: $40.5 by the period's end, at $0.05 an hour (the rate over the last 1h0m0s)\n"},
		"runs out": {&admission.UsageForecast{Spend: "5290", PerHour: "10", RateWindow: "1h0m0s", ExceedsBudget: true, CrossesAt: &at},
			"\nforecast: $5290 by the period's end, at $10 an hour (the rate over the last 1h0m0s)\nthe budget runs out at that rate at 2026-12-10T09:00:00Z\n"},
		"ran out": {&admission.UsageForecast{Spend: "200", PerHour: "1", RateWindow: "30m0s", ExceedsBudget: true},
			"\nforecast: $200 by the period's end, at $1 an hour (the rate over the last 30m0s)\nthe budget is used up already\n"},
	}
	for name, tc := range tests {
		t.Run(name, func(t *testing.T) {
			var out bytes.Buffer
			printForecast(&out, admission.UsageReport{Client: "acme", Forecast: tc.f})
			assert.Equal(t, tc.want, out.String())
		})
	}
}
