package main

import (
	"bytes"
	"context"
	"encoding/json"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	procfilterv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/http/ext_proc/v3"
	authv3 "github.com/envoyproxy/go-control-plane/envoy/service/auth/v3"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"google.golang.org/protobuf/types/known/wrapperspb"

	"github.com/tollgate/tollgate/internal/redistest"
)

// floorArgs runs floor on the repository's fixtures with bin as both
// servers, for short windows.
func floorArgs(bin string, extra ...string) []string {
	return append([]string{"floor", "--bin", bin, "--bare-bin", bin,
		"--policy", "../../testdata/good/bench.yaml", "--envoy-config", "../../envoy/sidecar.yaml",
		"--body", "../../testdata/bodies/openai-chat-1k.json", "--response", "../../testdata/responses/openai-chat.json",
		"--cache-policy", "../../testdata/good/bench-cache.yaml", "--cache-body", "../../testdata/bodies/openai-chat-1k-t0.json"},
		extra...)
}

// TestFloor runs the built binary, because floor measures servers that
// are processes of their own: bare-floor and serve, started by floor.
func TestFloor(t *testing.T) {
	if testing.Short() {
		t.Skip("builds the binary")
	}
	bin := filepath.Join(t.TempDir(), "tollgate")
	out, err := exec.Command("go", "build", "-o", bin, ".").CombinedOutput()
	require.NoError(t, err, "go build: %s", out)

	t.Run("end to end", func(t *testing.T) {
		var stdout, stderr bytes.Buffer
		err := run(context.Background(), floorArgs(bin, "--duration", "300ms", "--warmup", "100ms", "--concurrency", "2", "--json"),
			noEnv, &stdout, &stderr)
		require.NoError(t, err, "stderr:\n%s", &stderr)
		assert.Empty(t, childPIDs(t), "floor left servers running")

		var rep floorReport
		require.NoError(t, json.Unmarshal(stdout.Bytes(), &rep), "stdout must be the JSON report alone:\n%s", &stdout)
		assert.Equal(t, 1000, rep.Config.Clients)
		assert.Equal(t, "request headers SEND, request body BUFFERED_PARTIAL, response headers SEND, response body STREAMED", rep.Config.ProcessingMode)
		require.Len(t, rep.Windows, 6)
		seen := map[string]int{}
		for _, w := range rep.Windows {
			name := w.Server + " " + w.Mode + " ×" + strconv.Itoa(w.Callers)
			seen[name]++
			assert.Positive(t, w.Calls, name)
			assert.Zero(t, w.Errors, "%s: %s", name, w.FirstError)
			assert.Zero(t, w.Denied, name)
			assert.Positive(t, w.PerSecond, name)
			assert.Positive(t, w.P50, name)
			assert.GreaterOrEqual(t, w.P99, w.P50, name)
			assert.Positive(t, w.ServerCPU, name)
		}
		assert.Equal(t, map[string]int{
			"bare check ×2": 1, "tollgate check ×2": 1, "bare whole_call ×2": 1, "tollgate whole_call ×2": 1,
			"bare check ×1": 1, "tollgate check ×1": 1,
		}, seen)
		require.Len(t, rep.Ratios, 3)
		for _, r := range rep.Ratios {
			for what, v := range map[string]*float64{"throughput": r.Throughput, "cpu": r.CPUPerCall, "p50": r.P50, "p99": r.P99} {
				if assert.NotNil(t, v, "%s ×%d: %s ratio", r.Mode, r.Callers, what) {
					assert.Positive(t, *v, "%s ×%d: %s ratio", r.Mode, r.Callers, what)
				}
			}
		}

		// The table carries the same figures.
		rep.write(&stdout)
		assert.Contains(t, stdout.String(), "tollgate/bare")
		assert.Regexp(t, `whole_call\s+2\s+[0-9.]+x\s+[0-9.]+x`, stdout.String())
	})

	t.Run("rls on Redis", func(t *testing.T) {
		var stdout, stderr bytes.Buffer
		err := run(context.Background(), floorArgs(bin, "--modes", "rls", "--rls-config", "../../testdata/rls/bench",
			"--store", "redis", "--redis-addr", redisSrv.Addr, "--redis-prefix", redistest.Prefix(t),
			"--duration", "300ms", "--warmup", "100ms", "--concurrency", "2", "--json"), noEnv, &stdout, &stderr)
		require.NoError(t, err, "stderr:\n%s", &stderr)
		assert.Empty(t, childPIDs(t), "floor left servers running")

		var rep floorReport
		require.NoError(t, json.Unmarshal(stdout.Bytes(), &rep), "stdout must be the JSON report alone:\n%s", &stdout)
		assert.Equal(t, "redis", rep.Config.Store)
		assert.Equal(t, "../../testdata/rls/bench", rep.Config.RLSConfig)
		require.Len(t, rep.Windows, 2, "bare and Tollgate, rls at 2 callers")
		for _, w := range rep.Windows {
			assert.Equal(t, modeRLS, w.Mode)
			assert.Equal(t, 2, w.Callers)
			assert.Positive(t, w.Calls, w.Server)
			assert.Zero(t, w.Errors, "%s: %s", w.Server, w.FirstError)
			assert.Zero(t, w.Denied, w.Server)
			if w.Server == "bare" {
				assert.Zero(t, w.RedisRoundTrips)
				continue
			}
			// One script per decision, and the readiness probe's PING
			// every second: never fewer round trips than decisions.
			assert.GreaterOrEqual(t, w.RedisRoundTrips, w.Calls)
			assert.LessOrEqual(t, w.RedisRoundTrips, w.Calls+w.Calls/10)
		}
		require.Len(t, rep.Ratios, 1)
		assert.Equal(t, modeRLS, rep.Ratios[0].Mode)
		require.NotNil(t, rep.Ratios[0].CPUPerCall)

		rep.write(&stdout)
		assert.Regexp(t, `rls\s+2\s+tollgate\s+-\s+\d+.*\s1\.\d{3}\s+0\s*\n`, stdout.String(), "round trips per call in the table")
	})

	t.Run("cachehit", func(t *testing.T) {
		var stdout, stderr bytes.Buffer
		// No warm-up: the first call of the Tollgate window is the miss that
		// fills the cache, and every later one a hit.
		err := run(context.Background(), floorArgs(bin, "--modes", "cachehit", "--duration", "300ms", "--warmup", "0s", "--json"),
			noEnv, &stdout, &stderr)
		require.NoError(t, err, "stderr:\n%s", &stderr)
		assert.Empty(t, childPIDs(t), "floor left servers running")

		var rep floorReport
		require.NoError(t, json.Unmarshal(stdout.Bytes(), &rep), "stdout must be the JSON report alone:\n%s", &stdout)
		assert.Equal(t, "../../testdata/good/bench-cache.yaml", rep.Config.CachePolicy)
		require.Len(t, rep.Windows, 2, "bare and Tollgate, cachehit at one caller")
		for _, w := range rep.Windows {
			assert.Equal(t, modeCacheHit, w.Mode)
			assert.Equal(t, 1, w.Callers, "one caller, whatever --concurrency says")
			assert.Positive(t, w.Calls, w.Server)
			assert.Zero(t, w.Errors, "%s: %s", w.Server, w.FirstError)
			assert.Zero(t, w.Denied, w.Server)
		}
		assert.Zero(t, rep.Windows[0].CacheMisses, "the bare server has no cache")
		assert.Equal(t, int64(1), rep.Windows[1].CacheMisses, "one call filled the cache, every other was a hit")
		require.Len(t, rep.Ratios, 1)
		require.NotNil(t, rep.Ratios[0].P50)
		require.NotNil(t, rep.Ratios[0].P99)

		rep.write(&stdout)
		assert.Regexp(t, `cachehit\s+1\s+[0-9.]+x\s+[0-9.]+x\s+[0-9.]+x\s+[0-9.]+x`, stdout.String())
		assert.Contains(t, stdout.String(), "1 not (the call that fills it")
	})

	t.Run("stops its servers when stopped", func(t *testing.T) {
		ctx, cancel := context.WithCancel(context.Background())
		var stderr syncBuffer
		done := make(chan error, 1)
		go func() {
			done <- run(ctx, floorArgs(bin, "--duration", "20s", "--warmup", "0s", "--concurrency", "2"), noEnv, &bytes.Buffer{}, &stderr)
		}()
		require.Eventually(t, func() bool { return strings.Contains(stderr.String(), "measuring") }, 20*time.Second, 10*time.Millisecond)
		assert.Len(t, childPIDs(t), 3, "bare, and Tollgate for each settlement")
		cancel()
		select {
		case err := <-done:
			require.ErrorIs(t, err, context.Canceled)
		case <-time.After(10 * time.Second):
			t.Fatal("floor did not stop")
		}
		assert.Empty(t, childPIDs(t))
	})

	t.Run("a server that does not start", func(t *testing.T) {
		err := run(context.Background(), floorArgs(bin, "--bin", "/bin/false"), noEnv, &bytes.Buffer{}, &bytes.Buffer{})
		require.ErrorContains(t, err, "exited before serving")
		assert.Empty(t, childPIDs(t), "the bare server, started first, must be stopped too")
	})
}

