package main

import (
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"math"
	"runtime"
	"runtime/debug"
	"slices"
	"text/tabwriter"
	"time"
)

// floorReport is what `tollgate floor` measured. Its JSON form (--json)
// is for notes that quote it; durations are in nanoseconds.
type floorReport struct {
	Started time.Time     `json:"started"`
	Config  floorConfig   `json:"config"`
	Windows []floorWindow `json:"windows"`
	Ratios  []floorRatio  `json:"ratios"`
}

type floorConfig struct {
	Revision          string        `json:"revision,omitempty"` // --revision, or the driver binary's own (the one measured unless bin says otherwise)
	Bin               string        `json:"bin"`
	BareBin           string        `json:"bare_bin"`
	CPUs              int           `json:"cpus"`
	Clients           int           `json:"clients"`
	Concurrency       int           `json:"concurrency"`
	Conns             int           `json:"conns_per_server"`
	Duration          time.Duration `json:"window_ns"`
	Warmup            time.Duration `json:"warmup_ns"`
	Slices            int           `json:"slices"`
	Policy            string        `json:"policy"`
	Body              string        `json:"body"`
	BodyBytes         int           `json:"body_bytes"`
	Response          string        `json:"response"`
	ResponseBytes     int           `json:"response_bytes"`
	EnvoyConfig       string        `json:"envoy_config"`
	ProcessingMode    string        `json:"ext_proc_processing_mode"`
	AllowModeOverride bool          `json:"ext_proc_allow_mode_override"`
	Modes             []string      `json:"modes"`
	Store             string        `json:"store"`                  // Tollgate's --store
	RLSConfig         string        `json:"rls_config,omitempty"`   // with the rls mode
	CachePolicy       string        `json:"cache_policy,omitempty"` // with the cachehit mode
	CacheBody         string        `json:"cache_body,omitempty"`
}

// floorWindow is one measured window of one server.
type floorWindow struct {
	Mode    string `json:"mode"` // check, whole_call, rls or cachehit
	Callers int    `json:"callers"`
	Server  string `json:"server"`           // bare or tollgate
	Settle  string `json:"settle,omitempty"` // Tollgate's --settle
	Calls   int64  `json:"calls"`            // answered, denials included
	Denied  int64  `json:"denied"`
	Errors  int64  `json:"errors"`
	// ProcMessages counts the ext_proc messages sent (whole calls): per
	// call, it shows which messages the server's mode override spared.
	ProcMessages int64 `json:"ext_proc_messages"`
	// RedisRoundTrips is what a Tollgate on Redis counted in the window
	// (tollgate_redis_round_trips_total).
	RedisRoundTrips int64 `json:"redis_round_trips,omitempty"`
	// CacheMisses, in the cachehit mode, are the calls the cache did not
	// answer (the first, which fills it): played whole, not in the
	// latencies.
	CacheMisses int64         `json:"cache_misses,omitempty"`
	FirstError  string        `json:"first_error,omitempty"`
	Elapsed     time.Duration `json:"elapsed_ns"`
	PerSecond   float64       `json:"calls_per_second"`
	P50         time.Duration `json:"p50_ns"`
	P99         time.Duration `json:"p99_ns"`
	ServerCPU   time.Duration `json:"server_cpu_ns"` // utime+stime, 10 ms resolution
	CPUPerCall  time.Duration `json:"server_cpu_per_call_ns"`
	DriverCPU   time.Duration `json:"driver_cpu_ns"` // the callers' own process, for context
	// OtherCPU is what the rest of the machine used meanwhile: on a shared
	// machine, the noise a window ran under.
	OtherCPU time.Duration `json:"other_cpu_ns"`
}

// floorRatio is Tollgate over bare for one mode; nil when the bare
// figure is zero.
type floorRatio struct {
	Mode       string   `json:"mode"`
	Callers    int      `json:"callers"`
	Throughput *float64 `json:"throughput"`
	CPUPerCall *float64 `json:"server_cpu_per_call"`
	P50        *float64 `json:"p50"`
	P99        *float64 `json:"p99"`
}

