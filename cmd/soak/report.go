package main

// The soak's judgement: whether a series of readings (RSS, goroutines) is
// flat, whether a member came back to where it idled before, and the
// report that says so. Pure functions over what was sampled, so a test can
// hold them to made-up series.

import (
	"fmt"
	"io"
	"maps"
	"slices"
	"strings"
	"text/tabwriter"
	"time"
)

// minJudged is the fewest samples after the warm-up whose growth is
// judged, and minTrend the fewest whose trend is: below them a run is too
// short to tell a leak from the sawtooth of a garbage-collected heap, and
// says so. At the default reading every 2 s, a trend needs 200 s.
const (
	minJudged = 10
	minTrend  = 100
)

// tolerance is how far a series may rise and still be flat: the larger of
// an absolute amount and a share of where it started.
type tolerance struct {
	Abs, Rel float64
}

func (t tolerance) of(start float64) float64 { return max(t.Abs, t.Rel*start) }

// trend is one series judged. Start, Middle and End are medians of windows
// of a tenth of the samples (at least three), so that one GC cycle or one
// burst of calls does not move them; Slope is the Theil–Sen slope (the
// median of the slopes between every pair of samples) over the second
// half, per second, which a few outliers cannot tilt either; Projected is
// that slope carried over the whole measured span.
type trend struct {
	Samples              int
	Span                 time.Duration
	Start, Middle, End   float64
	Growth               float64 // End - Start
	Slope                float64 // per second, second half
	Projected            float64 // Slope × Span
	Tolerance            float64
	Judged, TrendJudged  bool
	Flat                 bool
	SeriesMin, SeriesMax float64 // the whole series' range, for the report
}

// judgeTrend judges a series of (seconds since the measured start, value).
// It is flat when the growth from the first window to the last stays
// within the tolerance and, in a run long enough to have a trend, so does
// the second half's slope carried over the whole span. The first catches
// a rise however it is spread; the second one that has not stopped by the
// end (a leak) even when the run happened to start high. A heap that
// grows to its working size during the warm-up and stays there passes
// both; one that keeps growing fails at least one.
func judgeTrend(at []float64, v []float64, tol tolerance) trend {
	n := len(v)
	tr := trend{Samples: n}
	if n == 0 {
		return tr
	}
	tr.SeriesMin, tr.SeriesMax = slices.Min(v), slices.Max(v)
	tr.Span = time.Duration((at[n-1] - at[0]) * float64(time.Second))
	k := min(n, max(3, n/10))
	tr.Start = median(v[:k])
	tr.End = median(v[n-k:])
	mid := max(0, n/2-k/2)
	tr.Middle = median(v[mid:min(n, mid+k)])
	tr.Growth = tr.End - tr.Start
	tr.Tolerance = tol.of(tr.Start)
	tr.Slope = theilSen(at[n/2:], v[n/2:])
	tr.Projected = tr.Slope * tr.Span.Seconds()
	tr.Judged, tr.TrendJudged = n >= minJudged, n >= minTrend
	tr.Flat = tr.Judged && tr.Growth <= tr.Tolerance && (!tr.TrendJudged || tr.Projected <= tr.Tolerance)
	return tr
}

// median of vs (not modified); 0 for none.
func median(vs []float64) float64 {
	if len(vs) == 0 {
		return 0
	}
	s := slices.Clone(vs)
	slices.Sort(s)
	if len(s)%2 == 1 {
		return s[len(s)/2]
	}
	return (s[len(s)/2-1] + s[len(s)/2]) / 2
}

// theilSen is the median of the slopes between every pair of points with
// distinct x: a line fit that up to 29% of wild points cannot move.
func theilSen(x, y []float64) float64 {
	var slopes []float64
	for i := range x {
		for j := i + 1; j < len(x); j++ {
			if dx := x[j] - x[i]; dx != 0 {
				slopes = append(slopes, (y[j]-y[i])/dx)
			}
		}
	}
	return median(slopes)
}

