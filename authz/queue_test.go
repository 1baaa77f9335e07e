package authz_test

import (
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"sort"
	"strconv"
	"sync"
	"testing"
	"time"

	authv3 "github.com/envoyproxy/go-control-plane/envoy/service/auth/v3"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"google.golang.org/genproto/googleapis/rpc/code"

	"github.com/tollgate/tollgate/admission"
	"github.com/tollgate/tollgate/authz"
	"github.com/tollgate/tollgate/internal/fakeclock"
	"github.com/tollgate/tollgate/limiter"
	"github.com/tollgate/tollgate/policy"
)

// queuePolicy: one OpenAI route on a pool of one request a second; tiers of
// different points; classes that may wait a few seconds.
const queuePolicy = `
defaults:
  unknown_client: deny
  timezone: America/New_York
pools:
  one:
    unit: request
    capacity: 1
    refill_per_second: 1
    price: "0.001"
routes:
  openai:
    host: api.openai.com
    path_prefix: /v1/
    provider: openai
    pools: [one]
tiers:
  gold:   {priority: 40, max_concurrent: 100}
  silver: {priority: 20, max_concurrent: 100}
  capped: {priority: 10, max_concurrent: 1, max_class: batch}
clients:
  g: {tier: gold}
  s: {tier: silver}
  c: {tier: capped}
  warmup: {tier: silver}
queue:
  wait_horizon: 10m
  classes:
    fast:     {max_wait: 3s, max_depth: 2}
    normal:   {max_wait: 5s}
    batch:    {max_wait: 20s}
    deferred: {max_wait: 30m}
  off_peak:
    - {start: "22:00", end: "06:00"}
`

// queueRequest is a call of client asking for class (none: the route's).
func queueRequest(id, client, class string) *admission.Request {
	r := openAIRequest(client, chatBody("gpt-4o", 5, "hi"))
	r.ID = id
	if class != "" {
		if r.Headers == nil {
			r.Headers = map[string]string{}
		}
		r.Headers["x-tollgate-priority"] = class
	}
	return r
}

// decideAsync runs Decide in a goroutine; the verdict arrives on the
// returned channel.
func decideAsync(ctx context.Context, d *Decider, r *admission.Request) <-chan authz.Answer {
	ch := make(chan authz.Answer, 1)
	go func() { ch <- d.Decide(ctx, r) }()
	return ch
}

// held waits until the decider holds n calls and its line's timer is set.
func (d *decider) held(tb testing.TB, n int) {
	tb.Helper()
	require.Eventually(tb, func() bool { return d.QueueStatus().Total == n && d.clk.Pending() > 0 }, 10*time.Second, time.Millisecond,
		"want %d held, have %d", n, d.QueueStatus().Total)
}

// noAnswer requires that ch has no verdict yet.
func noAnswer(tb testing.TB, ch <-chan authz.Answer) {
	tb.Helper()
	select {
	case v := <-ch:
		tb.Fatalf("answered early: %+v", gistOf(v))
	default:
	}
}

// TestQueueHoldsThenAdmits: a normal call finds the pool empty, is held,
// and is admitted when the bucket refills, saying how long it waited.
func TestQueueHoldsThenAdmits(t *testing.T) {
	d := newDecider(t, queuePolicy)
	ctx := context.Background()
	require.True(t, d.Decide(ctx, queueRequest("w", "warmup", "")).Allowed)
	ch := decideAsync(ctx, d.Decider, queueRequest("r1", "s", ""))
	d.held(t, 1)
	noAnswer(t, ch)
	d.clk.Advance(time.Second)
	v := recv(t, ch)
	require.True(t, v.Allowed, v.Message)
	assert.Equal(t, policy.Normal, v.Class)
	assert.Equal(t, time.Second, v.QueueWait)
	assert.Equal(t, "1.000", headerMap(t, authz.ResponseHeaders(&v))[authz.HeaderQueueWait])
	assert.Equal(t, 1.0, metricValue(t, d.reg, "tollgate_queue_exits_total", map[string]string{"class": "normal", "outcome": "granted"}))
	requireLint(t, d.reg)
}

