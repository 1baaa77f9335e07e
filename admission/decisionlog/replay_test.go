package decisionlog

import (
	"bytes"
	"context"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/tollgate/tollgate/admission"
	"github.com/tollgate/tollgate/internal/fakeclock"
	"github.com/tollgate/tollgate/limiter/memstore"
	"github.com/tollgate/tollgate/policy"
)

// Policy A: one pool of 10,000 tokens, of which each premium client may
// hold 4,000 (its tier's client_limits); a basic and a premium client.
const policyA = `
defaults: {unknown_client: deny}
pools:
  gpt: {unit: token, capacity: 10000, refill_per_second: 100}
models:
  "gpt-4o-mini*": {input: "0.15/1M", output: "0.60/1M"}
  "gpt-4o*": {input: "2.50/1M", output: "10/1M"}
routes:
  openai: {host: api.openai.com, path_prefix: /v1/, provider: openai, pools: [gpt]}
tiers:
  basic: {priority: 10, max_concurrent: 5, monthly_budget: "100"}
  premium:
    priority: 30
    max_concurrent: 5
    monthly_budget: "1000"
    client_limits: {gpt: {capacity: 4000, refill: 100/s}}
clients:
  acme: {tier: basic}
  bigco: {tier: premium}
`

// Policy B differs from A in three known ways: the premium tier's share of
// the pool is halved (2,000 tokens a client), acme's budget is $0.03 (two
// calls' reserves), and premium calls to gpt-4o are downgraded to
// gpt-4o-mini.
const policyB = `
defaults: {unknown_client: deny}
pools:
  gpt: {unit: token, capacity: 10000, refill_per_second: 100}
models:
  "gpt-4o-mini*": {input: "0.15/1M", output: "0.60/1M"}
  "gpt-4o*": {input: "2.50/1M", output: "10/1M"}
routes:
  openai: {host: api.openai.com, path_prefix: /v1/, provider: openai, pools: [gpt]}
tiers:
  basic: {priority: 10, max_concurrent: 5, monthly_budget: "100"}
  premium:
    priority: 30
    max_concurrent: 5
    monthly_budget: "1000"
    client_limits: {gpt: {capacity: 2000, refill: 100/s}}
clients:
  acme: {tier: basic, monthly_budget: "0.03"}
  bigco: {tier: premium}
optimize:
  rules:
    - name: premium-mini
      when: {tiers: [premium], models: ["gpt-4o"]}
      downgrade: gpt-4o-mini
`

func compileSet(t testing.TB, name, y string) *policy.Set {
	t.Helper()
	s, err := policy.Compile(policy.Source{Name: name, Data: []byte(y)})
	require.NoError(t, err)
	return s
}

var t0 = time.Date(2026, 11, 14, 12, 0, 0, 0, time.UTC)

// Each call asks gpt-4o for 990 output tokens with a prompt of 3 words:
// 10 input tokens (3 + the chat format's 7), 1,000 tokens in all; its
// response reports 10 in and 500 out.
const (
	inTokens, maxOut, usedOut = 10, 990, 500
	calls                     = 4
)

