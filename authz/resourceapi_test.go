package authz_test

import (
	"context"
	"encoding/json"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus/testutil"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"google.golang.org/genproto/googleapis/rpc/code"

	"github.com/tollgate/tollgate/admission"
	"github.com/tollgate/tollgate/authz"
	"github.com/tollgate/tollgate/internal/fakeclock"
)

// resourcePolicy: a chat route that may wait (normal), a rows pool for
// work outside Envoy, and one named client.
const resourcePolicy = `
defaults:
  unknown_client: deny
pools:
  gpt-4:
    unit: token
    capacity: 300
    refill_per_second: 100
    price: "0.03/1K"
  rows:
    unit: request
    capacity: 300
    refill_per_second: 1
    price: "0.0001/1"
routes:
  openai:
    host: api.openai.com
    path_prefix: /v1/
    provider: openai
    pools: [gpt-4]
    class: normal
tiers:
  basic:
    priority: 10
    max_concurrent: 5
clients:
  acme:
    tier: basic
    monthly_budget: "10"
`

// resourceStores are the stores the resource API runs over.
var resourceStores = map[string]func(tb testing.TB, clk *fakeclock.Clock) admission.Store{
	"memory": func(tb testing.TB, clk *fakeclock.Clock) admission.Store { return newMemStore(tb, clk) },
	"redis":  func(tb testing.TB, _ *fakeclock.Clock) admission.Store { return newRedisStore(tb) },
}

func startResource(t *testing.T, newStore func(testing.TB, *fakeclock.Clock) admission.Store, tune func(*authz.Config)) *testServer {
	t.Helper()
	clk := fakeclock.New(epoch)
	return startServer(t, serverOpts{policy: resourcePolicy, clk: clk, store: newStore(t, clk), config: func(c *authz.Config) {
		c.Settlement = admission.SettleDeferred
		if tune != nil {
			tune(c)
		}
	}})
}

func availabilityOf(t *testing.T, ts *testServer, client string) admission.Availability {
	t.Helper()
	path := "/api/resources/availability"
	if client != "" {
		path += "?client=" + client
	}
	sc, body := ts.get(t, path)
	return decodeAs[admission.Availability](t, sc, body)
}

func poolLeft(t *testing.T, av admission.Availability, pool string) int64 {
	t.Helper()
	for _, p := range av.Pools {
		if p.Pool == pool {
			return p.Remaining
		}
	}
	t.Fatalf("no pool %s in %+v", pool, av.Pools)
	return 0
}

// TestHealthAlias: GET /health answers as /healthz, with no token, on the
// health listener.
func TestHealthAlias(t *testing.T) {
	ts := startServer(t, serverOpts{})
	sc, body := ts.get(t, "/health")
	assert.Equal(t, http.StatusOK, sc)
	assert.Equal(t, "ok\n", body)
}

// TestStatusAPI: GET /status reports version, store, policy revision,
// queue per class, scheduler state and pools.
func TestStatusAPI(t *testing.T) {
	for name, newStore := range resourceStores {
		t.Run(name, func(t *testing.T) {
			ts := startResource(t, newStore, func(c *authz.Config) { c.Version = "v1.2.3" })
			sc, body := ts.get(t, "/status")
			rep := decodeAs[authz.StatusReply](t, sc, body)
			assert.Equal(t, "v1.2.3", rep.Version)
			assert.Equal(t, name, rep.Store)
			assert.Equal(t, "deferred", rep.Settlement)
			assert.Len(t, rep.Policy.Revision, 12)
			assert.Equal(t, map[string]int{"immediate": 0, "fast": 0, "normal": 0, "batch": 0, "deferred": 0}, rep.Queue)
			assert.False(t, rep.SchedulerStopped)
			require.Len(t, rep.Pools, 2)
			assert.Equal(t, "gpt-4", rep.Pools[0].Pool)
			assert.Equal(t, int64(300), rep.Pools[0].Remaining)
		})
	}
}

