package main

import (
	"bytes"
	"errors"
	"math"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// series makes n samples two seconds apart from f(i).
func series(n int, f func(i int) float64) (at, v []float64) {
	for i := range n {
		at = append(at, float64(2*i))
		v = append(v, f(i))
	}
	return at, v
}

// noise is a fixed, repeatable wobble of ±amp, as a GC cycle and bursts
// of calls make.
func noise(i int, amp float64) float64 { return amp * math.Sin(float64(i)*1.7) }

const mb = 1 << 20

// sawtooth is flat for the first half of n samples, then rises by 0.8 MiB
// a sample and drops back for the last tenth.
func sawtooth(i, n int) float64 {
	if i < n/2 || i >= n-n/10 {
		return 0
	}
	return float64(i-n/2) * 0.8 * mb * 15 / float64(n/2)
}

func TestJudgeTrend(t *testing.T) {
	tol := tolerance{Abs: 16 * mb, Rel: 0.2}
	tests := map[string]struct {
		f      func(i int) float64
		n      int
		flat   bool
		judged bool
	}{
		"flat with noise": {n: 300, flat: true, judged: true,
			f: func(i int) float64 { return 80*mb + noise(i, 6*mb) }},
		"a GC spike now and then": {n: 300, flat: true, judged: true,
			f: func(i int) float64 {
				if i%37 == 0 {
					return 200 * mb
				}
				return 80*mb + noise(i, 2*mb)
			}},
		"grows to its working size in the first half, then stays": {n: 300, flat: true, judged: true,
			f: func(i int) float64 { return 70*mb + min(float64(i), 100)*0.1*mb + noise(i, 2*mb) }},
		"a leak of 100 KiB a sample": {n: 300, flat: false, judged: true,
			f: func(i int) float64 { return 80*mb + float64(i)*100*1024 + noise(i, 4*mb) }},
		"a leak that starts halfway": {n: 300, flat: false, judged: true,
			f: func(i int) float64 { return 80*mb + max(0, float64(i-150))*200*1024 }},
		"a step up at the end": {n: 300, flat: false, judged: true,
			f: func(i int) float64 {
				if i > 250 {
					return 120 * mb
				}
				return 80 * mb
			}},
		"shrinks": {n: 300, flat: true, judged: true,
			f: func(i int) float64 { return 120*mb - float64(i)*50*1024 }},
		"too few samples": {n: minJudged - 1, flat: false, judged: false,
			f: func(i int) float64 { return float64(i) * 100 * mb }},
		// A heap's sawtooth caught rising through most of a short run's
		// second half: too few samples for a trend, and it ends where it
		// began.
		"a short run's rise that falls back": {n: 30, flat: true, judged: true,
			f: func(i int) float64 { return 80*mb + sawtooth(i, 30) }},
		// Long enough for a trend: four minutes of rise in the second half
		// is one, though it falls back in the last tenth.
		"the same, three hundred samples long": {n: 300, flat: false, judged: true,
			f: func(i int) float64 { return 80*mb + sawtooth(i, 300) }},
	}
	for name, tc := range tests {
		t.Run(name, func(t *testing.T) {
			at, v := series(tc.n, tc.f)
			tr := judgeTrend(at, v, tol)
			assert.Equal(t, tc.judged, tr.Judged, "judged")
			assert.Equal(t, tc.flat, tr.Flat, "flat: start %s end %s growth %s projected %s tolerance %s",
				mib(tr.Start), mib(tr.End), mib(tr.Growth), mib(tr.Projected), mib(tr.Tolerance))
			assert.Equal(t, tc.n, tr.Samples)
		})
	}
}

func TestJudgeTrendFigures(t *testing.T) {
	at, v := series(100, func(i int) float64 { return 1000 + 2*float64(i) }) // +1 a second
	tr := judgeTrend(at, v, tolerance{Abs: 10, Rel: 0.01})
	assert.Equal(t, 198*time.Second, tr.Span)
	assert.InDelta(t, 1.0, tr.Slope, 1e-9, "per second")
	assert.InDelta(t, 198, tr.Projected, 1e-6)
	assert.InDelta(t, 1000+2*4.5, tr.Start, 1e-9, "median of the first tenth")
	assert.InDelta(t, 1000+2*94.5, tr.End, 1e-9, "median of the last tenth")
	assert.InDelta(t, 1000+2*49.5, tr.Middle, 1e-9)
	assert.InDelta(t, 10.09, tr.Tolerance, 1e-9, "1% of the start is above 10")
	assert.Equal(t, 1000.0, tr.SeriesMin)
	assert.Equal(t, 1198.0, tr.SeriesMax)
	assert.False(t, tr.Flat)

	assert.Equal(t, trend{}, judgeTrend(nil, nil, tolerance{}), "no samples")
}

func TestTheilSenIgnoresOutliers(t *testing.T) {
	x, y := series(40, func(i int) float64 { return 3 * float64(i) })
	y[5], y[20], y[33] = 1e9, -1e9, 1e12
	assert.InDelta(t, 1.5, theilSen(x, y), 1e-9, "three wild points of forty do not tilt it")
	assert.Zero(t, theilSen([]float64{1, 1}, []float64{0, 5}), "no distinct x: no slope")
}

func TestMedian(t *testing.T) {
	assert.Equal(t, 0.0, median(nil))
	assert.Equal(t, 2.0, median([]float64{3, 1, 2}))
	in := []float64{4, 1, 3, 2}
	assert.Equal(t, 2.5, median(in))
	assert.Equal(t, []float64{4, 1, 3, 2}, in, "not sorted in place")
}

func TestJudgeIdle(t *testing.T) {
	assert.True(t, judgeIdle(28, 28, tolerance{Abs: 10}).OK)
	assert.True(t, judgeIdle(28, 38, tolerance{Abs: 10}).OK)
	assert.True(t, judgeIdle(28, 20, tolerance{Abs: 10}).OK, "fewer is fine")
	assert.False(t, judgeIdle(28, 39, tolerance{Abs: 10}).OK)
	assert.True(t, judgeIdle(1000, 1090, tolerance{Abs: 10, Rel: 0.1}).OK, "10% of a thousand")
}

func TestTallyAndJudge(t *testing.T) {
	at, flat := series(50, func(i int) float64 { return 80 * mb })
	_, leak := series(50, func(i int) float64 { return 80*mb + float64(i)*mb })
	_, gor := series(50, func(i int) float64 { return 40 })
	rep := &storeReport{Store: "memory", Duration: time.Minute, Warmup: 6 * time.Second, Drained: 3 * time.Second, Kinds: map[string]*tally{}}
	ok, bad := &tally{}, &tally{}
	rep.Kinds["openai_json"], rep.Kinds["hostile_wrong_token"] = ok, bad
	ok.add("200", nil)
	ok.add("200", nil)
	ok.add("429 rate_limited", nil)
	bad.add("401", nil)
	bad.add("200", errors.New("200, want one of 401"))
	rep.Members = []memberReport{
		{Name: "a", RSS: judgeTrend(at, flat, tolerance{Abs: 16 * mb}), Goroutines: judgeTrend(at, gor, tolerance{Abs: 25}),
			IdleGo: judgeIdle(28, 28, tolerance{Abs: 10}), IdleFDs: judgeIdle(15, 15, tolerance{Abs: 10}), Exit: "SIGTERM, exit status 0"},
		{Name: "b", RSS: judgeTrend(at, leak, tolerance{Abs: 16 * mb}), Goroutines: judgeTrend(at, gor, tolerance{Abs: 25}),
			IdleGo: judgeIdle(28, 60, tolerance{Abs: 10}), IdleFDs: judgeIdle(15, 15, tolerance{Abs: 10}), Exit: "SIGTERM, exit status 0"},
	}
	assert.Equal(t, int64(3), ok.Calls)
	assert.Equal(t, map[string]int64{"200": 2, "429 rate_limited": 1}, ok.Outcomes)
	assert.Equal(t, map[string]int64{"401": 1, "UNEXPECTED 200": 1}, bad.Outcomes)
	assert.Equal(t, []string{"200, want one of 401"}, bad.Examples)

	rep.judge()
	require.Len(t, rep.Problems, 3, "%q", rep.Problems)
	assert.Contains(t, rep.Problems[0], "hostile_wrong_token: 1 unexpected")
	assert.Contains(t, rep.Problems[1], "b: RSS not flat")
	assert.Contains(t, rep.Problems[2], "b: goroutines at rest 60 after the run, 28 before")

	var out bytes.Buffer
	rep.write(&out)
	summary(&out, []*storeReport{rep})
	s := out.String()
	for _, want := range []string{"== soak memory: 1m0s of traffic after 6s of warm-up, 2 tollgate process(es)",
		"200 ×2, 429 rate_limited ×1", "NOT FLAT", "verdict memory: FAIL", "drained: queue empty", "a at rest, before → after: goroutines 28 → 28"} {
		assert.Contains(t, s, want)
	}
	assert.Equal(t, 3, strings.Count(s, "FAIL\n"), "the store's verdict and the summary's row of each member")
}

func TestOutcomesLargestFirst(t *testing.T) {
	assert.Equal(t, "b ×3, a ×1, c ×1", outcomes(map[string]int64{"a": 1, "b": 3, "c": 1}))
	assert.Empty(t, outcomes(nil))
}

func TestParseMetrics(t *testing.T) {
	in := `# HELP go_goroutines Number of goroutines that currently exist.
# TYPE go_goroutines gauge
go_goroutines 31
process_open_fds 15
tollgate_queue_depth{class="batch",pool="narrow"} 2
tollgate_queue_depth{class="fast",pool="narrow"} 1
tollgate_authz_decisions_total{outcome="denied",pool="openai-tokens",reason="rate_limited",tier="standard"} 7
go_memstats_heap_inuse_bytes 3.3554432e+07
`
	ms, err := parseMetrics(strings.NewReader(in))
	require.NoError(t, err)
	assert.Equal(t, 31.0, ms["go_goroutines"])
	assert.Equal(t, 3.0, ms["tollgate_queue_depth"], "labelled series are summed under the bare name")
	assert.Equal(t, 2.0, ms[`tollgate_queue_depth{class="batch",pool="narrow"}`])
	assert.Equal(t, 32.0*mb, ms["go_memstats_heap_inuse_bytes"])
	series := `tollgate_authz_decisions_total{outcome="denied",pool="openai-tokens",reason="rate_limited",tier="standard"}`
	assert.Equal(t, 7.0, ms[series])
	labels := strings.TrimPrefix(series, "tollgate_authz_decisions_total{")
	assert.Equal(t, "rate_limited", labelValue(labels, "reason"))
	assert.Equal(t, "denied", labelValue(labels, "outcome"))
	assert.Empty(t, labelValue(labels, "class"))

	_, err = parseMetrics(strings.NewReader("go_goroutines many\n"))
	assert.Error(t, err)
}

func TestCauseOf(t *testing.T) {
	assert.Equal(t, "message timeout", causeOf("ext_proc message timeout (200ms)"))
	assert.Equal(t, "cancelled", causeOf("rpc error: code = Canceled desc = context canceled"))
	assert.Equal(t, "other", causeOf("rpc error: code = Unavailable desc = connection refused"))
}

func TestParseFlags(t *testing.T) {
	c, err := parseFlags([]string{"--stores", "memory redis", "--duration", "30s"}, &bytes.Buffer{})
	require.NoError(t, err)
	assert.Equal(t, []string{"memory", "redis"}, c.stores)
	assert.Equal(t, 3*time.Second, c.warmup, "a tenth of the duration")
	c, err = parseFlags([]string{"--duration", "10m"}, &bytes.Buffer{})
	require.NoError(t, err)
	assert.Equal(t, []string{"memory", "redis", "cluster"}, c.stores)
	assert.Equal(t, time.Minute, c.warmup, "at most a minute")
	assert.Equal(t, 16.0*mb, c.rss.Abs)
	assert.True(t, c.kinds.MatchString("anything"), "every kind by default")

	for name, args := range map[string][]string{
		"an unknown store": {"--stores", "memory,etcd"},
		"no store":         {"--stores", ","},
		"a zero duration":  {"--duration", "0s"},
		"a bad pattern":    {"--kinds", "("},
		"an argument":      {"memory"},
	} {
		_, err := parseFlags(args, &bytes.Buffer{})
		assert.Error(t, err, name)
	}
}