func newFloorReport(f floorFlags, w *floorWork, proc envoyProc) *floorReport {
	h := w.checks[0].GetAttributes().GetRequest().GetHttp()
	m := proc.mode
	r := &floorReport{Started: time.Now().UTC(), Config: floorConfig{
		Bin: f.bin, BareBin: f.bareBin, CPUs: runtime.NumCPU(),
		Clients: f.clients, Concurrency: f.concurrency, Conns: f.conns, Duration: f.duration, Warmup: f.warmup, Slices: f.slices,
		Policy: f.policy, Body: f.body, BodyBytes: len(h.GetRawBody()),
		Response: f.response, ResponseBytes: len(w.respBody.GetResponseBody().GetBody()),
		EnvoyConfig: f.envoyConfig, AllowModeOverride: proc.allowOverride,
		Modes: f.modes, Store: f.store,
		ProcessingMode: fmt.Sprintf("request headers %s, request body %s, response headers %s, response body %s",
			m.GetRequestHeaderMode(), m.GetRequestBodyMode(), m.GetResponseHeaderMode(), m.GetResponseBodyMode()),
	}}
	if slices.Contains(f.modes, modeRLS) {
		r.Config.RLSConfig = f.rlsConfig
	}
	if slices.Contains(f.modes, modeCacheHit) {
		r.Config.CachePolicy, r.Config.CacheBody = f.cachePolicy, f.cacheBody
	}
	if r.Config.Revision = f.revision; r.Config.Revision != "" {
		return r
	}
	if bi, ok := debug.ReadBuildInfo(); ok {
		var rev, dirty string
		for _, s := range bi.Settings {
			switch {
			case s.Key == "vcs.revision":
				rev = s.Value
			case s.Key == "vcs.modified" && s.Value == "true":
				dirty = "+modified"
			}
		}
		if rev != "" {
			r.Config.Revision = rev + dirty
		}
	}
	return r
}

// ratios pairs each Tollgate window with the bare one of its mode.
func (r *floorReport) ratios() {
	ratio := func(t, b float64) *float64 {
		if b == 0 || math.IsNaN(t/b) || math.IsInf(t/b, 0) {
			return nil
		}
		v := t / b
		return &v
	}
	r.Ratios = nil
	for _, t := range r.Windows {
		if t.Server != "tollgate" {
			continue
		}
		for _, b := range r.Windows {
			if b.Server != "bare" || b.Mode != t.Mode || b.Callers != t.Callers {
				continue
			}
			r.Ratios = append(r.Ratios, floorRatio{Mode: t.Mode, Callers: t.Callers,
				Throughput: ratio(t.PerSecond, b.PerSecond),
				CPUPerCall: ratio(float64(t.CPUPerCall), float64(b.CPUPerCall)),
				P50:        ratio(float64(t.P50), float64(b.P50)),
				P99:        ratio(float64(t.P99), float64(b.P99)),
			})
		}
	}
}

// check fails a run whose windows do not measure what they claim: a call
// that failed or was denied did less work than an admitted one.
func (r *floorReport) check() error {
	var errs []error
	for _, w := range r.Windows {
		if w.Errors > 0 || w.Denied > 0 || w.Calls == 0 {
			errs = append(errs, fmt.Errorf("floor: %s %s ×%d: %d calls, %d denied, %d errors (first: %s)",
				w.Server, w.Mode, w.Callers, w.Calls, w.Denied, w.Errors, w.FirstError))
		}
	}
	return errors.Join(errs...)
}

func (r *floorReport) writeJSON(w io.Writer) error {
	enc := json.NewEncoder(w)
	enc.SetIndent("", "  ")
	return enc.Encode(r)
}

