package main

import (
	"context"
	"encoding/json"
	"io"
	"net/http"
	"regexp"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/tollgate/tollgate/internal/redistest"
)

// reservationLine is how probe prints the reservation id it was given.
var reservationLine = regexp.MustCompile(`(?m)^  x-tollgate-reservation: ([0-9a-f]{32})$`)

// redisServeArgs is `serve --store redis --settle deferred` on the
// package's redis-server under prefix, with policy.
func redisServeArgs(grpcAddr, httpAddr, policyPath, redisAddr, prefix string) []string {
	return serveArgs(grpcAddr, httpAddr, "--policy", policyPath, "--store", "redis",
		"--redis-addr", redisAddr, "--redis-prefix", prefix, "--settle", "deferred")
}

// TestServeRedisDeferred: serve on Redis with deferred settlement hands
// each admitted call a reservation, usage shows it held, and settling it
// through the API books the actual cost; the state lives in Redis under the
// prefix.
func TestServeRedisDeferred(t *testing.T) {
	prefix := redistest.Prefix(t)
	grpcAddr, httpAddr := freePort(t), freePort(t)
	srv := startRun(t, noEnv, httpAddr, redisServeArgs(grpcAddr, httpAddr, writePolicy(t, spendPolicy("")), redisSrv.Addr, prefix)...)

	out, err := probeHold(grpcAddr)
	require.NoError(t, err, out)
	assert.Contains(t, out, "decision: ALLOWED")
	assert.Contains(t, out, "request headers set:")
	m := reservationLine.FindStringSubmatch(out)
	require.NotNil(t, m, "no reservation in:\n%s", out)
	id := m[1]

	out, err = runUsage("acme", "--addr", httpAddr)
	require.NoError(t, err, out)
	assert.Contains(t, out, "client acme, tier team\n")
	assert.Contains(t, out, "calls in flight 1 of 10\n")
	assert.Regexp(t, `(?m)^BUDGET\s+LIMIT\s+SPENT\s+IN FLIGHT\s+REMAINING$`, out)
	assert.Regexp(t, `(?m)^acme\s+\$0\.036\s+\$0\s+\$0\.012\s+\$0\.024$`, out)
	assert.Regexp(t, `(?m)^acme-group\s+unlimited\s+\$0\s+\$0\.012\s+unlimited$`, out)

	// The state is Redis's, under the prefix's hash tag.
	keys, err := redisSrv.Client(t).Keys(context.Background(), "{"+prefix+"}:*").Result()
	require.NoError(t, err)
	assert.NotEmpty(t, keys)

	resp, err := httpClient.Post("http://"+httpAddr+"/api/reservations/"+id+"/settle", "application/json",
		strings.NewReader(`{"actual_cost_usd":"0.004"}`))
	require.NoError(t, err)
	body, err := io.ReadAll(resp.Body)
	require.NoError(t, resp.Body.Close())
	require.NoError(t, err)
	require.Equal(t, http.StatusOK, resp.StatusCode, string(body))
	assert.JSONEq(t, `{"id":"`+id+`","outcome":"settled","estimated_usd":"0.012","spent_usd":"0.004","repeat":false}`, string(body))

	out, err = runUsage("acme", "--addr", httpAddr)
	require.NoError(t, err, out)
	assert.Contains(t, out, "calls in flight 0 of 10\n")
	assert.Regexp(t, `(?m)^acme\s+\$0\.036\s+\$0\.004\s+\$0\s+\$0\.032$`, out)

	require.NoError(t, srv.stop(t))
	assert.Contains(t, srv.stderr.String(), "limiter store: redis")
}

// TestServeRedisFleetSharesBudget: two sidecars on one Redis and prefix are
// one fleet: what one admits, the other sees.
func TestServeRedisFleetSharesBudget(t *testing.T) {
	prefix := redistest.Prefix(t)
	policyPath := writePolicy(t, spendPolicy(""))
	grpcA, httpA := freePort(t), freePort(t)
	grpcB, httpB := freePort(t), freePort(t)
	startRun(t, noEnv, httpA, redisServeArgs(grpcA, httpA, policyPath, redisSrv.Addr, prefix)...)
	startRun(t, noEnv, httpB, redisServeArgs(grpcB, httpB, policyPath, redisSrv.Addr, prefix)...)

	// acme's $0.036 covers three holds of $0.012 (120% of $0.01); all go through A.
	for i := range 3 {
		out, err := probeHold(grpcA)
		require.NoError(t, err, "call %d: %s", i+1, out)
	}

	out, err := probeHold(grpcB)
	var ee *exitError
	require.ErrorAs(t, err, &ee, out)
	assert.Equal(t, exitDenied, ee.code)
	assert.Contains(t, out, "decision: DENIED (HTTP 429, gRPC RESOURCE_EXHAUSTED)")
	assert.Contains(t, out, "x-tollgate-reason: budget_exceeded")
	assert.Contains(t, out, `"code":"insufficient_quota"`)
	assert.Contains(t, out, `Monthly budget of \"acme\" is exhausted: $0 spent and $0.036 held of $0.036`)

	// Both report the same standing.
	for _, addr := range []string{httpA, httpB} {
		out, err := runUsage("acme", "--addr", addr)
		require.NoError(t, err, out)
		assert.Contains(t, out, "calls in flight 3 of 10\n", addr)
		assert.Regexp(t, `(?m)^acme\s+\$0\.036\s+\$0\s+\$0\.036\s+\$0$`, out, addr)
	}

	// Another prefix is another fleet, with budgets of its own.
	grpcC, httpC := freePort(t), freePort(t)
	startRun(t, noEnv, httpC, redisServeArgs(grpcC, httpC, policyPath, redisSrv.Addr, redistest.Prefix(t))...)
	out, err = probeTour(grpcC)
	require.NoError(t, err, out)
}

