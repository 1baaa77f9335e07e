// Package cachetest is the conformance suite every respcache.Cache passes:
// the in-process Memory, the Redis level and the Tiered cache made of both
// run the very same Run, so they cannot drift apart. It is imported only
// from tests.
//
// TTLs follow a fake clock; waits and leases are real time (they bound how
// long a call blocks), so the flight tests use short leases and generous
// waits, and assert what happened, never how long it took.
package cachetest

import (
	"context"
	"fmt"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	dto "github.com/prometheus/client_model/go"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/tollgate/tollgate/internal/fakeclock"
	"github.com/tollgate/tollgate/limiter/respcache"
	"github.com/tollgate/tollgate/policy"
)

// Epoch is the fake clock's start in every subtest.
var Epoch = time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)

// MaxEntryBytes is the entry cap (respcache.Size) every cache of the
// suite is made with.
const MaxEntryBytes = 64 << 10

// Options are what a subtest asks of the caches it gets.
type Options struct {
	// Clock tells the caches' TTLs and Stored.
	Clock *fakeclock.Clock
	// Metrics is where the caches count (registered in a registry of the
	// subtest's own).
	Metrics *respcache.Metrics
	// Members is how many caches to return, all on one shared store: the
	// members of one fleet. A process-local cache returns itself Members
	// times.
	Members int
}

// New returns opts.Members caches sharing one new, empty store, distinct
// from every store it returned before (a Redis store gets its own key
// prefix), each refusing entries over MaxEntryBytes. Run closes them when
// the subtest ends (a cache returned twice is closed twice).
type New func(t *testing.T, opts Options) []respcache.Cache

// Generous bounds: a flight test's waits end long before these only if
// the cache is broken.
const (
	longWait  = 10 * time.Second
	longLease = 10 * time.Second
	// shortLease is a dead leader's: the suite waits for it to lapse.
	shortLease = 100 * time.Millisecond
)

// Run runs the conformance suite against caches made by newCache.
func Run(t *testing.T, newCache New) {
	for name, test := range map[string]func(*testing.T, *harness){
		"get after complete":                     testGetAfterComplete,
		"stored defaults to now":                 testStoredDefault,
		"entries expire after their ttl":         testTTL,
		"complete replaces":                      testReplace,
		"complete without a flight":              testCompleteNoFlight,
		"size cap":                               testSizeCap,
		"invalid keys and ttls":                  testInvalid,
		"one leader, waiters get the entry":      testWaitersFound,
		"abandon promotes exactly one waiter":    testAbandonPromotesOne,
		"a dead leader's claim lapses":           testLeaseLapses,
		"busy after the wait":                    testBusy,
		"a cancelled wait is busy":               testCancelledWait,
		"a too large answer sends waiters on":    testTooLargeWaiters,
		"idempotency records apart":              testKindsApart,
		"invalidate by scope and route":          testInvalidate,
		"delete":                                 testDelete,
		"concurrent use":                         testConcurrent,
		"members share entries":                  testMembersShareEntries,
		"ten begins across members, one leader":  testMembersOneLeader,
		"abandon on one member, lead on another": testMembersAbandon,
	} {
		t.Run(name, func(t *testing.T) {
			reg := prometheus.NewRegistry()
			m, err := respcache.NewMetrics(reg)
			require.NoError(t, err)
			h := &harness{clock: fakeclock.New(Epoch), reg: reg, metrics: m, newCache: newCache}
			test(t, h)
		})
	}
}

// harness is one subtest's clock, metrics and caches.
type harness struct {
	clock    *fakeclock.Clock
	reg      *prometheus.Registry
	metrics  *respcache.Metrics
	newCache New
}

// open returns n members of a new store, closed when t ends.
func (h *harness) open(t *testing.T, n int) []respcache.Cache {
	t.Helper()
	cs := h.newCache(t, Options{Clock: h.clock, Metrics: h.metrics, Members: n})
	require.Len(t, cs, n)
	for _, c := range cs {
		t.Cleanup(func() { assert.NoError(t, c.Close()) })
	}
	return cs
}

