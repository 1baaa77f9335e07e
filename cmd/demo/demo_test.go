package main

import (
	"bytes"
	"context"
	"net/http"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"go.uber.org/goleak"

	"github.com/tollgate/tollgate/policy"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

const (
	demoPolicy  = "../../deploy/demo/policy.yaml"
	sidecarPath = "../../envoy/sidecar.yaml"
)

func TestClassify(t *testing.T) {
	tests := map[string]struct {
		status int
		h      map[string]string
		want   Outcome
		reason string
	}{
		"at once":              {200, nil, Admitted, ""},
		"waited":               {200, map[string]string{"x-tollgate-queue-wait": "0.412"}, Held, ""},
		"rewritten":            {200, map[string]string{"x-tollgate-optimized": "downgrade,flex"}, Downgraded, ""},
		"waited and rewritten": {200, map[string]string{"x-tollgate-optimized": "downgrade", "x-tollgate-queue-wait": "1"}, Downgraded, ""},
		"flex only":            {200, map[string]string{"x-tollgate-optimized": "flex"}, Admitted, ""},
		"refused":              {429, map[string]string{"x-tollgate-reason": "rate_limited"}, Denied, "rate_limited"},
		"over budget":          {429, map[string]string{"x-tollgate-reason": "budget_exceeded"}, Denied, "budget_exceeded"},
		"upstream error":       {502, nil, Failed, "HTTP 502"},
	}
	for name, tc := range tests {
		t.Run(name, func(t *testing.T) {
			h := http.Header{}
			for k, v := range tc.h {
				h.Set(k, v)
			}
			o, reason := classify(tc.status, h)
			assert.Equal(t, tc.want, o)
			assert.Equal(t, tc.reason, reason)
		})
	}
}

func TestP99(t *testing.T) {
	var ds []time.Duration
	for i := 1; i <= 200; i++ {
		ds = append(ds, time.Duration(i)*time.Millisecond)
	}
	assert.Equal(t, 198*time.Millisecond, p99(ds))
	assert.Equal(t, 5*time.Millisecond, p99([]time.Duration{5 * time.Millisecond}))
	assert.Zero(t, p99(nil))
}

// TestTallySummary: the table has a row per tier with its counts, spend
// and p99; the summary totals every outcome, lists refusals and savings,
// and says which outcomes a run never showed.
func TestTallySummary(t *testing.T) {
	tl := newTally(profiles)
	for range 3 {
		tl.record(result{Tier: "enterprise", Outcome: Admitted, Latency: 2 * time.Millisecond})
	}
	tl.record(result{Tier: "premium", Outcome: Downgraded, Latency: 40 * time.Millisecond})
	tl.record(result{Tier: "standard", Outcome: Held, Latency: 900 * time.Millisecond})
	tl.record(result{Tier: "basic", Outcome: Denied, Reason: "budget_exceeded", Latency: time.Millisecond})
	tl.record(result{Tier: "nobody", Outcome: Denied}) // not a demo tier: ignored
	tl.setSpend("basic", spend{Spent: "0.0041234567", Limit: "0.004"})
	tl.setSpend("premium", spend{Spent: "1.5", Limit: "1000", Saved: "0.25"})

	var b bytes.Buffer
	tl.summary(&b, 10*time.Second)
	out := b.String()
	assert.Contains(t, out, "6 calls in 10s (0.6/s)")
	assert.Regexp(t, `enterprise\s+bigco\s+3\s+3\s+0\s+0\s+0\s+0\s+-\s+-\s+2ms`, out)
	assert.Regexp(t, `basic\s+hobby\s+1\s+0\s+0\s+0\s+1\s+0\s+\$0\.004123\s+\$0\.004\s+1ms`, out)
	assert.Contains(t, out, "outcomes: admitted 3, held 1, downgraded 1, denied 1, failed 0")
	assert.Contains(t, out, "refusals: denied: budget_exceeded 1")
	assert.Contains(t, out, "saved by the optimize rules: acme $0.25")
	assert.Contains(t, out, "every outcome seen")

	empty := newTally(profiles)
	b.Reset()
	empty.summary(&b, time.Second)
	assert.Contains(t, b.String(), "not seen this run: admitted, held, downgraded, denied")
}

// TestProfilesMatchPolicy: each client the driver sends as is in the demo
// policy, on the tier the table names.
func TestProfilesMatchPolicy(t *testing.T) {
	set, err := policy.Load(demoPolicy)
	require.NoError(t, err)
	require.NotEmpty(t, set.Optimize, "the demo needs an optimize rule to show downgrades")
	for _, p := range profiles {
		c, ok := set.Clients[p.Client]
		if assert.True(t, ok, "client %s", p.Client) {
			assert.Equal(t, p.Tier, c.Tier.Name, "client %s", p.Client)
		}
		for _, class := range p.Classes {
			_, ok := policy.ParseClass(class)
			assert.True(t, ok, "class %s", class)
		}
	}
}

// TestDemo runs the whole demo for a few seconds on freshly built binaries
// and expects every outcome in its summary. It builds two binaries and
// runs five processes: skipped under -short.
func TestDemo(t *testing.T) {
	if testing.Short() {
		t.Skip("builds tollgate and fakeapi and runs the whole demo; without -short only")
	}
	dir := t.TempDir()
	build := func(name string) string {
		out := filepath.Join(dir, name)
		b, err := exec.Command("go", "build", "-o", out, "../"+name).CombinedOutput()
		require.NoError(t, err, "go build %s: %s", name, b)
		return out
	}
	tollgate, fake := build("tollgate"), build("fakeapi")

	ctx, cancel := context.WithTimeout(context.Background(), 90*time.Second)
	defer cancel()
	var out bytes.Buffer
	err := run(ctx, []string{"--duration", "8s", "--clear", "never", "--tollgate", tollgate, "--fakeapi", fake,
		"--policy", demoPolicy, "--envoy-config", sidecarPath}, func(string) string { return "" }, &out)
	require.NoError(t, err, out.String())
	s := out.String()
	require.Contains(t, s, "== summary", s)
	summary := s[strings.LastIndex(s, "== summary"):]
	t.Log(summary)
	assert.Contains(t, summary, "every outcome seen: admitted, held, downgraded, denied")
	assert.Contains(t, summary, "failed 0")
	assert.Contains(t, summary, "budget_exceeded", "hobby runs over its budget")
	assert.Greater(t, strings.Count(s, "tollgate demo:"), 4, "a table each second")
}