// idle compares a member at rest after the warm-up with the same member at
// rest after the run: the same connections open, nothing in flight. What a
// call leaves behind (a goroutine, a file descriptor) shows here without
// the noise of calls in flight.
type idle struct {
	Before, After float64
	Tolerance     float64
	Read, OK      bool // Read: both were read (else the run failed before)
}

func judgeIdle(before, after float64, tol tolerance) idle {
	t := tol.of(before)
	return idle{Before: before, After: after, Tolerance: t, Read: true, OK: after-before <= t}
}

// tally counts one kind of call by outcome.
type tally struct {
	Calls      int64
	Outcomes   map[string]int64
	Unexpected int64
	Skipped    int64    // ticks with every slot of the kind busy: not sent
	Examples   []string // the first unexpected ones
}

// maxExamples is how many unexpected outcomes of a kind a report quotes.
const maxExamples = 3

func (t *tally) add(outcome string, err error) {
	t.Calls++
	if t.Outcomes == nil {
		t.Outcomes = map[string]int64{}
	}
	if err != nil {
		t.Unexpected++
		outcome = "UNEXPECTED " + outcome
		if len(t.Examples) < maxExamples {
			e := err.Error()
			if len(e) > 200 {
				e = e[:200] + "…"
			}
			t.Examples = append(t.Examples, e)
		}
	}
	t.Outcomes[outcome]++
}

// memberReport is what one tollgate process did under the soak.
type memberReport struct {
	Name       string
	RSS        trend // bytes
	Goroutines trend
	Heap       trend // go_memstats_heap_inuse_bytes: reported, not judged
	IdleGo     idle
	IdleFDs    idle       // open files but its connections to Redis
	IdleRedis  [2]float64 // its connections to Redis at rest, before and after
	Exit       string     // how it stopped
}

// storeReport is one store's soak.
type storeReport struct {
	Store            string
	Members          []memberReport
	Duration, Warmup time.Duration
	Kinds            map[string]*tally
	Drained          time.Duration // how long after the traffic the gauges read zero
	Rate             float64       // calls a second sent in the measured run
	// CPU is the share of one core each member, the soak itself and the
	// rest of the machine used over the measured run, in percent.
	CPU      []cpuShare
	Counters map[string]float64
	Logs     map[string]int64 // tollgate's log lines at warn and above, by level and message
	Proxy    map[string]int64 // the Envoy stand-in's warnings
	Redis    string           // Redis's own figures, when there is one
	Problems []string         // every reason the soak failed
}

// cpuShare is who used how much CPU, in percent of one core.
type cpuShare struct {
	Who     string
	Percent float64
}

// judge adds the reasons a store's soak failed that the figures show:
// an unexpected outcome, a trend that is not flat, a member that did not
// come back to its idle state.
func (r *storeReport) judge() {
	for _, k := range slices.Sorted(maps.Keys(r.Kinds)) {
		if t := r.Kinds[k]; t.Unexpected > 0 {
			r.Problems = append(r.Problems, fmt.Sprintf("%s: %d unexpected outcome(s), e.g. %s", k, t.Unexpected, strings.Join(t.Examples, " | ")))
		}
	}
	for _, m := range r.Members {
		for _, s := range []struct {
			name string
			tr   trend
			unit func(float64) string
		}{{"RSS", m.RSS, mib}, {"goroutines", m.Goroutines, count}} {
			if s.tr.Judged && !s.tr.Flat {
				r.Problems = append(r.Problems, fmt.Sprintf("%s: %s not flat: %s → %s (growth %s, second-half trend %s over the run; tolerance %s)",
					m.Name, s.name, s.unit(s.tr.Start), s.unit(s.tr.End), signed(s.tr.Growth, s.unit), signed(s.tr.Projected, s.unit), s.unit(s.tr.Tolerance)))
			}
		}
		if m.IdleGo.Read && !m.IdleGo.OK {
			r.Problems = append(r.Problems, fmt.Sprintf("%s: goroutines at rest %v after the run, %v before (tolerance %v): calls left goroutines behind",
				m.Name, m.IdleGo.After, m.IdleGo.Before, m.IdleGo.Tolerance))
		}
		if m.IdleFDs.Read && !m.IdleFDs.OK {
			r.Problems = append(r.Problems, fmt.Sprintf("%s: open files at rest %v after the run, %v before (tolerance %v): calls left descriptors open",
				m.Name, m.IdleFDs.After, m.IdleFDs.Before, m.IdleFDs.Tolerance))
		}
	}
}