func (h *harness) one(t *testing.T) respcache.Cache { return h.open(t, 1)[0] }

// counter sums a metric's samples whose labels include want.
func (h *harness) counter(t *testing.T, name string, want map[string]string) float64 {
	t.Helper()
	fams, err := h.reg.Gather()
	require.NoError(t, err)
	sum := 0.0
	for _, f := range fams {
		if f.GetName() != name {
			continue
		}
		for _, m := range f.GetMetric() {
			if matches(m, want) {
				sum += m.GetCounter().GetValue() + m.GetGauge().GetValue()
			}
		}
	}
	return sum
}

func matches(m *dto.Metric, want map[string]string) bool {
	for k, v := range want {
		if !slices.ContainsFunc(m.GetLabel(), func(l *dto.LabelPair) bool { return l.GetName() == k && l.GetValue() == v }) {
			return false
		}
	}
	return true
}

// waits returns the flight waits that ended in result.
func (h *harness) waits(t *testing.T, result string) int {
	return int(h.counter(t, "tollgate_cache_flight_waits_total", map[string]string{"result": result}))
}

// misses returns the lookups of kind that missed at the level that saw the
// most: every call's first look (a Tiered cache's L1; the only level of the
// others), so it reaches n once n calls have looked and found nothing.
func (h *harness) misses(t *testing.T, kind respcache.Kind) int {
	most := 0.0
	for _, lv := range []string{"l1", "l2"} {
		most = max(most, h.counter(t, "tollgate_cache_lookups_total", map[string]string{"kind": kind.String(), "level": lv, "result": "miss"}))
	}
	return int(most)
}

// awaitMisses waits until n calls have looked k's kind up and missed: the
// callers are waiting (or about to) on the flight in progress.
func (h *harness) awaitMisses(t *testing.T, kind respcache.Kind, n int) {
	t.Helper()
	require.Eventually(t, func() bool { return h.misses(t, kind) >= n }, 20*time.Second, time.Millisecond,
		"%d calls should have looked up and missed", n)
}

func key(hash string) respcache.Key {
	return respcache.Key{Kind: respcache.Response, Scope: "client-a", Route: "chat", Hash: hash}
}

func entry(body string) respcache.Entry {
	return respcache.Entry{
		Status:  200,
		Headers: map[string]string{"content-type": "application/json", "x-request-id": "req-1"},
		Body:    []byte(body),
		Cost:    policy.Money(1_234_567),
		Stored:  Epoch.Add(-time.Second),
	}
}

// same asserts that got is want as a cache gives it back.
func same(t *testing.T, want, got respcache.Entry) {
	t.Helper()
	assert.Equal(t, want.Status, got.Status)
	if len(want.Headers) == 0 {
		assert.Empty(t, got.Headers)
	} else {
		assert.Equal(t, want.Headers, got.Headers)
	}
	if len(want.Body) == 0 {
		assert.Empty(t, got.Body)
	} else {
		assert.Equal(t, want.Body, got.Body)
	}
	assert.Equal(t, want.Cost, got.Cost)
	assert.Equal(t, want.Stored.UnixMicro(), got.Stored.UnixMicro(), "stored at %v, got %v", want.Stored, got.Stored)
}

func bg() context.Context { return context.Background() }

// get asserts what Get finds under k.
func get(t *testing.T, c respcache.Cache, k respcache.Key) (respcache.Entry, bool) {
	t.Helper()
	return c.Get(bg(), k)
}

func complete(t *testing.T, c respcache.Cache, k respcache.Key, e respcache.Entry, ttl time.Duration) {
	t.Helper()
	require.NoError(t, c.Complete(bg(), k, e, ttl))
}

