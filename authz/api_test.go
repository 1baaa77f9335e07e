package authz_test

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"google.golang.org/genproto/googleapis/rpc/code"

	"github.com/tollgate/tollgate/admission"
	"github.com/tollgate/tollgate/authz"
	"github.com/tollgate/tollgate/limiter"
)

// apiPolicy: one OpenAI route on a roomy request pool priced $0.0085 a
// call, so that a deferred hold (the conservative 120%) is $0.0102. acme ($1) sits under acme-group ($100); acme/marketing (the tier's
// $1000) under acme. defaults is extra lines for the defaults block.
func apiPolicy(defaults string) string {
	return fmt.Sprintf(`
defaults:
%s
pools:
  calls:
    unit: request
    capacity: 1000
    refill_per_second: 1000
    price: "0.0085"
routes:
  openai:
    host: api.openai.com
    path_prefix: /v1/
    provider: openai
    pools: [calls]
tiers:
  team:
    priority: 10
    max_concurrent: 5
    monthly_budget: "1000"
clients:
  acme-group:
    tier: team
    monthly_budget: "100"
  acme:
    tier: team
    parent: acme-group
    monthly_budget: "1"
  acme/marketing:
    tier: team
    parent: acme
`, defaults)
}

const expiredMetric = "tollgate_authz_reservations_expired_total"

// startDeferred is startServer on apiPolicy(defaults) with deferred
// settlement.
func startDeferred(tb testing.TB, defaults string) *testServer {
	tb.Helper()
	return startServer(tb, serverOpts{policy: apiPolicy(defaults), config: func(c *authz.Config) { c.Settlement = admission.SettleDeferred }})
}

// admit sends one check for client over gRPC, requires it allowed, and
// returns its reservation id.
func (ts *testServer) admit(tb testing.TB, client string) string {
	tb.Helper()
	resp, err := ts.auth.Check(context.Background(), chatCheck(client, chatBody("gpt-4o-mini", 16, "hi")))
	require.NoError(tb, err)
	require.Equal(tb, int32(code.Code_OK), resp.GetStatus().GetCode(), resp.GetDeniedResponse().GetBody())
	for _, h := range resp.GetOkResponse().GetHeaders() {
		if h.GetHeader().GetKey() == authz.HeaderReservation {
			return h.GetHeader().GetValue()
		}
	}
	tb.Fatalf("no %s header on the allowed check", authz.HeaderReservation)
	return ""
}

// post sends body to an admin path and returns status code and body.
func (ts *testServer) post(tb testing.TB, path, body string) (int, string) {
	tb.Helper()
	resp, err := ts.http.Post(ts.base+path, "application/json", strings.NewReader(body))
	require.NoError(tb, err)
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	require.NoError(tb, err)
	assert.Equal(tb, "application/json", resp.Header.Get("Content-Type"))
	return resp.StatusCode, string(b)
}

// usageOf GETs /api/usage/{client}, requires 200, and decodes the report.
func (ts *testServer) usageOf(tb testing.TB, escapedClient string) admission.UsageReport {
	tb.Helper()
	sc, body := ts.get(tb, "/api/usage/"+escapedClient)
	require.Equal(tb, http.StatusOK, sc, body)
	var rep admission.UsageReport
	require.NoError(tb, json.Unmarshal([]byte(body), &rep), body)
	return rep
}

