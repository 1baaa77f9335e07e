package main

import (
	"io"
	"net/http"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/tollgate/tollgate/internal/redistest"
)

// reachableMetric reads tollgate_redis_reachable from a server's /metrics.
func reachableMetric(t *testing.T, httpAddr string) string {
	t.Helper()
	resp, err := httpClient.Get("http://" + httpAddr + "/metrics")
	require.NoError(t, err)
	body, err := io.ReadAll(resp.Body)
	require.NoError(t, resp.Body.Close())
	require.NoError(t, err)
	m := regexp.MustCompile(`(?m)^tollgate_redis_reachable (\S+)$`).FindStringSubmatch(string(body))
	require.NotNil(t, m, "tollgate_redis_reachable not in /metrics")
	return m[1]
}

// TestServeReadinessFollowsRedis: with Redis down when serve starts,
// /readyz is not ready and says why, on the plain Redis store and as a
// fleet member alike, until Redis answers; Redis going away after that
// leaves the sidecar ready, reporting the outage as degraded (every
// sidecar shares the Redis: the fleet must not leave its Services at
// once). tollgate_redis_reachable follows, and each change is logged
// once, however many probes fail meanwhile.
func TestServeReadinessFollowsRedis(t *testing.T) {
	tests := map[string]struct {
		args      func(grpcAddr, httpAddr, policyPath, prefix string) []string
		getenv    func(string) string
		meanwhile string
	}{
		"redis store": {
			args: func(grpcAddr, httpAddr, policyPath, prefix string) []string {
				return redisServeArgs(grpcAddr, httpAddr, policyPath, redisSrv.Addr, prefix)
			},
			getenv: noEnv, meanwhile: "; each check follows the policy's store_unavailable",
		},
		"fleet member": {
			args: func(grpcAddr, httpAddr, policyPath, prefix string) []string {
				return clusterServeArgs(grpcAddr, httpAddr, policyPath, prefix, "pod-r", "0")
			},
			getenv: keyEnv, meanwhile: "; this member decides on its share of each pool and budget",
		},
	}
	for name, tc := range tests {
		t.Run(name, func(t *testing.T) {
			require.NoError(t, redisSrv.Stop(true))
			t.Cleanup(func() { require.NoError(t, redisSrv.Resume(), "bring the shared redis-server back") })
			grpcAddr, httpAddr := freePort(t), freePort(t)
			srv := startRunReady(t, tc.getenv, httpAddr, http.StatusServiceUnavailable,
				tc.args(grpcAddr, httpAddr, writePolicy(t, spendPolicy("")), redistest.Prefix(t))...)
			url := "http://" + httpAddr + "/readyz"
			meanwhile := regexp.QuoteMeta(tc.meanwhile)

			// Down at start: not ready, and why.
			var ready readiness
			assert.Equal(t, http.StatusServiceUnavailable, getJSON(t, url, &ready))
			assert.False(t, ready.Ready)
			assert.Regexp(t, `^not reached since start \(\S+, \d+ failed probes\): .*connection refused`+meanwhile+`$`, ready.Components["redis"])
			assert.Equal(t, "0", reachableMetric(t, httpAddr))

			// Comes up: ready.
			require.NoError(t, redisSrv.Resume())
			require.Eventually(t, func() bool { return httpStatus(url) == http.StatusOK }, 10*time.Second, 20*time.Millisecond)
			ready = readiness{}
			getJSON(t, url, &ready)
			assert.True(t, ready.Ready)
			assert.False(t, ready.Degraded)
			assert.Equal(t, "ok", ready.Components["redis"])
			assert.Equal(t, "1", reachableMetric(t, httpAddr))

			// Goes down: still ready, degraded, for several probes.
			require.NoError(t, redisSrv.Stop(true))
			require.Eventually(t, func() bool {
				getJSON(t, url, &ready)
				return regexp.MustCompile(`\([2-9]\d* failed probes\)`).MatchString(ready.Components["redis"])
			}, 10*time.Second, 20*time.Millisecond, "two probes or more fail")
			assert.Equal(t, http.StatusOK, getJSON(t, url, &ready))
			assert.True(t, ready.Ready)
			assert.True(t, ready.Degraded)
			assert.Regexp(t, `^unreachable since \S+ \(\d+ failed probes\): .+`+meanwhile+`$`, ready.Components["redis"])
			assert.Equal(t, "0", reachableMetric(t, httpAddr))

			// And back.
			require.NoError(t, redisSrv.Resume())
			require.Eventually(t, func() bool {
				getJSON(t, url, &ready)
				return ready.Components["redis"] == "ok"
			}, 10*time.Second, 20*time.Millisecond)
			assert.Equal(t, "1", reachableMetric(t, httpAddr))

			require.NoError(t, srv.stop(t))
			log := srv.stderr.String()
			for _, msg := range []string{"redis not reachable yet", "redis reachable", "redis unreachable", "redis reachable again"} {
				assert.Equal(t, 1, strings.Count(log, `msg="`+msg+`"`), "%q logged once; log:\n%s", msg, log)
			}
		})
	}
}