func testGetAfterComplete(t *testing.T, h *harness) {
	c := h.one(t)
	for name, e := range map[string]respcache.Entry{
		"json":         entry(`{"id":"chatcmpl-1","choices":[{"message":{"content":"hello"}}]}`),
		"large":        entry(strings.Repeat(`{"delta":"lorem ipsum dolor sit amet"},`, 1000)),
		"binary":       {Status: 201, Body: []byte{0, 1, 2, 0xff, 0xfe, '\n'}, Stored: Epoch},
		"empty":        {Status: 204, Stored: Epoch},
		"no headers":   {Status: 200, Body: []byte("x"), Cost: 1, Stored: Epoch},
		"odd headers":  {Status: 500, Headers: map[string]string{"": "", "x-empty": "", "x-colon": "a:b\r\n"}, Stored: Epoch},
		"large cost":   {Status: 200, Body: []byte("y"), Cost: policy.Money(9_000_000) * policy.NanosPerDollar, Stored: Epoch},
		"stored later": {Status: 200, Body: []byte("z"), Stored: Epoch.Add(123456789 * time.Microsecond)},
	} {
		t.Run(name, func(t *testing.T) {
			k := key("h-" + strings.ReplaceAll(name, " ", "-"))
			_, ok := get(t, c, k)
			require.False(t, ok, "nothing recorded yet")
			_, st := c.Begin(bg(), k, 0, longLease)
			require.Equal(t, respcache.Lead, st, "nothing recorded, nobody fetching: the caller leads")
			complete(t, c, k, e, time.Minute)
			got, ok := get(t, c, k)
			require.True(t, ok)
			same(t, e, got)
			got, st = c.Begin(bg(), k, 0, longLease)
			require.Equal(t, respcache.Found, st)
			same(t, e, got)
		})
	}
	assert.Positive(t, h.counter(t, "tollgate_cache_lookups_total", map[string]string{"kind": "response", "result": "hit"}))
}

func testStoredDefault(t *testing.T, h *harness) {
	c := h.one(t)
	h.clock.Advance(90 * time.Second)
	e := entry("body")
	e.Stored = time.Time{}
	complete(t, c, key("h1"), e, time.Minute)
	got, ok := get(t, c, key("h1"))
	require.True(t, ok)
	assert.Equal(t, h.clock.Now().UnixMicro(), got.Stored.UnixMicro(), "an entry without a time is stored now")
}

func testTTL(t *testing.T, h *harness) {
	c := h.one(t)
	complete(t, c, key("short"), entry("short"), time.Minute)
	complete(t, c, key("long"), entry("long"), time.Hour)
	h.clock.Advance(time.Minute - time.Millisecond)
	_, ok := get(t, c, key("short"))
	require.True(t, ok, "kept until its ttl")
	h.clock.Advance(time.Millisecond)
	_, ok = get(t, c, key("short"))
	require.False(t, ok, "gone at its ttl")
	_, st := c.Begin(bg(), key("short"), 0, longLease)
	assert.Equal(t, respcache.Lead, st, "an expired entry is nothing recorded")
	_, ok = get(t, c, key("long"))
	assert.True(t, ok, "another entry keeps its own ttl")
	h.clock.Advance(time.Hour)
	_, ok = get(t, c, key("long"))
	assert.False(t, ok)
}

func testReplace(t *testing.T, h *harness) {
	c := h.one(t)
	complete(t, c, key("h"), entry("first"), time.Minute)
	complete(t, c, key("h"), entry("second"), time.Hour)
	got, ok := get(t, c, key("h"))
	require.True(t, ok)
	assert.Equal(t, "second", string(got.Body))
	h.clock.Advance(2 * time.Minute)
	_, ok = get(t, c, key("h"))
	assert.True(t, ok, "the second ttl holds")
}

func testCompleteNoFlight(t *testing.T, h *harness) {
	c := h.one(t)
	complete(t, c, key("h"), entry("x"), time.Minute)
	c.Abandon(bg(), key("other")) // no flight: nothing happens
	got, ok := get(t, c, key("h"))
	require.True(t, ok)
	assert.Equal(t, "x", string(got.Body))
	_, st := c.Begin(bg(), key("other"), 0, longLease)
	assert.Equal(t, respcache.Lead, st)
}

