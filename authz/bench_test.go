package authz_test

import (
	"context"
	"fmt"
	"os"
	"regexp"
	"strings"
	"sync/atomic"
	"testing"

	"github.com/prometheus/client_golang/prometheus"
	"google.golang.org/genproto/googleapis/rpc/code"

	"github.com/tollgate/tollgate/admission"
	"github.com/tollgate/tollgate/authz"
	"github.com/tollgate/tollgate/internal/fakeclock"
	"github.com/tollgate/tollgate/internal/otlptest"
	"github.com/tollgate/tollgate/internal/tracing"
	"github.com/tollgate/tollgate/limiter"
	"github.com/tollgate/tollgate/limiter/respcache"
	"github.com/tollgate/tollgate/policy"
)

var (
	capacityRE = regexp.MustCompile(`(?m)^(\s+)(capacity|refill_per_second|refill): [^#\n]*?(\s*#.*)?$`)
)

// largePoolPolicy is the bundled policy (its routes, tiers and defaults)
// with every pool and client limit raised to the maximum and every tier's
// budget made unlimited, so that every call is allowed and a benchmark
// measures the allow path, however many calls it makes.
func largePoolPolicy(tb testing.TB) string {
	tb.Helper()
	src := string(policy.DefaultSource().Data)
	out := capacityRE.ReplaceAllString(src, fmt.Sprintf("${1}${2}: %d", policy.MaxCapacity)) // a refill: a bare number is per second
	out = budgetRE.ReplaceAllString(out, "${1}monthly_budget: custom")
	if out == src || !strings.Contains(out, "monthly_budget: custom") {
		tb.Fatal("no capacities or budgets found in the bundled policy")
	}
	return out
}

var budgetRE = regexp.MustCompile(`(?m)^(\s+)monthly_budget: .*$`)

// benchClients spreads calls over a few client ids.
var benchClients = []string{"team-a", "team-b", "team-c", "team-d", "team-e", "team-f", "team-g", "team-h"}

// BenchmarkDecide measures the admission pipeline alone (policy → estimate
// → memory store) on a ~1 KB OpenAI chat body for gpt-4.
func BenchmarkDecide(b *testing.B) {
	body := kiloChatBody("gpt-4")
	ctx := context.Background()

	newDecider := func(b *testing.B, set *policy.Set, clk limiter.Clock) *Decider {
		return newTestDecider(b, set, newMemStore(b, clk), prometheus.NewRegistry(), nil)
	}
	cases := map[string]struct {
		set     func(b *testing.B) *policy.Set
		allowed bool
	}{
		// Every call allowed: the common path.
		"allowed": {set: func(b *testing.B) *policy.Set { return compilePolicy(b, largePoolPolicy(b)) }, allowed: true},
		// The bundled policy's 10K-token gpt-4 pool, drained: every call
		// denied with a 429 and its message.
		"denied": {set: func(*testing.B) *policy.Set { return policy.Default() }, allowed: false},
	}
	for _, name := range []string{"allowed", "denied"} {
		tc := cases[name]
		request := func(client string) *admission.Request {
			r := openAIRequest(client, body)
			if !tc.allowed { // refused at once: a call that may wait would wait out its class's max_wait
				r.Headers = map[string]string{"x-tollgate-priority": "immediate"}
			}
			return r
		}
		prepare := func(b *testing.B) *Decider {
			// Allowed: the wall clock, as a large pool refills faster than
			// any benchmark drains it. Denied: a clock that never moves, so
			// the drained pool stays drained however long the run.
			var clk limiter.Clock = limiter.SystemClock{}
			if !tc.allowed {
				clk = fakeclock.New(epoch)
			}
			d := newDecider(b, tc.set(b), clk)
			if !tc.allowed {
				for d.Decide(ctx, request("team-a")).Allowed {
				}
			}
			return d
		}
		b.Run(name, func(b *testing.B) {
			d := prepare(b)
			r := request("team-a")
			b.ReportAllocs()
			b.SetBytes(int64(len(body)))
			for b.Loop() {
				if v := d.Decide(ctx, r); v.Allowed != tc.allowed {
					b.Fatalf("allowed=%v: %s", v.Allowed, v.Message)
				}
			}
		})
		b.Run(name+"/parallel", func(b *testing.B) {
			d := prepare(b)
			var next atomic.Uint32
			b.ReportAllocs()
			b.SetBytes(int64(len(body)))
			b.ResetTimer()
			b.RunParallel(func(pb *testing.PB) {
				r := request(benchClients[int(next.Add(1))%len(benchClients)])
				for pb.Next() {
					if v := d.Decide(ctx, r); v.Allowed != tc.allowed {
						b.Errorf("allowed=%v: %s", v.Allowed, v.Message)
						return
					}
				}
			})
		})
	}
}

