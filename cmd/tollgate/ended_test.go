package main

import (
	"io"
	"regexp"
	"strconv"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// TestEndedBoundFlags: serve's --ended-max bounds what the memory store
// keeps of ended reservations, and /metrics shows what is kept and what
// was forgotten early.
func TestEndedBoundFlags(t *testing.T) {
	grpcAddr, httpAddr := freePort(t), freePort(t)
	startRun(t, noEnv, httpAddr, serveArgs(grpcAddr, httpAddr, "--policy", tourPolicy, "--ended-max", "2", "--ended-retention", "1h")...)
	const calls = 5
	for range calls {
		out, err := probeTour(grpcAddr) // admitted, then settled through ext_proc
		require.NoError(t, err, out)
	}
	resp, err := httpClient.Get("http://" + httpAddr + "/metrics")
	require.NoError(t, err)
	body, err := io.ReadAll(resp.Body)
	require.NoError(t, resp.Body.Close())
	require.NoError(t, err)
	metric := func(name string) float64 {
		m := regexp.MustCompile(`(?m)^` + name + ` (\S+)$`).FindSubmatch(body)
		require.NotNil(t, m, "%s not in /metrics", name)
		v, err := strconv.ParseFloat(string(m[1]), 64)
		require.NoError(t, err)
		return v
	}
	assert.Equal(t, 2.0, metric("tollgate_store_ended_reservations"))
	assert.Equal(t, float64(calls-2), metric("tollgate_store_ended_reservations_evicted_total"))
	assert.Positive(t, metric("tollgate_store_ended_reservations_bytes"))
}

// TestEndedFlagsValidated: a bound that cannot work stops serve at once.
func TestEndedFlagsValidated(t *testing.T) {
	tests := map[string]struct {
		args []string
		want string
	}{
		"zero count":               {args: []string{"--ended-max", "0"}, want: "must all be positive"},
		"negative bytes":           {args: []string{"--ended-max-bytes", "-1"}, want: "must all be positive"},
		"redis retention too long": {args: []string{"--store", "redis", "--ended-retention", "200h"}, want: "must be whole seconds from 1s to 168h0m0s"},
	}
	for name, tc := range tests {
		t.Run(name, func(t *testing.T) {
			err := run(t.Context(), append(serveArgs(freePort(t), freePort(t)), tc.args...), noEnv, io.Discard, io.Discard)
			require.ErrorContains(t, err, tc.want)
		})
	}
}