// TestQueueRefusals: every way a held call is refused, each an answer
// shaped like the provider's 429 with Retry-After, and each holding nothing.
func TestQueueRefusals(t *testing.T) {
	ctx := context.Background()
	t.Run("immediate is never held", func(t *testing.T) {
		d := newDecider(t, queuePolicy)
		require.True(t, d.Decide(ctx, queueRequest("w", "warmup", "")).Allowed)
		v := d.Decide(ctx, queueRequest("r", "g", "immediate"))
		assert.Equal(t, gist{Outcome: admission.OutcomeDenied, Reason: "rate_limited", Status: http.StatusTooManyRequests,
			Provider: policy.ProviderOpenAI, Route: "openai", Tier: "gold", Pool: "one", RetryAfter: time.Second}, gistOf(v))
		assert.Zero(t, d.QueueStatus().Total)
	})
	t.Run("deadline", func(t *testing.T) {
		// Four normal calls and a fifth, one refill a second: the fifth's
		// turn is at 5 s, which is its deadline.
		d := newDecider(t, queuePolicy)
		require.True(t, d.Decide(ctx, queueRequest("w", "warmup", "")).Allowed)
		var chs []<-chan authz.Answer
		for i := range 4 {
			chs = append(chs, decideAsync(ctx, d.Decider, queueRequest(fmt.Sprint("n", i), "s", "normal")))
			d.held(t, i+1) // in this order: ties go to the earliest
		}
		late := decideAsync(ctx, d.Decider, queueRequest("late", "s", "normal"))
		d.held(t, 5)
		for i := range 4 {
			d.clk.Advance(time.Second)
			v := recv(t, chs[i])
			require.True(t, v.Allowed, "n%d: %s", i, v.Message)
			d.held(t, 4-i)
		}
		noAnswer(t, late)
		d.clk.Advance(time.Second) // t=5: its deadline
		v := recv(t, late)
		assert.Equal(t, gist{Outcome: admission.OutcomeDenied, Reason: admission.ReasonQueueTimeout, Status: http.StatusTooManyRequests,
			Provider: policy.ProviderOpenAI, Route: "openai", Tier: "silver", Pool: "one", RetryAfter: time.Second}, gistOf(v))
		assert.Contains(t, v.Message, "Held 5.0s in the normal queue for pool one")
		hs := headerMap(t, authz.ResponseHeaders(&v))
		assert.Equal(t, "1", hs["retry-after"])
		assert.Equal(t, admission.ReasonQueueTimeout, hs["x-tollgate-reason"])
		_, body := authz.DenialBody(&v)
		assert.Contains(t, string(body), `"code":"rate_limit_exceeded"`, "the provider's own 429 shape")
		assert.Zero(t, d.QueueStatus().Total)
		assert.Equal(t, 1.0, metricValue(t, d.reg, "tollgate_queue_exits_total", map[string]string{"class": "normal", "outcome": "timeout"}))
	})
	t.Run("a wait longer than the class's is refused at once", func(t *testing.T) {
		d := newDecider(t, queuePolicy)
		one := limiter.Limit{Capacity: 1, Refill: 1}
		_, err := d.store.Refund(ctx, []limiter.Refund{{Key: limiter.Key{Pool: "one"}, Limit: one, Units: -5}}, time.Time{})
		require.NoError(t, err) // four requests in debt: the next one is 5 s away
		v := d.Decide(ctx, queueRequest("hopeless", "s", "fast"))
		assert.Equal(t, gist{Outcome: admission.OutcomeDenied, Reason: "rate_limited", Status: http.StatusTooManyRequests,
			Provider: policy.ProviderOpenAI, Route: "openai", Tier: "silver", Pool: "one", RetryAfter: 5 * time.Second}, gistOf(v),
			"fast may wait 3 s: not held, told when to come back")
		assert.Zero(t, v.QueueWait)
		assert.Zero(t, d.QueueStatus().Total)
		ch := decideAsync(ctx, d.Decider, queueRequest("patient", "s", "batch")) // batch may wait 20 s
		d.held(t, 1)
		d.clk.Advance(5 * time.Second)
		require.True(t, recv(t, ch).Allowed)
	})
	t.Run("queue full", func(t *testing.T) {
		d := newDecider(t, queuePolicy) // fast: depth 2
		require.True(t, d.Decide(ctx, queueRequest("w", "warmup", "")).Allowed)
		a := decideAsync(ctx, d.Decider, queueRequest("a", "g", "fast"))
		b := decideAsync(ctx, d.Decider, queueRequest("b", "s", "fast"))
		d.held(t, 2)
		v := d.Decide(ctx, queueRequest("c", "g", "fast"))
		assert.Equal(t, admission.ReasonQueueFull, v.Reason)
		assert.Equal(t, http.StatusTooManyRequests, v.Status)
		assert.Contains(t, v.Message, "The fast queue for pool one is full (2 calls)")
		assert.Equal(t, 1.0, metricValue(t, d.reg, "tollgate_queue_exits_total", map[string]string{"class": "fast", "outcome": "full"}))
		d.clk.Advance(time.Second)
		require.True(t, recv(t, a).Allowed)
		d.held(t, 1)
		d.clk.Advance(time.Second)
		require.True(t, recv(t, b).Allowed)
	})
	t.Run("a tier's cap lowers the class", func(t *testing.T) {
		d := newDecider(t, queuePolicy)
		require.True(t, d.Decide(ctx, queueRequest("w", "warmup", "")).Allowed)
		ch := decideAsync(ctx, d.Decider, queueRequest("r", "c", "immediate"))
		d.held(t, 1)
		d.clk.Advance(time.Second)
		v := recv(t, ch)
		require.True(t, v.Allowed, "capped at batch: held, not refused")
		assert.Equal(t, policy.Batch, v.Class)
	})
	t.Run("cancelled: gone at once, holding nothing", func(t *testing.T) {
		d := newDecider(t, queuePolicy)
		require.True(t, d.Decide(ctx, queueRequest("w", "warmup", "")).Allowed)
		cctx, cancel := context.WithCancel(ctx)
		ch := decideAsync(cctx, d.Decider, queueRequest("r", "s", "batch"))
		d.held(t, 1)
		cancel()
		v := recv(t, ch)
		assert.Equal(t, admission.ReasonCancelled, v.Reason)
		assert.Zero(t, d.QueueStatus().Total)
		d.clk.Advance(time.Second)
		assert.Equal(t, int64(1), d.remaining(t, limiter.Key{Pool: "one"}, policy.Limit{Capacity: 1, Refill: 1}),
			"the refill is there for the next call: the cancelled one took nothing")
	})
}