// TestUsageAPI: a client's usage along its parent chain, money as decimal
// strings, calls in flight and the period.
func TestUsageAPI(t *testing.T) {
	ts := startDeferred(t, "  unknown_client: deny")
	for range 3 {
		ts.admit(t, "acme")
	}

	sc, body := ts.get(t, "/api/usage/acme")
	require.Equal(t, http.StatusOK, sc, body)
	// Money is a JSON string, never a number.
	var raw struct {
		Budgets []map[string]any `json:"budgets"`
	}
	require.NoError(t, json.Unmarshal([]byte(body), &raw), body)
	require.NotEmpty(t, raw.Budgets)
	assert.Equal(t, "0.0306", raw.Budgets[0]["reserved_usd"])

	rep := ts.usageOf(t, "acme")
	assert.Equal(t, "acme", rep.Client)
	assert.True(t, rep.Known)
	assert.Equal(t, "team", rep.Tier)
	assert.Equal(t, int64(3), rep.InFlight)
	assert.Equal(t, int64(5), rep.MaxConcurrent)
	assert.Regexp(t, `^\d{4}-(0[1-9]|1[0-2])$`, rep.Period)
	// The period ends at midnight UTC on the first of the next month.
	assert.Equal(t, rep.Period, rep.PeriodEnds.Add(-time.Nanosecond).UTC().Format("2006-01"))
	assert.Equal(t, 1, rep.PeriodEnds.Day())
	assert.Equal(t, []admission.UsageBudget{
		{Owner: "acme", Limit: "1", Spent: "0", Reserved: "0.0306", Remaining: "0.9694"},
		{Owner: "acme-group", Limit: "100", Spent: "0", Reserved: "0.0306", Remaining: "99.9694"},
	}, rep.Budgets)

	// A child's chain runs through acme; the slash in its id is escaped.
	ts.admit(t, "acme/marketing")
	rep = ts.usageOf(t, "acme%2Fmarketing")
	assert.Equal(t, "acme/marketing", rep.Client)
	assert.Equal(t, int64(1), rep.InFlight, "slots are the client's own")
	assert.Equal(t, []admission.UsageBudget{
		{Owner: "acme/marketing", Limit: "1000", Spent: "0", Reserved: "0.0102", Remaining: "999.9898"},
		{Owner: "acme", Limit: "1", Spent: "0", Reserved: "0.0408", Remaining: "0.9592"},
		{Owner: "acme-group", Limit: "100", Spent: "0", Reserved: "0.0408", Remaining: "99.9592"},
	}, rep.Budgets)
	requireLint(t, ts.reg)
}

// TestUsageAPIUnknownClient: an unknown client is 404 when the policy
// denies unknown clients, and reported under the default tier otherwise.
func TestUsageAPIUnknownClient(t *testing.T) {
	tests := map[string]struct {
		defaults   string
		wantStatus int
		wantBody   string
	}{
		"denied": {
			defaults: "  unknown_client: deny", wantStatus: http.StatusNotFound,
			wantBody: `{"error":"unknown client, and the policy denies unknown clients"}`,
		},
		"default tier": {
			defaults: "  unknown_client: team", wantStatus: http.StatusOK,
		},
	}
	for name, tc := range tests {
		t.Run(name, func(t *testing.T) {
			ts := startDeferred(t, tc.defaults)
			sc, body := ts.get(t, "/api/usage/stranger")
			require.Equal(t, tc.wantStatus, sc, body)
			if tc.wantBody != "" {
				assert.JSONEq(t, tc.wantBody, body)
				return
			}
			var rep admission.UsageReport
			require.NoError(t, json.Unmarshal([]byte(body), &rep), body)
			assert.False(t, rep.Known)
			assert.Equal(t, "team", rep.Tier)
			assert.Equal(t, []admission.UsageBudget{{Owner: "stranger", Limit: "1000", Spent: "0", Reserved: "0", Remaining: "1000"}}, rep.Budgets)
		})
	}
}