func (r *floorReport) write(w io.Writer) {
	c := r.Config
	rev := c.Revision
	if rev == "" {
		rev = "unknown revision"
	}
	fmt.Fprintf(w, "floor, %s, %d CPUs: %d clients, %d callers over %d connections per server, %v windows in %d slices taking turns, after %v of warm-up\n",
		rev, c.CPUs, c.Clients, c.Concurrency, c.Conns, c.Duration, c.Slices, c.Warmup)
	fmt.Fprintf(w, "body %s (%d B), response %s (%d B), policy %s, store %s\n", c.Body, c.BodyBytes, c.Response, c.ResponseBytes, c.Policy, c.Store)
	if c.RLSConfig != "" {
		fmt.Fprintf(w, "rls: README example 2's two descriptors per request, one phone number per client, config %s\n", c.RLSConfig)
	}
	if c.CachePolicy != "" {
		fmt.Fprintf(w, "cachehit: one client, body %s, policy %s: Tollgate's hits against the bare server's Check\n", c.CacheBody, c.CachePolicy)
	}
	fmt.Fprintf(w, "ext_proc as %s configures it: %s; allow_mode_override %v\n\n", c.EnvoyConfig, c.ProcessingMode, c.AllowModeOverride)
	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', tabwriter.AlignRight)
	fmt.Fprintln(tw, "mode\tcallers\tserver\tsettle\tcalls\tcalls/s\tp50\tp99\tserver CPU/call\tdriver CPU\tothers' CPU\text_proc msgs/call\tredis trips/call\terrors\t")
	for _, x := range r.Windows {
		settle := x.Settle
		if settle == "" {
			settle = "-"
		}
		msgs := "-"
		if x.Mode == modeWhole && x.Calls > 0 {
			msgs = fmt.Sprintf("%.1f", float64(x.ProcMessages)/float64(x.Calls))
		}
		cmds := "-"
		if c.Store == "redis" && x.Server == "tollgate" && x.Calls > 0 {
			cmds = fmt.Sprintf("%.3f", float64(x.RedisRoundTrips)/float64(x.Calls))
		}
		fmt.Fprintf(tw, "%s\t%d\t%s\t%s\t%d\t%.0f\t%v\t%v\t%v\t%.0f%%\t%.0f%%\t%s\t%s\t%d\t\n", x.Mode, x.Callers, x.Server, settle, x.Calls,
			x.PerSecond, roundDur(x.P50), roundDur(x.P99), roundDur(x.CPUPerCall),
			share(x.DriverCPU, x.Elapsed), share(x.OtherCPU, x.Elapsed), msgs, cmds, x.Errors+x.Denied)
	}
	_ = tw.Flush()
	for _, x := range r.Windows {
		if x.Mode == modeCacheHit && x.Server == "tollgate" {
			fmt.Fprintf(w, "cachehit: %d calls answered from the cache, %d not (the call that fills it, played whole, not in the latencies)\n",
				x.Calls, x.CacheMisses)
		}
	}
	fmt.Fprintln(w)
	tw = tabwriter.NewWriter(w, 0, 0, 2, ' ', tabwriter.AlignRight)
	fmt.Fprintln(tw, "tollgate/bare\tcallers\tthroughput\tserver CPU/call\tp50\tp99\t")
	for _, x := range r.Ratios {
		fmt.Fprintf(tw, "%s\t%d\t%s\t%s\t%s\t%s\t\n", x.Mode, x.Callers, fmtRatio(x.Throughput), fmtRatio(x.CPUPerCall), fmtRatio(x.P50), fmtRatio(x.P99))
	}
	_ = tw.Flush()
	fmt.Fprintln(w, "\n(server CPU is the process's utime+stime, read to 10 ms; driver and others' CPU, in % of one core, are the\n"+
		"callers' process and the rest of the machine meanwhile: what others use is the noise a window ran under.)")
}

// share is cpu as a percentage of one core over elapsed.
func share(cpu, elapsed time.Duration) float64 {
	return 100 * cpu.Seconds() / max(elapsed.Seconds(), 1e-9)
}

func roundDur(d time.Duration) string {
	if d >= time.Millisecond {
		return d.Round(10 * time.Microsecond).String()
	}
	return d.Round(100 * time.Nanosecond).String()
}

func fmtRatio(v *float64) string {
	if v == nil {
		return "n/a"
	}
	return fmt.Sprintf("%.2fx", *v)
}