// TestQueueDeferred: a deferred call outside the off-peak window is refused
// with Retry-After pointing at the window, unless its wait reaches the
// window; then it is held for it. The window is 22:00–06:00 in New York.
func TestQueueDeferred(t *testing.T) {
	ctx := context.Background()
	ny, err := time.LoadLocation("America/New_York")
	require.NoError(t, err)
	t.Run("the window is hours away: refused", func(t *testing.T) {
		d := newDecider(t, queuePolicy)
		d.clk.Set(time.Date(2026, 12, 1, 15, 0, 0, 0, ny))
		v := d.Decide(ctx, queueRequest("r", "s", "deferred"))
		assert.Equal(t, gist{Outcome: admission.OutcomeDenied, Reason: admission.ReasonOffPeak, Status: http.StatusTooManyRequests,
			Provider: policy.ProviderOpenAI, Route: "openai", Tier: "silver", Pool: "one", RetryAfter: 7 * time.Hour}, gistOf(v))
		assert.Equal(t, strconv.Itoa(7*3600), headerMap(t, authz.ResponseHeaders(&v))["retry-after"])
		assert.Contains(t, v.Message, "2026-12-01T22:00:00-05:00")
	})
	t.Run("the window opens within its wait: held for it", func(t *testing.T) {
		d := newDecider(t, queuePolicy)
		d.clk.Set(time.Date(2026, 12, 1, 21, 50, 0, 0, ny))
		ch := decideAsync(ctx, d.Decider, queueRequest("r", "s", "deferred"))
		require.Eventually(t, func() bool { return d.QueueStatus().Parked == 1 }, 10*time.Second, time.Millisecond)
		noAnswer(t, ch)
		d.clk.Advance(10 * time.Minute)
		v := recv(t, ch)
		require.True(t, v.Allowed, v.Message)
		assert.Equal(t, 10*time.Minute, v.QueueWait)
	})
	t.Run("inside the window: like any other", func(t *testing.T) {
		d := newDecider(t, queuePolicy)
		d.clk.Set(time.Date(2026, 12, 2, 3, 0, 0, 0, ny)) // after midnight, still inside
		v := d.Decide(ctx, queueRequest("r", "s", "deferred"))
		require.True(t, v.Allowed, v.Message)
		assert.Zero(t, v.QueueWait)
	})
}