// BenchmarkCheckGRPC measures one ext_authz Check per op over real loopback
// gRPC (go-control-plane's client, TCP, protobuf both ways) on the large-pool
// policy with a ~1 KB chat body.
func BenchmarkCheckGRPC(b *testing.B) {
	body := kiloChatBody("gpt-4")
	ctx := context.Background()
	start := func(b *testing.B) *testServer {
		// Immediate settlement: Check alone, with nothing left to settle.
		return startServer(b, serverOpts{policy: largePoolPolicy(b), store: newMemStore(b, limiter.SystemClock{}),
			config: func(c *authz.Config) { c.Settlement = admission.SettleImmediate }})
	}

	b.Run("serial", func(b *testing.B) {
		ts := start(b)
		cr := chatCheck("team-a", body)
		b.ReportAllocs()
		for b.Loop() {
			resp, err := ts.auth.Check(ctx, cr)
			if err != nil || resp.GetStatus().GetCode() != int32(code.Code_OK) {
				b.Fatalf("check: %v %v", err, resp.GetStatus())
			}
		}
	})
	b.Run("parallel", func(b *testing.B) {
		ts := start(b)
		var next atomic.Uint32
		b.ReportAllocs()
		b.ResetTimer()
		b.RunParallel(func(pb *testing.PB) {
			cr := chatCheck(benchClients[int(next.Add(1))%len(benchClients)], body)
			for pb.Next() {
				resp, err := ts.auth.Check(ctx, cr)
				if err != nil || resp.GetStatus().GetCode() != int32(code.Code_OK) {
					b.Errorf("check: %v %v", err, resp.GetStatus())
					return
				}
			}
		})
	})
}

// BenchmarkSettleGRPC measures one whole admitted call per op over loopback
// gRPC: Check (a hold and a reservation), then the ext_proc stream Envoy
// opens for it (request headers, response headers, a recorded JSON
// response), which settles it at its actual cost.
func BenchmarkSettleGRPC(b *testing.B) {
	// Unbudgeted, and a pool that the fake clock's still time never drains.
	unbudgeted := strings.NewReplacer(`monthly_budget: "100"`, "monthly_budget: custom",
		"capacity: 100000\n", "capacity: 1000000000\n").Replace(settlePolicy)
	ss := startSettle(b, storeKinds["memory"], unbudgeted)
	body := kiloChatBody("gpt-4o")
	resp := upstream{status: 200, headers: []string{"content-type", "application/json"}, body: recorded(b, "openai-chat.json")}
	b.ReportAllocs()
	for b.Loop() {
		a := ss.admit(b, "acme", body)
		ss.process(b, a, body, resp)
	}
	if n := ss.srv.Service().Pending(); n != 0 {
		b.Fatalf("%d calls left unsettled", n)
	}
}

// BenchmarkDecideOptimize measures what the optimizer adds to a decision on
// a ~4 KB chat body for gpt-4o: no optimize rules at all; rules that match
// and change nothing (the bundled fit-pool rule, and a downgrade for
// another tier), which must cost no body copy or re-encode; and a rule that
// downgrades every call (the rewrite path: a splice, and the rewritten
// call estimated).
func BenchmarkDecideOptimize(b *testing.B) {
	body := chatBody("gpt-4o", 256, strings.Repeat("Summarise the quarterly report in three bullet points. ", 72))
	base := largePoolPolicy(b)
	noRules := base[:strings.Index(base, "\noptimize:")]
	cases := []struct{ name, yaml string }{
		{"no-rules", noRules},
		{"rules-no-change", base + "    - name: other-tier\n      when: {tiers: [enterprise]}\n      downgrade: gpt-4o-mini\n"},
		{"downgrade", base + "    - name: all\n      downgrade: gpt-4o-mini\n"},
	}
	ctx := context.Background()
	for _, tc := range cases {
		b.Run(tc.name, func(b *testing.B) {
			d := newTestDecider(b, compilePolicy(b, tc.yaml), newMemStore(b, limiter.SystemClock{}), prometheus.NewRegistry(), nil)
			r := openAIRequest("team-a", body)
			if v := d.Decide(ctx, r); !v.Allowed || (tc.name == "downgrade") != (v.Optimized != nil) {
				b.Fatalf("allowed=%v optimized=%v: %s", v.Allowed, v.Optimized, v.Message)
			}
			b.ReportAllocs()
			b.SetBytes(int64(len(body)))
			for b.Loop() {
				d.Decide(ctx, r)
			}
		})
	}
}