// TestSettleAPI: settle and release end a reservation once; repeats are
// answered with the first outcome and change nothing.
func TestSettleAPI(t *testing.T) {
	ts := startDeferred(t, "  unknown_client: deny")
	id := ts.admit(t, "acme")

	settle := func(id, body string) (int, authz.SettleReply) {
		t.Helper()
		sc, b := ts.post(t, "/api/reservations/"+id+"/settle", body)
		var r authz.SettleReply
		if sc == http.StatusOK {
			require.NoError(t, json.Unmarshal([]byte(b), &r), b)
		}
		return sc, r
	}

	sc, r := settle(id, `{"actual_cost_usd":"0.0012"}`)
	require.Equal(t, http.StatusOK, sc)
	assert.Equal(t, authz.SettleReply{ID: id, Outcome: "settled", Estimated: "0.0102", Spent: "0.0012", Repeat: false}, r)

	sc, r = settle(id, `{"actual_cost_usd":"5"}`)
	require.Equal(t, http.StatusOK, sc)
	assert.Equal(t, authz.SettleReply{ID: id, Outcome: "settled", Estimated: "0.0102", Spent: "0.0012", Repeat: true}, r,
		"a repeat keeps the first settlement")

	sc, body := ts.post(t, "/api/reservations/"+id+"/release", "")
	require.Equal(t, http.StatusOK, sc, body)
	assert.JSONEq(t, fmt.Sprintf(`{"id":%q,"outcome":"settled","estimated_usd":"0.0102","spent_usd":"0.0012","repeat":true}`, id), body,
		"a release after a settle changes nothing")

	rep := ts.usageOf(t, "acme")
	assert.Zero(t, rep.InFlight)
	assert.Equal(t, admission.UsageBudget{Owner: "acme", Limit: "1", Spent: "0.0012", Reserved: "0", Remaining: "0.9988"}, rep.Budgets[0])

	// Spending more than the estimate is charged in full.
	id2 := ts.admit(t, "acme")
	sc, r = settle(id2, `{"actual_cost_usd":"0.5"}`)
	require.Equal(t, http.StatusOK, sc)
	assert.Equal(t, "0.5", r.Spent)
	assert.Equal(t, "0.5012", ts.usageOf(t, "acme").Budgets[0].Spent)

	// A release returns everything.
	id3 := ts.admit(t, "acme")
	sc, body = ts.post(t, "/api/reservations/"+id3+"/release", "")
	require.Equal(t, http.StatusOK, sc, body)
	assert.JSONEq(t, fmt.Sprintf(`{"id":%q,"outcome":"released","estimated_usd":"0.0102","spent_usd":"0","repeat":false}`, id3), body)
	rep = ts.usageOf(t, "acme")
	assert.Zero(t, rep.InFlight)
	assert.Equal(t, admission.UsageBudget{Owner: "acme", Limit: "1", Spent: "0.5012", Reserved: "0", Remaining: "0.4988"}, rep.Budgets[0])
}

// TestSettleAPIUnknownReservation: ending an id that was never held is 404.
func TestSettleAPIUnknownReservation(t *testing.T) {
	ts := startDeferred(t, "")
	const unknown = "00000000000000000000000000000000"
	tests := map[string]struct{ path, body string }{
		"release": {path: "/api/reservations/" + unknown + "/release"},
		"settle":  {path: "/api/reservations/" + unknown + "/settle", body: `{"actual_cost_usd":"0.0012"}`},
	}
	for name, tc := range tests {
		t.Run(name, func(t *testing.T) {
			sc, body := ts.post(t, tc.path, tc.body)
			assert.Equal(t, http.StatusNotFound, sc)
			var e struct{ Error string }
			require.NoError(t, json.Unmarshal([]byte(body), &e), body)
			assert.Contains(t, e.Error, "unknown reservation")
			assert.Contains(t, e.Error, unknown)
		})
	}
}

// TestSettleAPIBadBody: a settle whose cost is not a non-negative decimal
// string is refused with 400 and leaves the reservation as it was.
func TestSettleAPIBadBody(t *testing.T) {
	ts := startDeferred(t, "")
	id := ts.admit(t, "acme")
	tests := map[string]string{
		"not JSON":                    `actual_cost_usd=0.0012`,
		"empty body":                  ``,
		"a JSON number, not a string": `{"actual_cost_usd":0.0012}`,
		"negative":                    `{"actual_cost_usd":"-0.0012"}`,
		"finer than a nano-dollar":    `{"actual_cost_usd":"0.0000000001"}`,
		"not an amount":               `{"actual_cost_usd":"cheap"}`,
		"missing":                     `{}`,
		"misnamed":                    `{"actual_cost":"0.0012"}`,
		"trailing garbage":            `{"actual_cost_usd":"0.0012"} and more`,
	}
	for name, body := range tests {
		t.Run(name, func(t *testing.T) {
			sc, reply := ts.post(t, "/api/reservations/"+id+"/settle", body)
			assert.Equal(t, http.StatusBadRequest, sc, reply)
			var e struct{ Error string }
			require.NoError(t, json.Unmarshal([]byte(reply), &e), reply)
			assert.Contains(t, e.Error, "actual_cost_usd")
		})
	}
	rep := ts.usageOf(t, "acme")
	assert.Equal(t, int64(1), rep.InFlight, "still held")
	assert.Equal(t, admission.UsageBudget{Owner: "acme", Limit: "1", Spent: "0", Reserved: "0.0102", Remaining: "0.9898"}, rep.Budgets[0])
}