// TestQueueConcurrency: a call refused for its client's concurrency waits
// for a slot, and gets it when a call of the client settles.
func TestQueueConcurrency(t *testing.T) {
	clk := fakeclock.New(epoch)
	ctx := context.Background()
	dd := newTestDecider(t, compilePolicy(t, queuePolicy), newMemStore(t, clk), prometheus.NewRegistry(), nil,
		withSettlement(admission.SettleDeferred), withClock(clk))
	t.Cleanup(func() { require.NoError(t, dd.Close()) })
	first := dd.Decide(ctx, queueRequest("first", "c", "batch")) // tier capped: one call in flight
	require.True(t, first.Allowed)
	clk.Advance(time.Second) // the pool refills: only the slot is short now
	ch := decideAsync(ctx, dd, queueRequest("second", "c", "batch"))
	require.Eventually(t, func() bool { return dd.QueueStatus().Total == 1 }, 10*time.Second, time.Millisecond)
	st := dd.QueueStatus()
	require.Len(t, st.Lines, 1)
	assert.Equal(t, "concurrency", st.Lines[0].Pool)
	assert.Equal(t, `concurrency slots of client "c"`, st.Lines[0].Queue)
	noAnswer(t, ch)
	// The first call ends through ext_proc (or the API): its slot frees.
	c := dd.Follow(first.Reservation, first.Route, "POST")
	c.ResponseHeaders(ctx, 500, nil)
	assert.Equal(t, admission.SettledReleased, c.End(ctx))
	v := recv(t, ch)
	require.True(t, v.Allowed, v.Message)
}