func mib(b float64) string   { return fmt.Sprintf("%.1f MiB", b/(1<<20)) }
func count(n float64) string { return fmt.Sprintf("%.0f", n) }

func signed(v float64, unit func(float64) string) string {
	if v < 0 {
		return "-" + unit(-v)
	}
	return "+" + unit(v)
}

// write prints the report of one store.
func (r *storeReport) write(w io.Writer) {
	fmt.Fprintf(w, "\n== soak %s: %v of traffic after %v of warm-up, %d tollgate process(es)\n", r.Store, r.Duration, r.Warmup, len(r.Members))
	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', 0)
	fmt.Fprintln(tw, "kind\tcalls\tunexpected\tskipped\toutcomes")
	var calls, unexpected int64
	for _, k := range slices.Sorted(maps.Keys(r.Kinds)) {
		t := r.Kinds[k]
		calls += t.Calls
		unexpected += t.Unexpected
		fmt.Fprintf(tw, "%s\t%d\t%d\t%d\t%s\n", k, t.Calls, t.Unexpected, t.Skipped, outcomes(t.Outcomes))
	}
	fmt.Fprintf(tw, "all\t%d\t%d\t\t\n", calls, unexpected)
	_ = tw.Flush()
	if r.Rate > 0 {
		fmt.Fprintf(w, "measured run: %.0f calls a second", r.Rate)
		for i, c := range r.CPU {
			sep := ", "
			if i == 0 {
				sep = "; CPU in % of one core: "
			}
			fmt.Fprintf(w, "%s%s %.0f%%", sep, c.Who, c.Percent)
		}
		fmt.Fprintln(w)
	}

	fmt.Fprintln(w)
	tw = tabwriter.NewWriter(w, 0, 0, 2, ' ', tabwriter.AlignRight)
	fmt.Fprintln(tw, "member\tseries\tsamples\tstart\tmiddle\tend\tgrowth\ttrend over run\ttolerance\tmin\tmax\tverdict\t")
	for _, m := range r.Members {
		for _, s := range []struct {
			name   string
			tr     trend
			unit   func(float64) string
			judged bool
		}{{"RSS", m.RSS, mib, true}, {"goroutines", m.Goroutines, count, true}, {"heap in use", m.Heap, mib, false}} {
			projected := signed(s.tr.Projected, s.unit)
			if !s.tr.TrendJudged {
				projected = "(" + projected + ")"
			}
			fmt.Fprintf(tw, "%s\t%s\t%d\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t\n", m.Name, s.name, s.tr.Samples,
				s.unit(s.tr.Start), s.unit(s.tr.Middle), s.unit(s.tr.End), signed(s.tr.Growth, s.unit), projected,
				s.unit(s.tr.Tolerance), s.unit(s.tr.SeriesMin), s.unit(s.tr.SeriesMax), verdict(s.tr, s.judged))
		}
	}
	_ = tw.Flush()
	for _, m := range r.Members {
		if !m.IdleGo.Read {
			fmt.Fprintf(w, "%s at rest: not read; stopped: %s\n", m.Name, m.Exit)
			continue
		}
		redis := ""
		if m.IdleRedis != [2]float64{} {
			redis = fmt.Sprintf(" (and connections to Redis %v → %v)", m.IdleRedis[0], m.IdleRedis[1])
		}
		fmt.Fprintf(w, "%s at rest, before → after: goroutines %v → %v (tolerance +%v) %s; open files %v → %v (tolerance +%v) %s%s; stopped: %s\n",
			m.Name, m.IdleGo.Before, m.IdleGo.After, m.IdleGo.Tolerance, okWord(m.IdleGo.OK),
			m.IdleFDs.Before, m.IdleFDs.After, m.IdleFDs.Tolerance, okWord(m.IdleFDs.OK), redis, m.Exit)
	}
	if r.Drained >= 0 {
		fmt.Fprintf(w, "drained: queue empty, nothing in flight or reserved for any client, %v after the traffic stopped\n", r.Drained.Round(100*time.Millisecond))
	}
	if len(r.Counters) > 0 {
		fmt.Fprintf(w, "tollgate counters (all members): %s\n", outcomes(toInt(r.Counters)))
	}
	if len(r.Logs) > 0 {
		fmt.Fprintf(w, "tollgate log lines at warn and above: %s\n", outcomes(r.Logs))
	}
	if len(r.Proxy) > 0 {
		fmt.Fprintf(w, "envoy stand-in warnings: %s\n", outcomes(r.Proxy))
	}
	if r.Redis != "" {
		fmt.Fprintf(w, "redis: %s\n", r.Redis)
	}
	if len(r.Problems) == 0 {
		fmt.Fprintf(w, "verdict %s: PASS\n", r.Store)
		return
	}
	fmt.Fprintf(w, "verdict %s: FAIL\n", r.Store)
	for _, p := range r.Problems {
		fmt.Fprintf(w, "  - %s\n", p)
	}
}