func testSizeCap(t *testing.T, h *harness) {
	c := h.one(t)
	k := key("big")
	fits := entry("")
	fits.Body = []byte(strings.Repeat("a", MaxEntryBytes-int(respcache.Size(k, fits))))
	require.EqualValues(t, MaxEntryBytes, respcache.Size(k, fits))
	complete(t, c, k, fits, time.Minute)
	_, ok := get(t, c, k)
	require.True(t, ok, "an entry at the cap is kept")

	over := fits
	over.Body = append([]byte("b"), fits.Body...)
	err := c.Complete(bg(), k, over, time.Minute)
	require.ErrorIs(t, err, respcache.ErrTooLarge)
	got, ok := get(t, c, k)
	require.True(t, ok, "a refused entry leaves the one before")
	assert.Equal(t, fits.Body, got.Body)
	k2 := key("big2")
	require.ErrorIs(t, c.Complete(bg(), k2, over, time.Minute), respcache.ErrTooLarge)
	_, ok = get(t, c, k2)
	assert.False(t, ok, "a refused entry is not stored")
}

func testInvalid(t *testing.T, h *harness) {
	c := h.one(t)
	for name, tc := range map[string]struct {
		k   respcache.Key
		ttl time.Duration
	}{
		"no hash":      {k: respcache.Key{Scope: "s", Route: "r"}, ttl: time.Minute},
		"unknown kind": {k: respcache.Key{Kind: 7, Scope: "s", Route: "r", Hash: "h"}, ttl: time.Minute},
		"zero ttl":     {k: key("h"), ttl: 0},
		"negative ttl": {k: key("h"), ttl: -time.Second},
	} {
		t.Run(name, func(t *testing.T) {
			require.Error(t, c.Complete(bg(), tc.k, entry("x"), tc.ttl))
			_, ok := get(t, c, tc.k)
			assert.False(t, ok)
		})
	}
	_, err := c.Invalidate(bg(), respcache.Response, "", "")
	assert.ErrorIs(t, err, respcache.ErrNoScope)
}

// result is what one concurrent Begin got.
type result struct {
	e  respcache.Entry
	st respcache.State
}

// begins runs n Begins of k at once on the caches in turn; lead runs in
// the goroutine of each caller that leads.
func begins(ctx context.Context, cs []respcache.Cache, n int, k respcache.Key, wait, lease time.Duration, lead func(c respcache.Cache)) chan result {
	out := make(chan result, n)
	for i := range n {
		c := cs[i%len(cs)]
		go func() {
			e, st := c.Begin(ctx, k, wait, lease)
			if st == respcache.Lead && lead != nil {
				lead(c)
			}
			out <- result{e, st}
		}()
	}
	return out
}

// collect gathers n results, counting them by state.
func collect(t *testing.T, out chan result, n int) (map[respcache.State]int, []result) {
	t.Helper()
	counts := map[respcache.State]int{}
	var all []result
	timeout := time.After(60 * time.Second)
	for range n {
		select {
		case r := <-out:
			counts[r.st]++
			all = append(all, r)
		case <-timeout:
			require.FailNow(t, "Begin did not return", "got %v of %d", counts, n)
		}
	}
	return counts, all
}

func testWaitersFound(t *testing.T, h *harness) {
	c := h.one(t)
	k := key("flight")
	_, st := c.Begin(bg(), k, longWait, longLease)
	require.Equal(t, respcache.Lead, st)
	const n = 8
	out := begins(bg(), []respcache.Cache{c}, n, k, longWait, longLease, nil)
	h.awaitMisses(t, k.Kind, n+1)
	e := entry("the answer")
	complete(t, c, k, e, time.Minute)
	counts, all := collect(t, out, n)
	require.Equal(t, map[respcache.State]int{respcache.Found: n}, counts, "every waiter gets the leader's answer")
	for _, r := range all {
		same(t, e, r.e)
	}
	assert.Equal(t, n, h.waits(t, "found"))
}