// TestServeRedisDown: serve starts without its Redis (which may come up
// later), says so on /readyz, and answers checks as the policy's
// store_unavailable says: 503 by default, or let through (and journaled,
// to be booked when Redis answers).
func TestServeRedisDown(t *testing.T) {
	tests := map[string]struct {
		defaults string
		allowed  bool
	}{
		"fails closed by default": {},
		"fails open when the policy says so": {
			defaults: "  store_unavailable: allow", allowed: true,
		},
	}
	for name, tc := range tests {
		t.Run(name, func(t *testing.T) {
			dead := freePort(t) // nothing listens there
			grpcAddr, httpAddr := freePort(t), freePort(t)
			srv := startRunReady(t, noEnv, httpAddr, http.StatusServiceUnavailable,
				redisServeArgs(grpcAddr, httpAddr, writePolicy(t, spendPolicy(tc.defaults)), dead, redistest.Prefix(t))...)

			resp, err := httpClient.Get("http://" + httpAddr + "/readyz")
			require.NoError(t, err)
			var ready struct {
				Ready      bool
				Components map[string]string
			}
			require.NoError(t, json.NewDecoder(resp.Body).Decode(&ready))
			require.NoError(t, resp.Body.Close())
			assert.Equal(t, http.StatusServiceUnavailable, resp.StatusCode)
			assert.False(t, ready.Ready)
			assert.Equal(t, "ok", ready.Components["policy"])
			assert.Contains(t, ready.Components["redis"], dead)
			assert.Contains(t, ready.Components["redis"], "connection refused")

			// The call stays in flight (a GET that finished would release
			// its hold: nothing spent).
			out, err := probeHold(grpcAddr)
			if tc.allowed {
				require.NoError(t, err, out)
				assert.Contains(t, out, "decision: ALLOWED")
				assert.Regexp(t, reservationLine, out, "settled as any call: its spend is journaled until Redis answers")
			} else {
				var ee *exitError
				require.ErrorAs(t, err, &ee, out)
				assert.Equal(t, exitDenied, ee.code)
				assert.Contains(t, out, "decision: DENIED (HTTP 503, gRPC UNAVAILABLE)")
				assert.Contains(t, out, "x-tollgate-reason: store_error")
			}

			err = srv.stop(t)
			assert.Contains(t, srv.stderr.String(), "redis not reachable yet")
			if tc.allowed {
				// Redis never came: the spend of the call let through is
				// lost with the process, and serve says so.
				require.ErrorContains(t, err, "spend of calls let through fail open not booked (2 budget periods)", srv.stderr.String())
				assert.Contains(t, srv.stderr.String(), "spend of calls let through fail open not booked: lost with this process")
			} else {
				require.NoError(t, err)
			}
		})
	}
}

// TestServeStoreFlagErrors: a store, settlement or Redis setting that
// cannot work stops serve at once with an error that names it.
func TestServeStoreFlagErrors(t *testing.T) {
	tests := map[string]struct {
		args []string
		want string
	}{
		"unknown store": {
			args: []string{"--store", "bogus"},
			want: `store "bogus": want memory or redis`,
		},
		"unknown settlement": {
			args: []string{"--settle", "bogus"},
			want: `settlement "bogus": want immediate or deferred`,
		},
		"unknown redis mode": {
			args: []string{"--store", "redis", "--redis-mode", "bogus"},
			want: `redis: mode "bogus": want single, sentinel or cluster`,
		},
		"sentinel without a master name": {
			args: []string{"--store", "redis", "--redis-mode", "sentinel"},
			want: "redis: sentinel mode needs the master name",
		},
		"two addresses in single mode": {
			args: []string{"--store", "redis", "--redis-addr", "127.0.0.1:1,127.0.0.1:2"},
			want: "single mode takes one address",
		},
		"spread on the memory store": {
			args: []string{"--redis-spread"},
			want: "--redis-spread is for --store redis",
		},
		"prefix with a brace": {
			args: []string{"--store", "redis", "--redis-prefix", "{tollgate}"},
			want: `prefix "{tollgate}" must be non-empty, without braces`,
		},
	}
	for name, tc := range tests {
		t.Run(name, func(t *testing.T) {
			args := append(serveArgs(freePort(t), freePort(t), "--policy", tourPolicy), tc.args...)
			err := run(context.Background(), args, noEnv, io.Discard, io.Discard)
			require.ErrorContains(t, err, tc.want)
			assert.Equal(t, 1, exitCode(err, io.Discard))
		})
	}
}