// TestAvailabilityAPI: units left per pool, and a client's budgets and
// slots; an unknown client is 404.
func TestAvailabilityAPI(t *testing.T) {
	for name, newStore := range resourceStores {
		t.Run(name, func(t *testing.T) {
			ts := startResource(t, newStore, nil)
			av := availabilityOf(t, ts, "")
			assert.Equal(t, int64(300), poolLeft(t, av, "rows"))
			assert.Equal(t, "request", av.Pools[1].Unit)
			assert.Empty(t, av.Client)

			sc, body := ts.postJSON(t, "/internal/reserve", `{"client": "acme", "pool": "rows", "units": 100}`)
			require.Equal(t, http.StatusOK, sc, body)
			av = availabilityOf(t, ts, "acme")
			assert.Equal(t, int64(200), poolLeft(t, av, "rows"))
			assert.Equal(t, "acme", av.Client)
			require.NotNil(t, av.SlotsLeft)
			assert.Equal(t, int64(4), *av.SlotsLeft, "the reservation holds one of five slots")
			require.Len(t, av.Budgets, 1)
			assert.Equal(t, "9.99", av.Budgets[0].Remaining, "100 rows at $0.0001 held")

			sc, _ = ts.get(t, "/api/resources/availability?client=nobody")
			assert.Equal(t, http.StatusNotFound, sc)
		})
	}
}

// TestCheckAPI: the dry run answers admit, hold or refuse, and changes
// nothing: no units, no budget, no slot, no queue entry.
func TestCheckAPI(t *testing.T) {
	chat := func(maxTokens int, class string) string {
		return `{"client": "acme", "url": "https://api.openai.com/v1/chat/completions", "class": "` + class + `",
			"body": {"model": "gpt-4", "max_tokens": ` + strings.TrimSpace(itoa(maxTokens)) + `, "messages": [{"role": "user", "content": "hi"}]}}`
	}
	for name, newStore := range resourceStores {
		t.Run(name, func(t *testing.T) {
			ts := startResource(t, newStore, nil)
			check := func(body string) admission.CheckResult {
				t.Helper()
				sc, b := ts.postJSON(t, "/api/resources/check", body)
				return decodeAs[admission.CheckResult](t, sc, b)
			}
			for range 3 {
				res := check(chat(100, "normal"))
				assert.Equal(t, admission.CheckAdmit, res.Answer)
				assert.Equal(t, "openai", res.Route)
				assert.Equal(t, "normal", res.Class)
				assert.NotEmpty(t, res.EstimatedCost)
			}
			res := check(`{"client": "acme", "route": "openai", "model": "gpt-4", "max_tokens": 100}`)
			assert.Equal(t, admission.CheckAdmit, res.Answer, "model and max_tokens instead of a body")
			av := availabilityOf(t, ts, "acme")
			assert.Equal(t, int64(300), poolLeft(t, av, "gpt-4"), "checks took nothing")
			assert.Equal(t, "0", av.Budgets[0].Reserved)
			assert.Equal(t, int64(0), *av.InFlight)

			res = check(chat(5000, "normal"))
			assert.Equal(t, admission.CheckRefuse, res.Answer)
			assert.Equal(t, "exceeds_capacity", res.Reason)

			// Drain the pool: a call that may wait is held, an immediate one refused.
			sc, body := ts.postJSON(t, "/internal/reserve", `{"client": "acme", "pool": "gpt-4", "units": 300}`)
			require.Equal(t, http.StatusOK, sc, body)
			res = check(chat(100, "normal"))
			assert.Equal(t, admission.CheckHold, res.Answer)
			assert.Equal(t, "rate_limited", res.Reason)
			assert.Positive(t, res.EstimatedWait)
			assert.Equal(t, "pool gpt-4", res.Queue)
			res = check(chat(100, "immediate"))
			assert.Equal(t, admission.CheckRefuse, res.Answer)
			assert.Equal(t, "rate_limited", res.Reason)
			assert.Positive(t, res.RetryAfter)
			sc, body = ts.get(t, "/api/queue")
			require.Equal(t, http.StatusOK, sc)
			assert.JSONEq(t, `{"held": []}`, body, "a check never queues")

			res = check(`{"client": "stranger", "url": "https://api.openai.com/v1/chat/completions"}`)
			assert.Equal(t, admission.CheckRefuse, res.Answer)
			assert.Equal(t, admission.ReasonUnknownClient, res.Reason)
		})
	}
}

func itoa(n int) string { b, _ := json.Marshal(n); return string(b) }