func testAbandonPromotesOne(t *testing.T, h *harness) {
	c := h.one(t)
	k := key("flight")
	_, st := c.Begin(bg(), k, longWait, longLease)
	require.Equal(t, respcache.Lead, st)
	const n = 8
	e := entry("second try")
	out := begins(bg(), []respcache.Cache{c}, n, k, longWait, longLease, func(c respcache.Cache) {
		assert.NoError(t, c.Complete(bg(), k, e, time.Minute))
	})
	h.awaitMisses(t, k.Kind, n+1)
	c.Abandon(bg(), k)
	counts, all := collect(t, out, n)
	require.Equal(t, map[respcache.State]int{respcache.Lead: 1, respcache.Found: n - 1}, counts,
		"exactly one waiter leads; the others get its answer")
	for _, r := range all {
		if r.st == respcache.Found {
			same(t, e, r.e)
		}
	}
	assert.Equal(t, 1, h.waits(t, "led"))
	assert.Equal(t, n-1, h.waits(t, "found"))
}

func testLeaseLapses(t *testing.T, h *harness) {
	c := h.one(t)
	k := key("flight")
	_, st := c.Begin(bg(), k, longWait, shortLease)
	require.Equal(t, respcache.Lead, st, "a leader that will never finish")
	_, st = c.Begin(bg(), k, longWait, longLease)
	require.Equal(t, respcache.Lead, st, "its claim lapses, and the waiter leads")
	complete(t, c, k, entry("late"), time.Minute)
	_, st = c.Begin(bg(), k, 0, longLease)
	assert.Equal(t, respcache.Found, st)
}

func testBusy(t *testing.T, h *harness) {
	c := h.one(t)
	k := key("flight")
	_, st := c.Begin(bg(), k, longWait, longLease)
	require.Equal(t, respcache.Lead, st)
	for name, wait := range map[string]time.Duration{"no wait": 0, "short wait": 20 * time.Millisecond} {
		t.Run(name, func(t *testing.T) {
			_, st := c.Begin(bg(), k, wait, longLease)
			assert.Equal(t, respcache.Busy, st)
		})
	}
	assert.Equal(t, 2, h.waits(t, "busy"))
	complete(t, c, k, entry("x"), time.Minute)
	_, st = c.Begin(bg(), k, 0, longLease)
	assert.Equal(t, respcache.Found, st, "the leader still completes")
}

func testCancelledWait(t *testing.T, h *harness) {
	c := h.one(t)
	k := key("flight")
	_, st := c.Begin(bg(), k, longWait, longLease)
	require.Equal(t, respcache.Lead, st)
	ctx, cancel := context.WithCancel(bg())
	out := begins(ctx, []respcache.Cache{c}, 1, k, longWait, longLease, nil)
	h.awaitMisses(t, k.Kind, 2)
	cancel()
	counts, _ := collect(t, out, 1)
	assert.Equal(t, map[respcache.State]int{respcache.Busy: 1}, counts, "a waiter whose caller has gone gives up")
}

func testTooLargeWaiters(t *testing.T, h *harness) {
	c := h.one(t)
	k := key("flight")
	_, st := c.Begin(bg(), k, longWait, longLease)
	require.Equal(t, respcache.Lead, st)
	const n = 4
	out := begins(bg(), []respcache.Cache{c}, n, k, longWait, longLease, nil)
	h.awaitMisses(t, k.Kind, n+1)
	huge := entry(strings.Repeat("z", MaxEntryBytes))
	require.ErrorIs(t, c.Complete(bg(), k, huge, time.Minute), respcache.ErrTooLarge)
	counts, _ := collect(t, out, n)
	assert.Equal(t, map[respcache.State]int{respcache.Lead: n}, counts,
		"an answer that cannot be kept sends every waiter upstream at once")
}