// TestServeRedisFailOpenBooked: calls let through fail open while Redis is
// down are settled as any other, and what they cost is booked into Redis
// by serve's own loop once it returns: acme's spend is exactly the three
// calls' $0.01, and only once.
func TestServeRedisFailOpenBooked(t *testing.T) {
	require.NoError(t, redisSrv.Stop(true))
	t.Cleanup(func() { require.NoError(t, redisSrv.Resume(), "bring the shared redis-server back") })
	grpcAddr, httpAddr, prefix := freePort(t), freePort(t), redistest.Prefix(t)
	srv := startRunReady(t, noEnv, httpAddr, http.StatusServiceUnavailable,
		redisServeArgs(grpcAddr, httpAddr, writePolicy(t, spendPolicy("  store_unavailable: allow")), redisSrv.Addr, prefix)...)

	for i := range 3 {
		out, err := probeTour(grpcAddr, "--method", "POST")
		require.NoError(t, err, "call %d: %s", i+1, out)
		assert.Contains(t, out, "decision: ALLOWED")
		assert.Regexp(t, reservationLine, out)
	}

	require.NoError(t, redisSrv.Resume())
	booked := regexp.MustCompile(`(?m)^acme\s+\$0\.036\s+\$0\.03\s+\$0\s+\$0\.006$`)
	require.Eventually(t, func() bool {
		out, err := runUsage("acme", "--addr", httpAddr)
		return err == nil && booked.MatchString(out)
	}, 10*time.Second, 20*time.Millisecond, "the three calls' $0.01 each, booked")
	require.NoError(t, srv.stop(t), "nothing left to book")
	// Read Redis again through a new server.
	grpc2, http2 := freePort(t), freePort(t)
	startRun(t, noEnv, http2, redisServeArgs(grpc2, http2, writePolicy(t, spendPolicy("")), redisSrv.Addr, prefix)...)
	out, err := runUsage("acme", "--addr", http2)
	require.NoError(t, err, out)
	assert.Regexp(t, booked, out, "booked once: a clean stop books nothing again")
}

// TestServeRedisClusterSpread: serve on a real three-master Redis Cluster
// with --redis-spread admits and settles a call whose budget chain (acme,
// then its parent acme-group) is one tenant's, acme-group's: the tenant's
// keys, the shared pool's and the reservation's locator are each under a
// tag of their own.
func TestServeRedisClusterSpread(t *testing.T) {
	cl, err := redistest.StartCluster(3)
	require.NoError(t, err)
	t.Cleanup(func() { assert.NoError(t, cl.Close()) })
	prefix := redistest.Prefix(t)
	grpcAddr, httpAddr := freePort(t), freePort(t)
	args := append(redisServeArgs(grpcAddr, httpAddr, writePolicy(t, spendPolicy("")), strings.Join(cl.Addrs(), ","), prefix),
		"--redis-mode", "cluster", "--redis-spread")
	srv := startRun(t, noEnv, httpAddr, args...)

	out, err := probeHold(grpcAddr)
	require.NoError(t, err, out)
	assert.Contains(t, out, "decision: ALLOWED")
	m := reservationLine.FindStringSubmatch(out)
	require.NotNil(t, m, "no reservation in:\n%s", out)
	out, err = runUsage("acme", "--addr", httpAddr)
	require.NoError(t, err, out)
	assert.Contains(t, out, "calls in flight 1 of 10\n")
	assert.Regexp(t, `(?m)^acme-group\s+unlimited\s+\$0\s+\$0\.012\s+unlimited$`, out)

	resp, err := httpClient.Post("http://"+httpAddr+"/api/reservations/"+m[1]+"/settle", "application/json",
		strings.NewReader(`{"actual_cost_usd":"0.004"}`))
	require.NoError(t, err)
	require.NoError(t, resp.Body.Close())
	require.Equal(t, http.StatusOK, resp.StatusCode)
	out, err = runUsage("acme", "--addr", httpAddr)
	require.NoError(t, err, out)
	assert.Contains(t, out, "calls in flight 0 of 10\n")
	assert.Regexp(t, `(?m)^acme\s+\$0\.036\s+\$0\.004\s+\$0\s+\$0\.032$`, out)

	c := cl.Client(t)
	tags := map[string]bool{}
	require.NoError(t, c.ForEachMaster(context.Background(), func(ctx context.Context, n *redis.Client) error {
		keys, err := n.Keys(ctx, "{"+prefix+"*").Result()
		for _, k := range keys {
			tag, _, _ := strings.Cut(strings.TrimPrefix(k, "{"+prefix+":"), "}")
			kind, _, _ := strings.Cut(tag, ":")
			tagsMu.Lock()
			tags[kind] = true
			tagsMu.Unlock()
		}
		return err
	}))
	assert.True(t, tags["t"] && tags["p"] && tags["l"], "a tenant's, a pool's and a locator's tags: %v", tags)
	require.NoError(t, srv.stop(t))
	assert.Contains(t, srv.stderr.String(), "spread=true")
}

var tagsMu sync.Mutex