// record drives a real admission.Service (memory store, fake clock) under
// policy A with known traffic and writes its decision log: at t0 acme
// sends 4 immediate calls and bigco 4 batch calls; at t0+1s each admitted
// call's response comes back through the ext_proc path and is settled.
func record(t *testing.T) string {
	t.Helper()
	set := compileSet(t, "a.yaml", policyA)
	clk := fakeclock.New(t0)
	st, err := memstore.New(memstore.Config{Clock: clk})
	require.NoError(t, err)
	t.Cleanup(func() { _ = st.Close() })
	path := filepath.Join(t.TempDir(), "decisions.jsonl")
	cfg := DefaultConfig()
	cfg.Policy, cfg.Settlement = "a.yaml", "deferred"
	w, err := Open(path, cfg, prometheus.NewRegistry(), nil)
	require.NoError(t, err)
	svc, err := admission.New(admission.Config{Settlement: admission.SettleDeferred}, admission.Deps{
		Policies: admission.StaticPolicy{Set: set}, Store: st, Registerer: prometheus.NewRegistry(), Clock: clk, DecisionLog: w})
	require.NoError(t, err)
	ctx := context.Background()
	b := body(policy.ProviderOpenAI, "/v1/chat/completions", "gpt-4o", maxOut, 3)
	var admitted []admission.Verdict
	for _, client := range []string{"acme", "bigco"} {
		class := map[string]string{"acme": "immediate", "bigco": "batch"}[client]
		for i := range calls {
			v := svc.Decide(ctx, &admission.Request{ID: fmt.Sprintf("%s-%d", client, i), Client: client, Method: "POST",
				Host: "api.openai.com", Path: "/v1/chat/completions", Body: b, BodySize: int64(len(b)),
				Headers: map[string]string{"content-type": "application/json", "x-tollgate-priority": class,
					"authorization": "Bearer sk-secret"}})
			require.True(t, v.Allowed, "%s: %s", v.RequestID, v.Reason)
			require.Equal(t, int64(inTokens), v.Estimate.InputTokens)
			require.Equal(t, int64(inTokens+maxOut), v.Estimate.Pools[0].Units)
			admitted = append(admitted, v)
		}
	}
	clk.Step(time.Second)
	for _, v := range admitted {
		c := svc.Follow(v.Reservation, v.Route, "POST")
		c.RequestBody(b)
		c.ResponseHeaders(ctx, 200, map[string]string{"content-type": "application/json"})
		c.ResponseBody(usageBody(policy.ProviderOpenAI, inTokens, usedOut), true)
		c.ResponseEnded()
		require.Equal(t, admission.SettledActual, c.End(ctx))
	}
	require.NoError(t, svc.Close())
	require.NoError(t, w.Close())
	return path
}

func parseFile(t *testing.T, path string) *Log {
	t.Helper()
	f, err := os.Open(path)
	require.NoError(t, err)
	defer f.Close()
	lg, err := Parse(f)
	require.NoError(t, err)
	return lg
}

// Prices in nano-dollars a token: gpt-4o 2,500 in and 10,000 out;
// gpt-4o-mini 150 in and 600 out.
const (
	gpt4oCall = inTokens*2500 + usedOut*10_000 // 5,025,000
	miniCall  = inTokens*150 + usedOut*600     // 301,500
)

func TestRecordedLog(t *testing.T) {
	path := record(t)
	raw, err := os.ReadFile(path)
	require.NoError(t, err)
	assert.NotContains(t, string(raw), "sk-secret", "no header in the log")
	assert.NotContains(t, string(raw), "messages", "no body in the log")
	lg := parseFile(t, path)
	assert.Equal(t, "a.yaml", lg.Policy)
	assert.Equal(t, "deferred", lg.Settlement)
	require.Len(t, lg.Entries, 2*calls*2)
	d := lg.Entries[0]
	assert.Equal(t, KindDecision, d.Kind)
	assert.Equal(t, "acme", d.Client)
	assert.Equal(t, "basic", d.Tier)
	assert.Equal(t, "openai", d.Route)
	assert.Equal(t, "gpt-4o", d.Model)
	assert.Equal(t, "immediate", d.Class)
	assert.Equal(t, "allowed", d.Outcome)
	assert.Equal(t, policy.Money(inTokens*2500+maxOut*10_000), d.Estimate)
	assert.Equal(t, []PoolUnits{{Pool: "gpt", Units: inTokens + maxOut}}, d.Pools)
	s := lg.Entries[2*calls]
	assert.Equal(t, KindSettle, s.Kind)
	assert.Equal(t, "acme-0", s.RequestID)
	assert.Equal(t, policy.Money(gpt4oCall), s.Actual)
	assert.Equal(t, int64(usedOut), s.OutputTokens)
}