// childPIDs lists this process's live child processes that run the
// binaries floor starts (the package's redis-server is one too).
func childPIDs(t *testing.T) []int {
	t.Helper()
	floors := map[string]bool{"(tollgate)": true, "(false)": true}
	me := strconv.Itoa(os.Getpid())
	stats, err := filepath.Glob("/proc/[0-9]*/stat")
	require.NoError(t, err)
	var out []int
	for _, p := range stats {
		b, err := os.ReadFile(p)
		if err != nil {
			continue // gone meanwhile
		}
		s := string(b)
		end := strings.LastIndexByte(s, ')')
		if start := strings.IndexByte(s, '('); start < 0 || end < start || !floors[s[start:end+1]] {
			continue
		}
		fs := strings.Fields(s[end+1:])
		if len(fs) > 1 && fs[1] == me && fs[0] != "Z" {
			pid, _ := strconv.Atoi(filepath.Base(filepath.Dir(p)))
			out = append(out, pid)
		}
	}
	return out
}

func TestFloorSteps(t *testing.T) {
	tests := map[string]struct {
		modes []string
		conc  int
		want  []floorStep
		err   string
	}{
		"the default":        {modes: []string{modeCheck, modeWhole}, conc: 64, want: []floorStep{{modeCheck, 64}, {modeWhole, 64}, {modeCheck, 1}}},
		"all, in any order":  {modes: []string{modeRLS, modeCheck, modeWhole}, conc: 8, want: []floorStep{{modeCheck, 8}, {modeWhole, 8}, {modeCheck, 1}, {modeRLS, 8}}},
		"rls alone":          {modes: []string{modeRLS}, conc: 64, want: []floorStep{{modeRLS, 64}}},
		"check at one":       {modes: []string{modeCheck}, conc: 1, want: []floorStep{{modeCheck, 1}}},
		"cachehit alone":     {modes: []string{modeCacheHit}, conc: 64, want: []floorStep{{modeCacheHit, 1}}},
		"cachehit last":      {modes: []string{modeCacheHit, modeRLS, modeCheck}, conc: 8, want: []floorStep{{modeCheck, 8}, {modeCheck, 1}, {modeRLS, 8}, {modeCacheHit, 1}}},
		"an unknown mode":    {modes: []string{modeCheck, "rsl"}, conc: 2, err: `unknown mode "rsl"`},
		"nothing to measure": {modes: nil, conc: 2, err: "nothing to measure"},
	}
	for name, tc := range tests {
		t.Run(name, func(t *testing.T) {
			got, err := floorSteps(tc.modes, tc.conc)
			if tc.err != "" {
				require.ErrorContains(t, err, tc.err)
				return
			}
			require.NoError(t, err)
			assert.Equal(t, tc.want, got)
		})
	}
}