// BenchmarkDecideCacheHit measures a call answered from the in-process
// cache (a deterministic 4 KB chat body under a cache rule): the lookup,
// the canonical hash of the body, and the saving booked in the memory
// store.
func BenchmarkDecideCacheHit(b *testing.B) {
	body := []byte(`{"model":"gpt-4o","temperature":0,"max_tokens":256,"messages":[{"role":"user","content":"` +
		strings.Repeat("Summarise the quarterly report in three bullet points. ", 72) + `"}]}`)
	yaml := largePoolPolicy(b) + "\ncache:\n  rules:\n    - name: all\n"
	cache, err := respcache.NewMemory(respcache.DefaultMemoryConfig())
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { _ = cache.Close() })
	d := newTestDecider(b, compilePolicy(b, yaml), newMemStore(b, limiter.SystemClock{}), prometheus.NewRegistry(), nil,
		withSettlement(admission.SettleDeferred), withCache(cache))
	ctx := context.Background()
	r := openAIRequest("team-a", body)
	lead := d.Service.Decide(ctx, r)
	if !lead.Allowed || lead.CacheMiss == "" {
		b.Fatalf("want a lead: %+v", lead)
	}
	c := d.Follow(lead.Reservation, lead.Route, "POST")
	c.ResponseHeaders(ctx, 200, map[string]string{"content-type": "application/json"})
	c.ResponseBody(recordedAnswer(b), true)
	c.ResponseEnded()
	c.End(ctx)
	if v := d.Service.Decide(ctx, r); v.Cached == nil {
		b.Fatalf("want a hit: %+v", v)
	}
	b.ReportAllocs()
	b.SetBytes(int64(len(body)))
	for b.Loop() {
		d.Service.Decide(ctx, r)
	}
}

func recordedAnswer(b *testing.B) []byte {
	out, err := os.ReadFile("../testdata/responses/openai-chat.json")
	if err != nil {
		b.Fatal(err)
	}
	return out
}

// BenchmarkCheckHandler measures the ext_authz handler alone (no gRPC
// transport): the request's translation, the decision and the reply, with
// tracing off (no tracer) and on at a sample ratio of 1 and of 0.01, with
// and without Envoy's traceparent (a sampled one: the span is recorded
// whatever the ratio).
func BenchmarkCheckHandler(b *testing.B) {
	body := kiloChatBody("gpt-4")
	ctx := context.Background()
	for _, tc := range []struct {
		name   string
		ratio  float64 // <0: off
		parent bool
	}{{"off", -1, false}, {"off/traceparent", -1, true}, {"on/sample=1", 1, false}, {"on/sample=0.01", 0.01, false},
		{"on/sample=0.01/traceparent", 0.01, true}} {
		b.Run(tc.name, func(b *testing.B) {
			var tr *tracing.Tracer
			if tc.ratio >= 0 {
				tr = benchTracer(b, tc.ratio)
			}
			d := newTestDecider(b, compilePolicy(b, largePoolPolicy(b)), newMemStore(b, limiter.SystemClock{}), prometheus.NewRegistry(), nil,
				func(_ *admission.Config, deps *admission.Deps) { deps.Tracer = tr })
			check, err := authz.CheckHandler(d.Service, tr)
			if err != nil {
				b.Fatal(err)
			}
			cr := chatCheck("team-a", body)
			if tc.parent {
				cr.Attributes.Request.Http.Headers["traceparent"] = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"
			}
			b.ReportAllocs()
			for b.Loop() {
				resp, err := check(ctx, cr)
				if err != nil || resp.GetStatus().GetCode() != int32(code.Code_OK) {
					b.Fatalf("check: %v %v", err, resp.GetStatus())
				}
			}
		})
	}
}

// benchTracer sends a benchmark's spans to an in-process collector.
func benchTracer(b *testing.B, ratio float64) *tracing.Tracer {
	col := otlptest.Start(b)
	cfg := tracing.DefaultConfig()
	cfg.Endpoint, cfg.Insecure, cfg.SampleRatio = col.Addr(), true, ratio
	tr, err := tracing.New(context.Background(), cfg)
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { _ = tr.Shutdown(context.Background()) })
	return tr
}

// BenchmarkCheckTracing is BenchmarkCheckGRPC/serial with tracing off (no
// tracer: the allocations must equal BenchmarkCheckGRPC's), and on, sending
// spans to an in-process OTLP collector, with every trace sampled and with
// 1% (Envoy sends no trace context here, so the ratio decides).
func BenchmarkCheckTracing(b *testing.B) {
	body := kiloChatBody("gpt-4")
	ctx := context.Background()
	for _, tc := range []struct {
		name  string
		ratio float64 // <0: off
	}{{"off", -1}, {"on/sample=1", 1}, {"on/sample=0.01", 0.01}} {
		b.Run(tc.name, func(b *testing.B) {
			var tr *tracing.Tracer
			if tc.ratio >= 0 {
				tr = benchTracer(b, tc.ratio)
			}
			ts := startServer(b, serverOpts{policy: largePoolPolicy(b), store: newMemStore(b, limiter.SystemClock{}), tracer: tr,
				config: func(c *authz.Config) { c.Settlement = admission.SettleImmediate }})
			cr := chatCheck("team-a", body)
			b.ReportAllocs()
			for b.Loop() {
				resp, err := ts.auth.Check(ctx, cr)
				if err != nil || resp.GetStatus().GetCode() != int32(code.Code_OK) {
					b.Fatalf("check: %v %v", err, resp.GetStatus())
				}
			}
		})
	}
}