func testKindsApart(t *testing.T, h *harness) {
	c := h.one(t)
	resp := key("same-hash")
	idem := resp
	idem.Kind = respcache.Idempotency
	complete(t, c, resp, entry("response"), time.Minute)
	_, ok := get(t, c, idem)
	require.False(t, ok, "a response is no idempotency record")
	_, st := c.Begin(bg(), idem, 0, longLease)
	require.Equal(t, respcache.Lead, st)
	_, st = c.Begin(bg(), resp, 0, longLease)
	require.Equal(t, respcache.Found, st)
	complete(t, c, idem, entry("record"), time.Minute)
	got, ok := get(t, c, resp)
	require.True(t, ok)
	assert.Equal(t, "response", string(got.Body))
	got, ok = get(t, c, idem)
	require.True(t, ok)
	assert.Equal(t, "record", string(got.Body))

	n, err := c.Invalidate(bg(), respcache.Response, resp.Scope, "")
	require.NoError(t, err)
	assert.Equal(t, 1, n)
	_, ok = get(t, c, idem)
	assert.True(t, ok, "invalidating responses keeps idempotency records")
	deleted, err := c.Delete(bg(), idem)
	require.NoError(t, err)
	assert.True(t, deleted)
	assert.Positive(t, h.counter(t, "tollgate_cache_lookups_total", map[string]string{"kind": "idempotency", "result": "hit"}),
		"idempotency lookups are counted as such")
}

// Names with the characters a key layout or a pattern could trip on.
var (
	scopes = []string{"team-a", "team-a:1:x", "t*[?]{b}\\", ""}
	routes = []string{"/v1/chat/completions", "chat:1:team-a", "r*?"}
)

func testInvalidate(t *testing.T, h *harness) {
	for name, tc := range map[string]struct {
		kind         respcache.Kind
		scope, route string
		dropped      func(scope, route string) bool
	}{
		"scope":         {scope: "team-a", dropped: func(s, _ string) bool { return s == "team-a" }},
		"odd scope":     {scope: "t*[?]{b}\\", dropped: func(s, _ string) bool { return s == "t*[?]{b}\\" }},
		"route":         {route: "chat:1:team-a", dropped: func(_, r string) bool { return r == "chat:1:team-a" }},
		"pattern route": {route: "r*?", dropped: func(_, r string) bool { return r == "r*?" }},
		"scope and route": {scope: "team-a:1:x", route: "/v1/chat/completions", dropped: func(s, r string) bool {
			return s == "team-a:1:x" && r == "/v1/chat/completions"
		}},
		"unknown scope":      {scope: "nobody", dropped: func(string, string) bool { return false }},
		"idempotency kind":   {kind: respcache.Idempotency, scope: "team-a", dropped: func(string, string) bool { return false }},
		"a prefix of a name": {scope: "team", dropped: func(string, string) bool { return false }},
	} {
		t.Run(name, func(t *testing.T) {
			c := h.one(t)
			var all []respcache.Key
			for _, s := range scopes {
				for _, r := range routes {
					for i := range 3 {
						k := respcache.Key{Kind: respcache.Response, Scope: s, Route: r, Hash: fmt.Sprintf("%064x", i)}
						complete(t, c, k, entry(s+r), time.Minute)
						all = append(all, k)
					}
				}
			}
			n, err := c.Invalidate(bg(), tc.kind, tc.scope, tc.route)
			require.NoError(t, err)
			want := 0
			for _, k := range all {
				_, ok := get(t, c, k)
				gone := tc.kind == respcache.Response && tc.dropped(k.Scope, k.Route)
				assert.Equal(t, !gone, ok, "scope %q route %q", k.Scope, k.Route)
				if gone {
					want++
				}
			}
			assert.Equal(t, want, n, "Invalidate says how many it dropped")
			n, err = c.Invalidate(bg(), tc.kind, tc.scope, tc.route)
			require.NoError(t, err)
			assert.Zero(t, n, "a second time drops nothing")
		})
	}
	t.Run("an entry written again after", func(t *testing.T) {
		c := h.one(t)
		k := key("again")
		complete(t, c, k, entry("one"), time.Minute)
		n, err := c.Invalidate(bg(), respcache.Response, k.Scope, k.Route)
		require.NoError(t, err)
		require.Equal(t, 1, n)
		complete(t, c, k, entry("two"), time.Minute)
		got, ok := get(t, c, k)
		require.True(t, ok)
		assert.Equal(t, "two", string(got.Body))
		n, err = c.Invalidate(bg(), respcache.Response, "", k.Route)
		require.NoError(t, err)
		assert.Equal(t, 1, n)
	})
}