func TestReplayAgainstB(t *testing.T) {
	lg := parseFile(t, record(t))
	a, b := compileSet(t, "a.yaml", policyA), compileSet(t, "b.yaml", policyB)
	rep, err := Compare(context.Background(), lg, a, b, "a.yaml", "b.yaml")
	require.NoError(t, err)

	byKey := func(rows []Row, k string) Row {
		for _, r := range rows {
			if r.Key == k {
				return r
			}
		}
		t.Fatalf("no row %q", k)
		return Row{}
	}
	// Under A every call goes; under B acme's budget takes two reserves
	// ($0.011886 each), so its third and fourth calls are refused; bigco's
	// four calls are downgraded, two fit in its halved share, the third
	// and fourth wait in the queue (class batch) on the replay's clock
	// (see TestReplayHoldsOnTheClock).
	acme := byKey(rep.Clients, "acme")
	assert.Equal(t, Stats{Calls: 4, Admitted: 4, Spend: 4 * gpt4oCall}, acme.Base)
	assert.Equal(t, Stats{Calls: 4, Admitted: 2, Refused: 2, Spend: 2 * gpt4oCall,
		RefusedBy: map[string]int64{"budget_exceeded": 2}}, acme.New)
	bigco := byKey(rep.Clients, "bigco")
	assert.Equal(t, Stats{Calls: 4, Admitted: 4, Spend: 4 * gpt4oCall}, bigco.Base)
	assert.Equal(t, Stats{Calls: 4, Admitted: 4, Held: 2, Downgraded: 4, Spend: 4 * miniCall}, bigco.New)
	assert.Equal(t, acme.Base, byKey(rep.Tiers, "basic").Base)
	assert.Equal(t, acme.New, byKey(rep.Tiers, "basic").New)
	assert.Equal(t, bigco.New, byKey(rep.Tiers, "premium").New)
	assert.Equal(t, policy.Money(8*gpt4oCall), rep.Total.Base.Spend)
	assert.Equal(t, policy.Money(2*gpt4oCall+4*miniCall), rep.Total.New.Spend)

	var out bytes.Buffer
	require.NoError(t, rep.WriteText(&out))
	t.Log("\n" + out.String())
	assert.Contains(t, out.String(), "basic")
	assert.Contains(t, out.String(), "4→2 (-2)")
	assert.Regexp(t, `budget_exceeded +0→2 \(\+2\)`, out.String())
}

// TestReplaySameIsNoChange: a log replayed under the policy it was
// recorded with changes nothing, and the recorded figures come back.
func TestReplaySameIsNoChange(t *testing.T) {
	lg := parseFile(t, record(t))
	a := compileSet(t, "a.yaml", policyA)
	rep, err := Compare(context.Background(), lg, a, a, "a.yaml", "a.yaml")
	require.NoError(t, err)
	assert.False(t, rep.Total.Changed())
	for _, r := range append(rep.Tiers, rep.Clients...) {
		assert.False(t, r.Changed(), r.Key)
	}
	assert.Equal(t, policy.Money(8*gpt4oCall), rep.Total.New.Spend)
	var out bytes.Buffer
	require.NoError(t, rep.WriteText(&out))
	assert.Contains(t, out.String(), "no change")
}

// TestReplayDeterministic: the same log and policies give byte-identical
// output, text and JSON.
func TestReplayDeterministic(t *testing.T) {
	lg := parseFile(t, record(t))
	a, b := compileSet(t, "a.yaml", policyA), compileSet(t, "b.yaml", policyB)
	render := func() (string, string) {
		rep, err := Compare(context.Background(), lg, a, b, "a.yaml", "b.yaml")
		require.NoError(t, err)
		var txt, js bytes.Buffer
		require.NoError(t, rep.WriteText(&txt))
		require.NoError(t, rep.WriteJSON(&js))
		return txt.String(), js.String()
	}
	txt, js := render()
	for range 3 {
		t2, j2 := render()
		require.Equal(t, txt, t2)
		require.Equal(t, js, j2)
	}
	assert.Contains(t, js, `"spend_nanos": 1206000`)
}