// TestEstimateAliases: the seed's estimate endpoints answer as
// POST /api/estimate.
func TestEstimateAliases(t *testing.T) {
	ts := startResource(t, resourceStores["memory"], nil)
	body := `{"model": "gpt-4", "max_tokens": 50, "messages": [{"role": "user", "content": "hello"}]}`
	sc, want := ts.postJSON(t, "/api/estimate?url=https://api.openai.com/v1/chat/completions", body)
	require.Equal(t, http.StatusOK, sc, want)
	for _, path := range []string{"/api/resources/estimate", "/api/cost/estimate"} {
		sc, got := ts.postJSON(t, path+"?url=https://api.openai.com/v1/chat/completions", body)
		assert.Equal(t, http.StatusOK, sc, path)
		assert.JSONEq(t, want, got, path)
	}
}

// TestInternalReservations: reserve units for work outside Envoy, consume
// at its real cost (unused units back), release another; clients the
// policy does not name are refused, as is a pinned sidecar's other client.
func TestInternalReservations(t *testing.T) {
	for name, newStore := range resourceStores {
		t.Run(name, func(t *testing.T) {
			ts := startResource(t, newStore, nil)
			sc, body := ts.postJSON(t, "/internal/reserve", `{"client": "acme", "pool": "rows", "units": 100, "estimate_usd": "0.02"}`)
			res := decodeAs[admission.DirectReservation](t, sc, body)
			require.True(t, res.Allowed)
			require.NotEmpty(t, res.ID)
			assert.Equal(t, "0.02", res.Held)
			assert.Equal(t, int64(200), poolLeft(t, availabilityOf(t, ts, ""), "rows"))

			sc, body = ts.postJSON(t, "/internal/consume", `{"reservation_id": "`+res.ID+`", "actual_cost_usd": "0.004", "used_units": {"rows": 40}}`)
			st := decodeAs[authz.SettleReply](t, sc, body)
			assert.Equal(t, "settled", st.Outcome)
			assert.Equal(t, "0.004", st.Spent)
			assert.Equal(t, int64(260), poolLeft(t, availabilityOf(t, ts, ""), "rows"), "60 unused rows back")
			u := ts.usageOf(t, "acme")
			assert.Equal(t, "0.004", u.Budgets[0].Spent)
			assert.Equal(t, "0", u.Budgets[0].Reserved)

			sc, body = ts.postJSON(t, "/internal/reserve", `{"client": "acme", "route": "openai", "units": 10}`)
			res = decodeAs[admission.DirectReservation](t, sc, body)
			sc, body = ts.postJSON(t, "/internal/release", `{"reservation_id": "`+res.ID+`"}`)
			assert.Equal(t, "released", decodeAs[authz.SettleReply](t, sc, body).Outcome)
			sc, _ = ts.postJSON(t, "/internal/release", `{"reservation_id": "no-such-id"}`)
			assert.Equal(t, http.StatusNotFound, sc)

			for body, want := range map[string]int{
				`{"client": "stranger", "pool": "rows", "units": 1}`:                   http.StatusForbidden,
				`{"client": "acme", "pool": "nope", "units": 1}`:                       http.StatusBadRequest,
				`{"client": "acme", "pool": "rows", "units": 301}`:                     http.StatusBadRequest,
				`{"client": "acme", "pool": "rows", "route": "openai"}`:                http.StatusBadRequest,
				`{"client": "acme", "pool": "rows", "units": 1, "estimate_usd": "11"}`: http.StatusTooManyRequests,
			} {
				sc, b := ts.postJSON(t, "/internal/reserve", body)
				assert.Equal(t, want, sc, "%s: %s", body, b)
			}
		})
	}
	t.Run("pinned", func(t *testing.T) {
		ts := startResource(t, resourceStores["memory"], func(c *authz.Config) { c.Client = "other" })
		sc, body := ts.postJSON(t, "/internal/reserve", `{"client": "acme", "pool": "rows", "units": 1}`)
		assert.Equal(t, http.StatusForbidden, sc, body)
		sc, body = ts.postJSON(t, "/internal/release", `{"reservation_id": "someone-elses"}`)
		assert.Equal(t, http.StatusForbidden, sc, body)
		// Nor through the older reservation endpoints, nor reading another
		// client's data.
		sc, body = ts.postJSON(t, "/api/reservations/someone-elses/settle", `{"actual_cost_usd": "0"}`)
		assert.Equal(t, http.StatusForbidden, sc, body)
		sc, body = ts.postJSON(t, "/api/reservations/someone-elses/release", "")
		assert.Equal(t, http.StatusForbidden, sc, body)
		for _, path := range []string{"/api/usage/acme", "/api/usage/acme/current", "/api/resources/availability?client=acme",
			"/api/optimize/stats/acme", "/api/optimize/recommendations/acme"} {
			sc, body = ts.get(t, path)
			assert.Equal(t, http.StatusForbidden, sc, "%s: %s", path, body)
		}
	})
}