func testDelete(t *testing.T, h *harness) {
	c := h.one(t)
	complete(t, c, key("h"), entry("x"), time.Minute)
	complete(t, c, key("g"), entry("y"), time.Minute)
	ok, err := c.Delete(bg(), key("h"))
	require.NoError(t, err)
	assert.True(t, ok)
	ok, err = c.Delete(bg(), key("h"))
	require.NoError(t, err)
	assert.False(t, ok, "nothing left to delete")
	_, found := get(t, c, key("h"))
	assert.False(t, found)
	_, found = get(t, c, key("g"))
	assert.True(t, found, "only the one entry goes")
	n, err := c.Invalidate(bg(), respcache.Response, "client-a", "")
	require.NoError(t, err)
	assert.Equal(t, 1, n, "a deleted entry is not counted again")
}

func testConcurrent(t *testing.T, h *harness) {
	cs := h.open(t, 2)
	var wg sync.WaitGroup
	for g := range 8 {
		wg.Go(func() {
			c := cs[g%2]
			for i := range 50 {
				k := key(fmt.Sprintf("k%d", i%5))
				e, st := c.Begin(bg(), k, longWait, longLease)
				switch st {
				case respcache.Lead:
					if i%3 == 0 {
						c.Abandon(bg(), k)
					} else {
						assert.NoError(t, c.Complete(bg(), k, entry(k.Hash), time.Minute))
					}
				case respcache.Found:
					assert.Equal(t, k.Hash, string(e.Body))
				}
				if i%10 == 0 {
					_, err := c.Delete(bg(), k)
					assert.NoError(t, err)
				}
				if e, ok := c.Get(bg(), k); ok {
					assert.Equal(t, k.Hash, string(e.Body))
				}
			}
		})
	}
	wg.Wait()
}

func testMembersShareEntries(t *testing.T, h *harness) {
	cs := h.open(t, 2)
	a, b := cs[0], cs[1]
	complete(t, a, key("h"), entry("from a"), time.Minute)
	got, ok := get(t, b, key("h"))
	require.True(t, ok, "a member finds another's entry")
	assert.Equal(t, "from a", string(got.Body))
	_, st := b.Begin(bg(), key("h"), 0, longLease)
	assert.Equal(t, respcache.Found, st)

	ok, err := b.Delete(bg(), key("h"))
	require.NoError(t, err)
	assert.True(t, ok)
	_, st = b.Begin(bg(), key("h"), 0, longLease)
	assert.Equal(t, respcache.Lead, st, "deleted for the member that deleted it")
}

func testMembersOneLeader(t *testing.T, h *harness) {
	cs := h.open(t, 2)
	k := key("flight")
	e := entry("fleet answer")
	const n = 10
	release := make(chan struct{})
	out := begins(bg(), cs, n, k, longWait, longLease, func(c respcache.Cache) {
		<-release
		assert.NoError(t, c.Complete(bg(), k, e, time.Minute))
	})
	h.awaitMisses(t, k.Kind, n)
	close(release)
	counts, all := collect(t, out, n)
	require.Equal(t, map[respcache.State]int{respcache.Lead: 1, respcache.Found: n - 1}, counts,
		"ten identical calls across two members: one goes upstream")
	for _, r := range all {
		if r.st == respcache.Found {
			same(t, e, r.e)
		}
	}
}

func testMembersAbandon(t *testing.T, h *harness) {
	cs := h.open(t, 2)
	a, b := cs[0], cs[1]
	k := key("flight")
	_, st := a.Begin(bg(), k, longWait, longLease)
	require.Equal(t, respcache.Lead, st)
	_, st = b.Begin(bg(), k, 0, longLease)
	require.Equal(t, respcache.Busy, st, "another member's flight is seen")
	out := begins(bg(), []respcache.Cache{b}, 1, k, longWait, longLease, nil)
	h.awaitMisses(t, k.Kind, 3)
	a.Abandon(bg(), k)
	counts, _ := collect(t, out, 1)
	assert.Equal(t, map[respcache.State]int{respcache.Lead: 1}, counts, "the waiting member leads once the first gives up")
}