// TestQueueAPI: status, a waiter's position, and removing one.
func TestQueueAPI(t *testing.T) {
	clk := fakeclock.New(epoch)
	ts := startServer(t, serverOpts{policy: queuePolicy, clk: clk})
	ctx := context.Background()
	resp, err := ts.auth.Check(ctx, checkFor("warmup", "", "w"))
	require.NoError(t, err)
	require.Equal(t, int32(code.Code_OK), resp.GetStatus().GetCode())
	answers := make(chan string, 2)
	for _, c := range []struct{ id, client, class string }{{"low", "s", "batch"}, {"high", "g", "fast"}} {
		go func() {
			resp, err := ts.auth.Check(ctx, checkFor(c.client, c.class, c.id))
			if err == nil {
				answers <- c.id + ":" + code.Code(resp.GetStatus().GetCode()).String()
			}
		}()
	}
	require.Eventually(t, func() bool { return ts.srv.Service().QueueStatus().Total == 2 }, 10*time.Second, time.Millisecond)

	sc, body := ts.get(t, "/api/queue/status")
	require.Equal(t, http.StatusOK, sc)
	var st admission.QueueStatus
	require.NoError(t, json.Unmarshal([]byte(body), &st), body)
	assert.Equal(t, 2, st.Total)
	require.Len(t, st.Lines, 1)
	assert.Equal(t, "pool one", st.Lines[0].Queue)
	assert.Equal(t, 1, st.Lines[0].Classes["batch"].Depth)
	assert.Equal(t, 1, st.Lines[0].Classes["fast"].Depth)

	sc, body = ts.get(t, "/api/queue/position/low")
	require.Equal(t, http.StatusOK, sc, body)
	var pos struct {
		Position int     `json:"position"`
		Class    string  `json:"class"`
		Score    float64 `json:"score"`
	}
	require.NoError(t, json.Unmarshal([]byte(body), &pos))
	assert.Equal(t, 2, pos.Position, "behind the gold fast call")
	assert.Equal(t, "batch", pos.Class)
	assert.InDelta(t, 20+10+10, pos.Score, 1e-9, "tier 20, batch 10, fairness 10")
	sc, _ = ts.get(t, "/api/queue/position/nobody")
	assert.Equal(t, http.StatusNotFound, sc)

	req, err := http.NewRequest(http.MethodDelete, ts.base+"/api/queue/low", nil)
	require.NoError(t, err)
	dresp, err := ts.http.Do(req)
	require.NoError(t, err)
	require.NoError(t, dresp.Body.Close())
	assert.Equal(t, http.StatusOK, dresp.StatusCode)
	assert.Equal(t, "low:RESOURCE_EXHAUSTED", recv(t, answers), "removed: told at once, with a 429")
	dresp, err = ts.http.Do(req)
	require.NoError(t, err)
	require.NoError(t, dresp.Body.Close())
	assert.Equal(t, http.StatusNotFound, dresp.StatusCode)

	require.Eventually(t, func() bool { return clk.Pending() > 0 }, 10*time.Second, time.Millisecond)
	clk.Advance(time.Second)
	assert.Equal(t, "high:OK", recv(t, answers))
	assert.Equal(t, 1.0, metricValue(t, ts.reg, "tollgate_queue_exits_total", map[string]string{"class": "batch", "outcome": "removed"}))
	requireLint(t, ts.reg)
}

// checkFor is a CheckRequest of client asking for class, with request id.
func checkFor(client, class, id string) *authv3.CheckRequest {
	cr := chatCheck(client, chatBody("gpt-4o", 5, "hi"))
	h := cr.GetAttributes().GetRequest().GetHttp()
	h.Headers["x-request-id"] = id
	if class != "" {
		h.Headers["x-tollgate-priority"] = class
	}
	return cr
}