// TestReplayOddLines: lines a real log may hold, or a hand-edited one:
// unknown clients and routes, settles of nothing, a release, a cached call,
// an Anthropic call, a long wait that puts a call's arrival before earlier
// lines. The replay answers each and stays deterministic.
func TestReplayOddLines(t *testing.T) {
	const log = `{"v":1,"kind":"start","time":"2026-11-14T12:00:00Z","policy":"a.yaml"}
{"v":1,"kind":"decision","time":"2026-11-14T12:00:00Z","request_id":"1","client":"ghost","route":"openai","provider":"openai","host":"api.openai.com","path":"/v1/chat/completions","method":"POST","outcome":"denied","reason":"unknown_client","model":"gpt-4o","input_tokens":10,"output_tokens":990}
{"v":1,"kind":"decision","time":"2026-11-14T12:00:00Z","request_id":"2","client":"acme","host":"example.com","path":"/x","method":"GET","outcome":"unmatched","reason":"unmatched_route"}
{"v":1,"kind":"settle","time":"2026-11-14T12:00:01Z","reservation":"nothing","outcome":"settled","actual":"5"}
{"v":1,"kind":"decision","time":"2026-11-14T12:00:02Z","request_id":"3","reservation":"r3","client":"acme","tier":"basic","route":"openai","class":"immediate","provider":"openai","host":"api.openai.com","path":"/v1/chat/completions","method":"POST","outcome":"allowed","allowed":true,"model":"gpt-4o","estimate":"0.009925","input_tokens":10,"output_tokens":990,"future":"ignored"}
{"v":1,"kind":"settle","time":"2026-11-14T12:00:03Z","reservation":"r3","outcome":"released"}
{"v":1,"kind":"decision","time":"2026-11-14T12:00:04Z","request_id":"4","client":"bigco","route":"openai","class":"normal","provider":"openai","host":"api.openai.com","path":"/v1/responses","method":"POST","outcome":"cached","reason":"cache_hit","model":"gpt-4o","input_tokens":50,"output_tokens":100}
{"v":1,"kind":"decision","time":"2026-11-14T12:00:09Z","request_id":"5","reservation":"r5","client":"bigco","route":"openai","class":"batch","provider":"openai","host":"api.openai.com","path":"/v1/chat/completions","method":"POST","outcome":"allowed","allowed":true,"held":true,"wait":"8.5s","model":"gpt-4o","input_tokens":10,"output_tokens":990}
{"v":1,"kind":"settle","time":"2026-11-14T12:00:10Z","reservation":"r5","outcome":"settled","actual":"0.005025","input_tokens":10,"output_tokens":500}
{"v":1,"kind":"settle","time":"2026-11-14T12:00:10Z","reservation":"r5","outcome":"settled","actual":"0.005025","input_tokens":10,"output_tokens":500}
{"v":1,"kind":"decision","time":"2026-11-14T12:00:11Z","request_id":"6","client":"acme","route":"claude","provider":"anthropic","host":"api.anthropic.com","path":"/v1/messages","method":"POST","outcome":"allowed","allowed":true,"model":"claude-sonnet-4","input_tokens":20,"output_tokens":100}
`
	lg, err := Parse(strings.NewReader(log))
	require.NoError(t, err)
	a := compileSet(t, "a.yaml", policyA)
	run, err := Replay(context.Background(), lg, a)
	require.NoError(t, err)
	got := map[string]Outcome{}
	for _, c := range run.Calls {
		got[c.Entry.RequestID] = c.Verdict
	}
	assert.Equal(t, admission.ReasonUnknownClient, got["1"].Reason)
	assert.Equal(t, admission.ReasonUnmatchedRoute, got["2"].Reason)
	assert.True(t, got["3"].Allowed)
	assert.True(t, got["4"].Allowed, "the cache is not replayed: a cached call goes upstream")
	assert.True(t, got["5"].Allowed)
	assert.Equal(t, admission.ReasonUnmatchedRoute, got["6"].Reason, "policy A has no Anthropic route")
	spend := map[string]policy.Money{}
	for _, c := range run.Calls {
		spend[c.Entry.RequestID] = c.Spend
	}
	assert.Equal(t, policy.Money(0), spend["3"], "released")
	assert.Equal(t, policy.Money(gpt4oCall), spend["5"], "settled once")
	assert.Equal(t, run.Calls[0].Entry.RequestID, "1")

	rep1, err := Compare(context.Background(), lg, a, a, "a", "a")
	require.NoError(t, err)
	rep2, err := Compare(context.Background(), lg, a, a, "a", "a")
	require.NoError(t, err)
	assert.Equal(t, rep1, rep2)
	assert.False(t, rep1.Total.Changed())
}

