package main

import (
	"encoding/json"
	"io"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/tollgate/tollgate/authz"
)

// TestUsageCommand: `tollgate usage` against a memory-store server in
// deferred settlement, after one admitted call.
func TestUsageCommand(t *testing.T) {
	grpcAddr, httpAddr := freePort(t), freePort(t)
	startRun(t, noEnv, httpAddr, serveArgs(grpcAddr, httpAddr, "--policy", writePolicy(t, spendPolicy("")), "--settle", "deferred")...)
	out, err := probeTour(grpcAddr)
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
		resp, err := httpClient.Get("http://" + httpAddr + "/api/usage/acme")
		require.NoError(t, err)
		direct, err := io.ReadAll(resp.Body)
		require.NoError(t, resp.Body.Close())
		require.NoError(t, err)
		assert.Equal(t, string(direct), out)

		var rep authz.UsageReport
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