func TestMetricValue(t *testing.T) {
	const text = "# HELP tollgate_redis_round_trips_total Round trips.\n# TYPE tollgate_redis_round_trips_total counter\n" +
		"tollgate_redis_round_trips_total_other 7\ntollgate_redis_round_trips_total 1.234567e+06\n"
	n, err := metricValue(text, "tollgate_redis_round_trips_total")
	require.NoError(t, err)
	assert.EqualValues(t, 1234567, n)

	_, err = metricValue("tollgate_redis_reachable 1\n", "tollgate_redis_round_trips_total")
	require.ErrorContains(t, err, "no tollgate_redis_round_trips_total")
}

func TestLoadEnvoyProc(t *testing.T) {
	write := func(t *testing.T, yaml string) string {
		p := filepath.Join(t.TempDir(), "envoy.yaml")
		require.NoError(t, os.WriteFile(p, []byte(yaml), 0o600))
		return p
	}
	const filter = `
http_filters:
- name: envoy.filters.http.ext_proc
  typed_config:
    "@type": type.googleapis.com/envoy.extensions.filters.http.ext_proc.v3.ExternalProcessor
    grpc_service: { envoy_grpc: { cluster_name: tollgate } }
`
	tests := map[string]struct {
		path     func(t *testing.T) string
		mode     *procfilterv3.ProcessingMode
		override bool
		err      string
	}{
		"the shipped config": {
			path: func(*testing.T) string { return "../../envoy/sidecar.yaml" },
			mode: &procfilterv3.ProcessingMode{
				RequestHeaderMode: procfilterv3.ProcessingMode_SEND, RequestBodyMode: procfilterv3.ProcessingMode_BUFFERED_PARTIAL,
				RequestTrailerMode: procfilterv3.ProcessingMode_SKIP, ResponseHeaderMode: procfilterv3.ProcessingMode_SEND,
				ResponseBodyMode: procfilterv3.ProcessingMode_STREAMED, ResponseTrailerMode: procfilterv3.ProcessingMode_SKIP,
			},
			override: true,
		},
		"Envoy's defaults": {
			path: func(t *testing.T) string { return write(t, filter) },
			mode: &procfilterv3.ProcessingMode{},
		},
		"no override while bodies go out without waiting": {
			path: func(t *testing.T) string {
				return write(t, filter+"    allow_mode_override: true\n    send_body_without_waiting_for_header_response: true\n")
			},
			mode: &procfilterv3.ProcessingMode{},
		},
		"no ext_proc filter": {
			path: func(t *testing.T) string { return write(t, "http_filters: [{name: envoy.filters.http.router}]\n") },
			err:  "has no envoy.filters.http.ext_proc filter",
		},
		"an unknown field": {
			path: func(t *testing.T) string { return write(t, filter+"    allow_mode_overide: true\n") },
			err:  "allow_mode_overide",
		},
		"another type": {
			path: func(t *testing.T) string {
				return write(t, strings.Replace(filter, "ExternalProcessor", "ExtProcPerRoute", 1))
			},
			err: "want type.googleapis.com/envoy.extensions.filters.http.ext_proc.v3.ExternalProcessor",
		},
		"no file": {
			path: func(t *testing.T) string { return filepath.Join(t.TempDir(), "missing.yaml") },
			err:  "no such file",
		},
	}
	for name, tc := range tests {
		t.Run(name, func(t *testing.T) {
			got, err := loadEnvoyProc(tc.path(t))
			if tc.err != "" {
				require.ErrorContains(t, err, tc.err)
				return
			}
			require.NoError(t, err)
			assert.Equal(t, tc.mode.String(), got.mode.String())
			assert.Equal(t, tc.override, got.allowOverride)
		})
	}
}