// TestQueueEndToEnd: with a pool of one request a second, twenty concurrent
// Checks of mixed tiers and classes over real gRPC are all answered within
// their class's bound, and those admitted are admitted in score order.
func TestQueueEndToEnd(t *testing.T) {
	const pol = `
defaults: {unknown_client: deny}
pools:
  one: {unit: request, capacity: 1, refill_per_second: 1}
routes:
  openai: {host: api.openai.com, path_prefix: /v1/, provider: openai, pools: [one]}
tiers:
  t0: {priority: 0, max_concurrent: 100}
  t1: {priority: 1, max_concurrent: 100}
  t2: {priority: 2, max_concurrent: 100}
  t3: {priority: 3, max_concurrent: 100}
  t4: {priority: 4, max_concurrent: 100}
  t5: {priority: 5, max_concurrent: 100}
  t6: {priority: 6, max_concurrent: 100}
clients:
  warmup: {tier: t0}
  c0: {tier: t0}
  c1: {tier: t1}
  c2: {tier: t2}
  c3: {tier: t3}
  c4: {tier: t4}
  c5: {tier: t5}
  c6: {tier: t6}
queue:
  wait_horizon: 1h
  classes:
    fast:   {max_wait: 5s}
    normal: {max_wait: 12s}
    batch:  {max_wait: 30s}
`
	clk := fakeclock.New(epoch)
	ts := startServer(t, serverOpts{policy: pol, clk: clk})
	ctx := context.Background()
	resp, err := ts.auth.Check(ctx, checkFor("warmup", "immediate", "warmup")) // the one request there is
	require.NoError(t, err)
	require.Equal(t, int32(code.Code_OK), resp.GetStatus().GetCode())

	type call struct {
		id, client, class string
		score             int // tier + urgency + fairness (10: no usage yet)
		bound             time.Duration
	}
	urgency := map[string]int{"fast": 30, "normal": 20, "batch": 10}
	bound := map[string]time.Duration{"fast": 5 * time.Second, "normal": 12 * time.Second, "batch": 30 * time.Second}
	var calls []call
	for i := range 20 {
		class := []string{"fast", "normal", "batch"}[i%3]
		tier := (i / 3) % 7
		calls = append(calls, call{id: fmt.Sprint("call-", i), client: fmt.Sprint("c", tier), class: class,
			score: tier + urgency[class] + 10, bound: bound[class]})
	}
	type answer struct {
		call
		ok bool
		at time.Duration // fake time since the calls arrived
	}
	start := clk.Now()
	answers := make(chan answer, len(calls))
	var wg sync.WaitGroup
	for _, c := range calls {
		wg.Go(func() {
			resp, err := ts.auth.Check(ctx, checkFor(c.client, c.class, c.id))
			if !assert.NoError(t, err) {
				return
			}
			answers <- answer{call: c, ok: resp.GetStatus().GetCode() == int32(code.Code_OK), at: clk.Now().Sub(start)}
		})
	}
	require.Eventually(t, func() bool { return ts.srv.Service().QueueStatus().Total == len(calls) }, 10*time.Second, time.Millisecond)

	var got []answer
	for len(got) < len(calls) {
		require.Eventually(t, func() bool { return clk.Pending() > 0 }, 10*time.Second, time.Millisecond)
		clk.Step(time.Second)
		left := len(calls) - len(got)
		require.Eventually(t, func() bool { return ts.srv.Service().QueueStatus().Total < left }, 10*time.Second, time.Millisecond)
		// Every line has acted on the second (its refill, its deadlines)
		// before the clock moves on.
		require.Eventually(t, func() bool { return ts.srv.Service().QueueBusy() == 0 }, 10*time.Second, time.Millisecond)
		held := ts.srv.Service().QueueStatus().Total
		for len(got) < len(calls)-held { // every call out of the queue answers before the clock moves on
			got = append(got, <-answers)
		}
	}
	wg.Wait()

	var admitted []answer
	for _, a := range got {
		assert.LessOrEqual(t, a.at, a.bound, "%s (%s) answered within its bound", a.id, a.class)
		if a.ok {
			admitted = append(admitted, a)
		} else {
			assert.Equal(t, a.bound, a.at, "%s refused at its deadline, not before", a.id)
		}
	}
	sort.SliceStable(admitted, func(i, j int) bool { return admitted[i].at < admitted[j].at })
	for i := 1; i < len(admitted); i++ {
		assert.GreaterOrEqual(t, admitted[i-1].score, admitted[i].score, "admitted in score order: %s then %s", admitted[i-1].id, admitted[i].id)
		assert.Less(t, admitted[i-1].at, admitted[i].at, "one a second")
	}
	assert.Greater(t, len(admitted), 10, "most are admitted")
	t.Logf("%d of %d admitted; the rest refused at their deadline", len(admitted), len(calls))
}