// TestExpiryLoop: a reservation never settled is committed at its estimate
// once its TTL lapses, by the server's own loop, and counted. The loop runs
// on real time, so the store does too.
func TestExpiryLoop(t *testing.T) {
	ts := startServer(t, serverOpts{
		policy: apiPolicy("  reservation_ttl: 1s"),
		store:  newMemStore(t, limiter.SystemClock{}),
		config: func(c *authz.Config) { c.Settlement, c.ExpireEvery = admission.SettleDeferred, 10*time.Millisecond },
	})
	id := ts.admit(t, "acme")

	require.EventuallyWithT(t, func(c *assert.CollectT) {
		assert.NoError(c, testutil.GatherAndCompare(ts.reg, strings.NewReader(`
# HELP tollgate_authz_reservations_expired_total Reservations never settled, committed at their estimate after their TTL.
# TYPE tollgate_authz_reservations_expired_total counter
tollgate_authz_reservations_expired_total 1
`), expiredMetric))
	}, 30*time.Second, 10*time.Millisecond)

	rep := ts.usageOf(t, "acme")
	assert.Zero(t, rep.InFlight)
	assert.Equal(t, []admission.UsageBudget{
		{Owner: "acme", Limit: "1", Spent: "0.0102", Reserved: "0", Remaining: "0.9898"},
		{Owner: "acme-group", Limit: "100", Spent: "0.0102", Reserved: "0", Remaining: "99.9898"},
	}, rep.Budgets)

	// A late settle learns what happened and changes nothing.
	sc, body := ts.post(t, "/api/reservations/"+id+"/settle", `{"actual_cost_usd":"0.0001"}`)
	require.Equal(t, http.StatusOK, sc, body)
	assert.JSONEq(t, fmt.Sprintf(`{"id":%q,"outcome":"expired","estimated_usd":"0.0102","spent_usd":"0.0102","repeat":true}`, id), body)
	assert.Equal(t, 1.0, metricValue(t, ts.reg, expiredMetric, nil))
	requireLint(t, ts.reg)
}

// TestAPIStoreDown: a store that cannot answer gives the API clear errors
// rather than wrong numbers. (A store without a ledger can no longer be
// wired at all: admission.Store requires one, so that case fails to
// compile instead of answering 501 at run time.)
func TestAPIStoreDown(t *testing.T) {
	ts := startServer(t, serverOpts{policy: apiPolicy(""), store: failingStore{err: errStoreDown}})
	sc, body := ts.get(t, "/api/usage/acme")
	assert.Equal(t, http.StatusServiceUnavailable, sc)
	assert.JSONEq(t, `{"error":"store unreachable"}`, body)
	sc, body = ts.post(t, "/api/reservations/abc/settle", `{"actual_cost_usd":"0.0012"}`)
	assert.Equal(t, http.StatusServiceUnavailable, sc)
	assert.JSONEq(t, `{"error":"store unreachable"}`, body)
}