// TestDirectDedicatedPool: a direct reservation cannot name another
// client's dedicated pool, and one by route takes the client's dedicated
// pool as an admission through Envoy would; the dry run says the same.
func TestDirectDedicatedPool(t *testing.T) {
	policy := strings.Replace(resourcePolicy, "pools:\n", `pools:
  gpt-4-acme:
    unit: token
    capacity: 50
    refill_per_second: 1
    price: "0.03/1K"
    dedicated: {client: acme, instead_of: gpt-4}
`, 1) + `  globex:
    tier: basic
`
	ts := startServer(t, serverOpts{policy: policy, clk: fakeclock.New(epoch), config: func(c *authz.Config) { c.Settlement = admission.SettleDeferred }})
	sc, body := ts.postJSON(t, "/internal/reserve", `{"client": "globex", "pool": "gpt-4-acme", "units": 5}`)
	assert.Equal(t, http.StatusBadRequest, sc, body)
	assert.Contains(t, body, "dedicated to another client")
	sc, body = ts.postJSON(t, "/internal/reserve", `{"client": "acme", "pool": "gpt-4-acme", "units": 5}`)
	assert.Equal(t, http.StatusOK, sc, body)
	sc, body = ts.postJSON(t, "/internal/reserve", `{"client": "acme", "route": "openai", "units": 5}`)
	require.Equal(t, http.StatusOK, sc, body)
	assert.Contains(t, body, `"pool": "gpt-4-acme"`)
	sc, body = ts.postJSON(t, "/api/resources/check", `{"client": "acme", "url": "https://api.openai.com/v1/chat/completions", "method": "POST", "body": {"model": "gpt-4o", "max_tokens": 10, "messages": [{"role": "user", "content": "hi"}]}}`)
	require.Equal(t, http.StatusOK, sc, body)
	assert.Contains(t, body, `"pool": "gpt-4-acme"`)
}

// TestSchedulerStopStart: the scheduler's state in /status and its gauge.
func TestSchedulerStopStart(t *testing.T) {
	ts := startResource(t, resourceStores["memory"], nil)
	gauge := func() float64 {
		mfs, err := ts.reg.Gather()
		require.NoError(t, err)
		for _, mf := range mfs {
			if mf.GetName() == "tollgate_queue_scheduler_stopped" {
				return mf.GetMetric()[0].GetGauge().GetValue()
			}
		}
		t.Fatal("no scheduler gauge")
		return 0
	}
	sc, body := ts.postJSON(t, "/admin/scheduler/stop", "")
	require.Equal(t, http.StatusOK, sc, body)
	assert.JSONEq(t, `{"scheduler": "stopped"}`, body)
	sc, body = ts.get(t, "/status")
	assert.True(t, decodeAs[authz.StatusReply](t, sc, body).SchedulerStopped)
	assert.Equal(t, 1.0, gauge())
	sc, body = ts.postJSON(t, "/admin/scheduler/start", "")
	require.Equal(t, http.StatusOK, sc, body)
	sc, body = ts.get(t, "/status")
	assert.False(t, decodeAs[authz.StatusReply](t, sc, body).SchedulerStopped)
	assert.Equal(t, 0.0, gauge())
	_ = testutil.ToFloat64 // the registry is read by Gather above
}