// TestQueueSharedRequestID: held calls sharing an x-request-id are listed by
// GET /api/queue, each with its own queue id, and each can be removed (by
// queue id, or by request id one after the other); each refusal names its
// queue id in x-tollgate-queue-id, and so does an admission after a hold.
func TestQueueSharedRequestID(t *testing.T) {
	clk := fakeclock.New(epoch)
	ts := startServer(t, serverOpts{policy: queuePolicy, clk: clk})
	ctx := context.Background()
	resp, err := ts.auth.Check(ctx, checkFor("warmup", "", "w"))
	require.NoError(t, err)
	require.Equal(t, int32(code.Code_OK), resp.GetStatus().GetCode())
	type answer struct {
		client, code, queueID string
	}
	answers := make(chan answer, 3)
	for _, client := range []string{"s", "c", "g"} {
		go func() {
			resp, err := ts.auth.Check(ctx, checkFor(client, "batch", "dup"))
			if err != nil {
				return
			}
			a := answer{client: client, code: code.Code(resp.GetStatus().GetCode()).String()}
			hs := append(resp.GetDeniedResponse().GetHeaders(), resp.GetOkResponse().GetResponseHeadersToAdd()...)
			for _, h := range hs {
				if h.GetHeader().GetKey() == authz.HeaderQueueID {
					a.queueID = h.GetHeader().GetValue()
				}
			}
			answers <- a
		}()
	}
	require.Eventually(t, func() bool { return ts.srv.Service().QueueStatus().Total == 3 }, 10*time.Second, time.Millisecond)

	sc, body := ts.get(t, "/api/queue")
	require.Equal(t, http.StatusOK, sc, body)
	var list struct {
		Held []struct {
			QueueID   string  `json:"queue_id"`
			RequestID string  `json:"request_id"`
			Client    string  `json:"client"`
			Class     string  `json:"class"`
			Line      string  `json:"queue"`
			Position  int     `json:"position"`
			Score     float64 `json:"score"`
			Waited    float64 `json:"waited_seconds"`
		} `json:"held"`
	}
	require.NoError(t, json.Unmarshal([]byte(body), &list), body)
	require.Len(t, list.Held, 3, body)
	byClient := map[string]string{}
	for i, h := range list.Held {
		assert.Equal(t, "dup", h.RequestID)
		assert.Equal(t, "batch", h.Class)
		assert.Equal(t, "pool one", h.Line)
		assert.Equal(t, i+1, h.Position, "best first")
		assert.NotEmpty(t, h.QueueID)
		byClient[h.Client] = h.QueueID
	}
	require.Len(t, byClient, 3)
	assert.Equal(t, "g", list.Held[0].Client, "gold first")
	assert.InDelta(t, 40+10+10, list.Held[0].Score, 1e-9)

	del := func(id string) int {
		req, err := http.NewRequest(http.MethodDelete, ts.base+"/api/queue/"+id, nil)
		require.NoError(t, err)
		resp, err := ts.http.Do(req)
		require.NoError(t, err)
		require.NoError(t, resp.Body.Close())
		return resp.StatusCode
	}
	// The calls arrived in goroutine order: the earliest of g and s is the
	// one with the smaller queue id.
	earliest, last := "g", "s"
	if seqOf(t, byClient["s"]) < seqOf(t, byClient["g"]) {
		earliest, last = "s", "g"
	}
	tests := []struct {
		name, id, want string
	}{
		{"by queue id", byClient["c"], "c"},
		{"by request id: the earliest of the rest", "dup", earliest},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			sc, body := ts.get(t, "/api/queue/position/"+tc.id)
			require.Equal(t, http.StatusOK, sc, body)
			assert.Contains(t, body, `"queue_id": "`+byClient[tc.want]+`"`)
			require.Equal(t, http.StatusOK, del(tc.id))
			a := recv(t, answers)
			assert.Equal(t, answer{client: tc.want, code: "RESOURCE_EXHAUSTED", queueID: byClient[tc.want]}, a)
		})
	}
	assert.Equal(t, http.StatusNotFound, del(byClient["c"]), "gone")

	require.Eventually(t, func() bool { return clk.Pending() > 0 }, 10*time.Second, time.Millisecond)
	clk.Advance(time.Second)
	assert.Equal(t, answer{client: last, code: "OK", queueID: byClient[last]}, recv(t, answers), "admitted after a hold: the header names it too")
}

// seqOf is the arrival number in a queue id "q-N".
func seqOf(t *testing.T, queueID string) int {
	t.Helper()
	var n int
	_, err := fmt.Sscanf(queueID, "q-%d", &n)
	require.NoError(t, err, queueID)
	return n
}