// TestReadyzChecks: /readyz runs every dependency check, each under a
// deadline, and reports a failing one by name with its error text; a
// degraded component (a report, or a check's *DegradedError) is reported
// without failing it.
func TestReadyzChecks(t *testing.T) {
	refused := errors.New("dial tcp 127.0.0.1:6379: connect: connection refused")
	ok := func(ctx context.Context) error {
		if _, has := ctx.Deadline(); !has {
			return errors.New("the check has no deadline")
		}
		return nil
	}
	failing := func(context.Context) error { return refused }
	tests := map[string]struct {
		checks     map[string]func(context.Context) error
		degraded   map[string]func() string
		wantStatus int
		wantBody   string
	}{
		"no checks": {
			wantStatus: http.StatusOK,
			wantBody:   `{"ready":true,"degraded":false,"components":{"policy":"ok","server":"ok"}}`,
		},
		"a passing check": {
			checks:     map[string]func(context.Context) error{"redis": ok},
			wantStatus: http.StatusOK,
			wantBody:   `{"ready":true,"degraded":false,"components":{"policy":"ok","server":"ok","redis":"ok"}}`,
		},
		"a failing check": {
			checks:     map[string]func(context.Context) error{"redis": failing},
			wantStatus: http.StatusServiceUnavailable,
			wantBody:   `{"ready":false,"degraded":false,"components":{"policy":"ok","server":"ok","redis":"dial tcp 127.0.0.1:6379: connect: connection refused"}}`,
		},
		"one failing of two": {
			checks:     map[string]func(context.Context) error{"redis": failing, "policy-store": ok},
			wantStatus: http.StatusServiceUnavailable,
			wantBody:   `{"ready":false,"degraded":false,"components":{"policy":"ok","server":"ok","policy-store":"ok","redis":"dial tcp 127.0.0.1:6379: connect: connection refused"}}`,
		},
		"degraded but ready": {
			degraded:   map[string]func() string{"cluster": func() string { return "outage: deciding on 1/3 shares" }},
			wantStatus: http.StatusOK,
			wantBody:   `{"ready":true,"degraded":true,"components":{"policy":"ok","server":"ok","cluster":"outage: deciding on 1/3 shares"}}`,
		},
		"a check that reports degraded": {
			checks: map[string]func(context.Context) error{"redis": func(context.Context) error {
				return fmt.Errorf("probe: %w", &authz.DegradedError{Reason: "unreachable since 2026-12-06T12:00:00Z (3 failed probes): connection refused"})
			}},
			wantStatus: http.StatusOK,
			wantBody:   `{"ready":true,"degraded":true,"components":{"policy":"ok","server":"ok","redis":"unreachable since 2026-12-06T12:00:00Z (3 failed probes): connection refused"}}`,
		},
		"not degraded": {
			degraded:   map[string]func() string{"cluster": func() string { return "" }},
			wantStatus: http.StatusOK,
			wantBody:   `{"ready":true,"degraded":false,"components":{"policy":"ok","server":"ok","cluster":"ok"}}`,
		},
	}
	for name, tc := range tests {
		t.Run(name, func(t *testing.T) {
			cfg := authz.DefaultConfig()
			cfg.GRPCAddr, cfg.HTTPAddr, cfg.APIAddr, cfg.DrainDelay = "127.0.0.1:0", "127.0.0.1:0", "127.0.0.1:0", 0
			srv, err := authz.New(cfg, authz.Deps{
				Policies: admission.StaticPolicy{Set: compilePolicy(t, serverPolicy)},
				Store:    newMemStore(t, limiter.SystemClock{}),
				Registry: prometheus.NewRegistry(),
				Checks:   tc.checks,
				Degraded: tc.degraded,
			})
			require.NoError(t, err)
			served := make(chan error, 1)
			go func() { served <- srv.Serve(context.Background()) }()
			defer func() {
				assert.NoError(t, srv.Shutdown(context.Background()))
				assert.NoError(t, recv(t, served))
			}()

			ts := &testServer{srv: srv, base: "http://" + srv.HTTPAddr().String(), http: apiClient(srv, "")}
			sc, body := ts.get(t, "/readyz")
			assert.Equal(t, tc.wantStatus, sc)
			assert.JSONEq(t, tc.wantBody, body)
		})
	}
}