func TestForwardedHeaders(t *testing.T) {
	opt := func(k, v string, action corev3.HeaderValueOption_HeaderAppendAction) *corev3.HeaderValueOption {
		return &corev3.HeaderValueOption{Header: &corev3.HeaderValue{Key: k, Value: v}, AppendAction: action}
	}
	in := map[string]string{":path": "/v1/chat/completions", "x-tollgate-client": "a", "x-drop": "1"}
	tests := map[string]struct {
		ok   *authv3.OkHttpResponse
		want map[string]string
	}{
		"no answer headers": {
			want: in,
		},
		"set, append, add if absent, overwrite if present, remove": {
			ok: &authv3.OkHttpResponse{
				Headers: []*corev3.HeaderValueOption{
					opt("X-Tollgate-Reservation", "r1", corev3.HeaderValueOption_OVERWRITE_IF_EXISTS_OR_ADD),
					opt("x-tollgate-client", "b", corev3.HeaderValueOption_APPEND_IF_EXISTS_OR_ADD),
					opt(":path", "/elsewhere", corev3.HeaderValueOption_ADD_IF_ABSENT),
					opt("x-absent", "no", corev3.HeaderValueOption_OVERWRITE_IF_EXISTS),
					{Header: &corev3.HeaderValue{Key: "x-tollgate-route", RawValue: []byte("openai")}, Append: wrapperspb.Bool(true)},
				},
				HeadersToRemove: []string{"X-Drop"},
			},
			want: map[string]string{":path": "/v1/chat/completions", "x-tollgate-client": "a,b",
				"x-tollgate-reservation": "r1", "x-tollgate-route": "openai"},
		},
		"the deprecated append=false overwrites": {
			ok: &authv3.OkHttpResponse{Headers: []*corev3.HeaderValueOption{
				{Header: &corev3.HeaderValue{Key: "x-tollgate-client", Value: "c"}, Append: wrapperspb.Bool(false)},
			}},
			want: map[string]string{":path": "/v1/chat/completions", "x-tollgate-client": "c", "x-drop": "1"},
		},
	}
	for name, tc := range tests {
		t.Run(name, func(t *testing.T) {
			got := map[string]string{}
			for _, h := range forwardedHeaders(in, tc.ok).GetHeaders() {
				assert.Empty(t, h.GetValue(), "Envoy sends raw_value")
				got[h.GetKey()] = string(h.GetRawValue())
			}
			assert.Equal(t, tc.want, got)
		})
	}
}