func verdict(t trend, judged bool) string {
	switch {
	case !judged:
		return "(not judged)"
	case !t.Judged:
		return fmt.Sprintf("too few samples to judge (%d < %d)", t.Samples, minJudged)
	case t.Flat && !t.TrendJudged:
		return fmt.Sprintf("flat (trend not judged: %d < %d samples)", t.Samples, minTrend)
	case t.Flat:
		return "flat"
	}
	return "NOT FLAT"
}

func okWord(ok bool) string {
	if ok {
		return "ok"
	}
	return "NOT OK"
}

func toInt(m map[string]float64) map[string]int64 {
	out := make(map[string]int64, len(m))
	for k, v := range m {
		out[k] = int64(v)
	}
	return out
}

// outcomes lists counts, largest first.
func outcomes(m map[string]int64) string {
	keys := slices.Collect(maps.Keys(m))
	slices.SortFunc(keys, func(a, b string) int {
		if m[a] != m[b] {
			if m[a] > m[b] {
				return -1
			}
			return 1
		}
		return strings.Compare(a, b)
	})
	parts := make([]string, len(keys))
	for i, k := range keys {
		parts[i] = fmt.Sprintf("%s ×%d", k, m[k])
	}
	return strings.Join(parts, ", ")
}

// summary is one line per store, for the end of a run of several.
func summary(w io.Writer, reps []*storeReport) {
	fmt.Fprintln(w, "\n== soak summary")
	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', tabwriter.AlignRight)
	fmt.Fprintln(tw, "store\tmember\tduration\tcalls\tunexpected\tRSS start\tRSS end\tgoroutines start\tgoroutines end\tat rest before → after\tverdict\t")
	for _, r := range reps {
		var calls, unexpected int64
		for _, t := range r.Kinds {
			calls += t.Calls
			unexpected += t.Unexpected
		}
		v := "PASS"
		if len(r.Problems) > 0 {
			v = "FAIL"
		}
		for i, m := range r.Members {
			c, u := fmt.Sprint(calls), fmt.Sprint(unexpected)
			if i > 0 {
				c, u = "", ""
			}
			fmt.Fprintf(tw, "%s\t%s\t%v\t%s\t%s\t%s\t%s\t%s\t%s\t%v → %v\t%s\t\n", r.Store, m.Name, r.Duration, c, u,
				mib(m.RSS.Start), mib(m.RSS.End), count(m.Goroutines.Start), count(m.Goroutines.End), m.IdleGo.Before, m.IdleGo.After, v)
		}
	}
	_ = tw.Flush()
}