// TestResourceAPINeedsToken: every new endpoint on the API listener is
// refused without the token.
func TestResourceAPINeedsToken(t *testing.T) {
	ts := startResource(t, resourceStores["memory"], nil)
	anon := apiClient(ts.srv, "")
	for _, ep := range []struct{ method, path string }{
		{"GET", "/status"}, {"GET", "/api/resources/availability"}, {"POST", "/api/resources/check"},
		{"POST", "/api/resources/estimate"}, {"POST", "/api/cost/estimate"}, {"POST", "/internal/reserve"},
		{"POST", "/internal/release"}, {"POST", "/internal/consume"}, {"POST", "/admin/scheduler/stop"},
		{"POST", "/admin/scheduler/start"}, {"GET", "/api/usage/acme"}, {"GET", "/api/usage/acme/current"},
		{"GET", "/api/cost/req-1"}, {"GET", "/api/queue"},
	} {
		req, err := http.NewRequest(ep.method, "http://"+ts.srv.APIAddr().String()+ep.path, strings.NewReader("{}"))
		require.NoError(t, err)
		resp, err := anon.Do(req)
		require.NoError(t, err)
		resp.Body.Close()
		assert.Equal(t, http.StatusUnauthorized, resp.StatusCode, ep.path)
	}
}

// TestResourceAPIBadJSON: a body that is not the request gets a 400 that
// says what the body must be.
func TestResourceAPIBadJSON(t *testing.T) {
	ts := startResource(t, resourceStores["memory"], nil)
	for path, want := range map[string]string{
		"/api/resources/check": `the body must be {"client"`,
		"/internal/reserve":    `the body must be {"client"`,
		"/internal/consume":    `the body must be {"reservation_id"`,
		"/internal/release":    `the body must be {"reservation_id"`,
	} {
		for _, bad := range []string{`{bad`, `{"client": "acme", "extra": 1}`, `[]`, `{} {}`} {
			sc, body := ts.postJSON(t, path, bad)
			assert.Equal(t, http.StatusBadRequest, sc, "%s %s", path, bad)
			var e struct{ Error string }
			require.NoError(t, json.Unmarshal([]byte(body), &e), body)
			if !strings.HasPrefix(path, "/api/resources/check") || bad != `{} {}` {
				assert.Contains(t, e.Error, want, "%s %s", path, bad)
			}
		}
	}
}

// TestSchedulerStopHoldsCalls: with the scheduler stopped a call that
// must wait is held, and stays held when capacity comes back; start lets
// it go.
func TestSchedulerStopHoldsCalls(t *testing.T) {
	ts := startResource(t, resourceStores["memory"], nil)
	sc, body := ts.postJSON(t, "/internal/reserve", `{"client": "acme", "pool": "gpt-4", "units": 300}`)
	res := decodeAs[admission.DirectReservation](t, sc, body)
	sc, body = ts.postJSON(t, "/admin/scheduler/stop", "")
	require.Equal(t, http.StatusOK, sc, body)

	answered := make(chan string, 1)
	go func() {
		resp, err := ts.auth.Check(context.Background(), chatCheck("acme", chatBody("gpt-4", 16, "hi")))
		if err != nil {
			answered <- err.Error()
			return
		}
		answered <- code.Code(resp.GetStatus().GetCode()).String()
	}()
	held := func() bool {
		sc, body, err := ts.tryGet("/api/queue")
		return err == nil && sc == http.StatusOK && strings.Contains(body, `"client": "acme"`)
	}
	require.Eventually(t, held, 10*time.Second, time.Millisecond, "the call is held")
	sc, body = ts.postJSON(t, "/api/resources/check", `{"client": "acme", "route": "openai", "model": "gpt-4", "max_tokens": 16}`)
	chk := decodeAs[admission.CheckResult](t, sc, body)
	assert.Equal(t, admission.CheckHold, chk.Answer, "behind the held call")
	assert.Equal(t, "scheduler_stopped", chk.Reason)
	assert.Equal(t, 1, chk.QueueDepth)
	// Capacity back: every unit of the reservation returned.
	sc, body = ts.postJSON(t, "/internal/consume", `{"reservation_id": "`+res.ID+`", "actual_cost_usd": "0", "used_units": {"gpt-4": 0}}`)
	require.Equal(t, http.StatusOK, sc, body)
	require.Equal(t, int64(300), poolLeft(t, availabilityOf(t, ts, ""), "gpt-4"))
	assert.True(t, held(), "still held while stopped")
	select {
	case a := <-answered:
		t.Fatalf("answered while stopped: %s", a)
	default:
	}
	sc, body = ts.postJSON(t, "/admin/scheduler/start", "")
	require.Equal(t, http.StatusOK, sc, body)
	select {
	case a := <-answered:
		assert.Equal(t, "OK", a)
	case <-time.After(10 * time.Second):
		t.Fatal("not let go after start")
	}
}