// TestReplayImmediate: a log served with --settle immediate replays so:
// no reservation is held, so two calls of a client whose tier allows one
// at a time both go (concurrency is not enforced without settles), and
// each costs its estimate.
func TestReplayImmediate(t *testing.T) {
	one := strings.Replace(policyA, "basic: {priority: 10, max_concurrent: 5", "basic: {priority: 10, max_concurrent: 1", 1)
	const log = `{"v":1,"kind":"start","time":"2026-11-14T12:00:00Z","policy":"a.yaml","settlement":"immediate"}
{"v":1,"kind":"decision","time":"2026-11-14T12:00:00Z","request_id":"1","client":"acme","route":"openai","class":"immediate","provider":"openai","host":"api.openai.com","path":"/v1/chat/completions","method":"POST","outcome":"allowed","model":"gpt-4o","input_tokens":10,"output_tokens":990}
{"v":1,"kind":"decision","time":"2026-11-14T12:00:00Z","request_id":"2","client":"acme","route":"openai","class":"immediate","provider":"openai","host":"api.openai.com","path":"/v1/chat/completions","method":"POST","outcome":"allowed","model":"gpt-4o","input_tokens":10,"output_tokens":990}
`
	lg, err := Parse(strings.NewReader(log))
	require.NoError(t, err)
	set := compileSet(t, "one.yaml", one)
	run, err := Replay(context.Background(), lg, set)
	require.NoError(t, err)
	require.Len(t, run.Calls, 2)
	for _, c := range run.Calls {
		assert.True(t, c.Verdict.Allowed, c.Verdict.Reason)
		assert.Equal(t, policy.Money(inTokens*2500+maxOut*10_000), c.Spend)
	}
	// The same lines served deferred: the second call waits for a slot
	// the first never gives back (no settle) and is refused.
	lg.Settlement = "deferred"
	run, err = Replay(context.Background(), lg, set)
	require.NoError(t, err)
	assert.True(t, run.Calls[0].Verdict.Allowed)
	assert.Equal(t, "concurrency", run.Calls[1].Verdict.Reason)
}

// TestReplayHoldsOnTheClock: under B, bigco's third and fourth calls wait
// in the real hold queue, on the replay's fake clock, exactly as long as
// its bucket says. Its 2,000 tokens go to the first two calls at t0. At
// t0+1s the settles give back what the two did not use (490 each) and the
// bucket has refilled 100: 1,080, so the third goes at once (80 left).
// The third's own settle, recorded at t0+1s too, is booked as it goes:
// 490 back, 570; the fourth needs 430 more, 4.3 s at 100 a second: it
// goes at t0+5.3s.
func TestReplayHoldsOnTheClock(t *testing.T) {
	lg := parseFile(t, record(t))
	run, err := Replay(context.Background(), lg, compileSet(t, "b.yaml", policyB))
	require.NoError(t, err)
	waits := map[string]time.Duration{}
	for _, c := range run.Calls {
		if c.Entry.Client == "bigco" {
			require.True(t, c.Verdict.Allowed)
			waits[c.Entry.RequestID] = c.Verdict.Wait
		}
	}
	assert.Equal(t, map[string]time.Duration{"bigco-0": 0, "bigco-1": 0, "bigco-2": time.Second, "bigco-3": 5300 * time.Millisecond}, waits)
}
