package authz_test

import (
	"context"
	"fmt"
	"io"
	"net/http"
	"strings"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/tollgate/tollgate/admission"
	"github.com/tollgate/tollgate/authz"
)

// apiEndpoints are every endpoint of the API listener: each settles,
// releases or dequeues a call, or shows a client (its spend, savings and
// calls), the queue, the fleet or the policy.
var apiEndpoints = []struct{ method, path, body string }{
	{http.MethodGet, "/api/usage/acme", ""},
	{http.MethodPost, "/api/reservations/abc/settle", `{"actual_cost_usd":"0.001"}`},
	{http.MethodPost, "/api/reservations/abc/release", ""},
	{http.MethodGet, "/api/queue/status", ""},
	{http.MethodGet, "/api/queue/position/abc", ""},
	{http.MethodDelete, "/api/queue/abc", ""},
	{http.MethodPost, "/api/estimate?url=https://api.openai.com/v1/chat/completions", `{"model":"gpt-4o-mini","messages":[]}`},
	{http.MethodPost, "/api/optimize/analyze", `{"client":"acme","url":"https://api.openai.com/v1/chat/completions","body":{"model":"gpt-4o-mini","messages":[]}}`},
	{http.MethodGet, "/api/optimize/stats/acme", ""},
	{http.MethodGet, "/api/optimize/recommendations/acme", ""},
	{http.MethodGet, "/debug/policy", ""},
	{http.MethodGet, "/", ""}, // the status page (status.go)
	{http.MethodGet, "/admin/alerts", ""},
}

// call sends one request to the API listener with the Authorization
// header given ("" sends none).
func callAPI(t *testing.T, srv *authz.Server, method, path, body, authorization string) (*http.Response, string) {
	t.Helper()
	req, err := http.NewRequest(method, "http://"+srv.APIAddr().String()+path, strings.NewReader(body))
	require.NoError(t, err)
	if authorization != "" {
		req.Header.Set("Authorization", authorization)
	}
	resp, err := (&http.Client{Transport: &http.Transport{DisableKeepAlives: true}}).Do(req)
	require.NoError(t, err)
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	require.NoError(t, err)
	return resp, string(b)
}

// TestAPIAuth: every API endpoint wants the bearer token: none or a wrong
// one is 401 with WWW-Authenticate; with no token configured the API
// refuses everything with 403 saying how to set one; the right token gets
// through. The API is not served on the health listener.
func TestAPIAuth(t *testing.T) {
	tests := map[string]struct {
		token, authorization string
		wantStatus           int
		wantBody             string
	}{
		"no header":            {token: testToken, wantStatus: http.StatusUnauthorized, wantBody: "missing or wrong API token"},
		"wrong token":          {token: testToken, authorization: "Bearer " + testToken + "x", wantStatus: http.StatusUnauthorized, wantBody: "missing or wrong API token"},
		"prefix of the token":  {token: testToken, authorization: "Bearer " + testToken[:10], wantStatus: http.StatusUnauthorized, wantBody: "missing or wrong API token"},
		"basic scheme":         {token: testToken, authorization: "Basic " + testToken, wantStatus: http.StatusUnauthorized, wantBody: "missing or wrong API token"},
		"no token configured":  {token: "", authorization: "Bearer " + testToken, wantStatus: http.StatusForbidden, wantBody: "--api-token-file"},
		"right token":          {token: testToken, authorization: "Bearer " + testToken},
		"scheme in lower case": {token: testToken, authorization: "bearer " + testToken},
	}
	for name, tc := range tests {
		t.Run(name, func(t *testing.T) {
			ts := startServer(t, serverOpts{policy: apiPolicy("  unknown_client: deny"), config: func(c *authz.Config) { c.APIToken = authz.Secret(tc.token) }})
			for _, e := range apiEndpoints {
				resp, body := callAPI(t, ts.srv, e.method, e.path, e.body, tc.authorization)
				if tc.wantStatus == 0 {
					assert.NotContains(t, []int{http.StatusUnauthorized, http.StatusForbidden}, resp.StatusCode, "%s %s: %s", e.method, e.path, body)
					continue
				}
				assert.Equal(t, tc.wantStatus, resp.StatusCode, "%s %s", e.method, e.path)
				assert.Contains(t, body, tc.wantBody, "%s %s", e.method, e.path)
				if tc.wantStatus == http.StatusUnauthorized {
					assert.Equal(t, `Bearer realm="tollgate"`, resp.Header.Get("WWW-Authenticate"))
				}
				assert.NotContains(t, body, testToken, "the token is never echoed")
			}
		})
	}

	t.Run("health and metrics stay open, the API is not on their listener", func(t *testing.T) {
		ts := startServer(t, serverOpts{})
		plain := &http.Client{Transport: &http.Transport{DisableKeepAlives: true}}
		for path, want := range map[string]int{"/healthz": 200, "/readyz": 200, "/metrics": 200, "/api/usage/acme": 404, "/debug/policy": 404, "/api/queue/status": 404, "/api/optimize/stats/acme": 404, "/admin/alerts": 404} {
			resp, err := plain.Get(ts.base + path)
			require.NoError(t, err)
			resp.Body.Close()
			assert.Equal(t, want, resp.StatusCode, path)
		}
	})

	t.Run("refusals are counted", func(t *testing.T) {
		ts := startServer(t, serverOpts{})
		for range 3 {
			resp, _ := callAPI(t, ts.srv, http.MethodGet, "/api/queue/status", "", "Bearer nope")
			assert.Equal(t, http.StatusUnauthorized, resp.StatusCode)
		}
		assert.EqualValues(t, 3, mustCounter(t, ts, "tollgate_authz_api_unauthorized_total"))
	})
}

// mustCounter finds an unlabelled counter's value in ts's registry.
func mustCounter(t *testing.T, ts *testServer, name string) float64 {
	t.Helper()
	mfs, err := ts.reg.Gather()
	require.NoError(t, err)
	for _, mf := range mfs {
		if mf.GetName() == name {
			return mf.GetMetric()[0].GetCounter().GetValue()
		}
	}
	require.FailNow(t, "no metric", name)
	return 0
}

// TestSecretNeverPrints: the token prints and logs as [redacted].
func TestSecretNeverPrints(t *testing.T) {
	cfg := authz.DefaultConfig()
	cfg.APIToken = testToken
	for _, s := range []string{cfg.APIToken.String(), fmt.Sprintf("%v %+v %#v %s", cfg, cfg, cfg, cfg.APIToken)} {
		assert.NotContains(t, s, testToken)
	}
}

// TestSettleBound: a settle through the API cannot book more than the
// reservation could cost: the largest call its route's pools admit (here
// 1,000 calls at $0.0085 = $8.50) or ten times what it holds. The $9M
// settle of issue 11 against a $1 client is refused with 422 and moves no
// money; the bound itself is accepted.
func TestSettleBound(t *testing.T) {
	tests := map[string]struct {
		cost       string
		wantStatus int
		wantSpent  string
	}{
		"nine million":      {cost: "9000000", wantStatus: http.StatusUnprocessableEntity, wantSpent: "0"},
		"a nano over":       {cost: "8.500000001", wantStatus: http.StatusUnprocessableEntity, wantSpent: "0"},
		"the bound":         {cost: "8.5", wantStatus: http.StatusOK, wantSpent: "8.5"},
		"over the estimate": {cost: "0.5", wantStatus: http.StatusOK, wantSpent: "0.5"},
	}
	for name, tc := range tests {
		t.Run(name, func(t *testing.T) {
			ts := startDeferred(t, "  unknown_client: deny")
			id := ts.admit(t, "acme-group")
			sc, body := ts.post(t, "/api/reservations/"+id+"/settle", `{"actual_cost_usd":"`+tc.cost+`"}`)
			require.Equal(t, tc.wantStatus, sc, body)
			rep := ts.usageOf(t, "acme-group")
			assert.Equal(t, tc.wantSpent, rep.Budgets[0].Spent)
			if tc.wantStatus != http.StatusOK {
				assert.Contains(t, body, "exceeds $8.5, the most this reservation could cost")
				assert.Equal(t, "0.0102", rep.Budgets[0].Reserved, "the reservation still holds its estimate")
				assert.EqualValues(t, 1, mustCounter(t, ts, "tollgate_authz_api_settle_refused_total"))
				// It can still be settled within the bound.
				sc, body = ts.post(t, "/api/reservations/"+id+"/settle", `{"actual_cost_usd":"0.01"}`)
				assert.Equal(t, http.StatusOK, sc, body)
			}
		})
	}

	t.Run("a reservation this sidecar does not hold is bounded by the whole policy", func(t *testing.T) {
		ts := startDeferred(t, "  unknown_client: deny")
		sc, body := ts.post(t, "/api/reservations/not-held-here/settle", `{"actual_cost_usd":"9000000"}`)
		assert.Equal(t, http.StatusUnprocessableEntity, sc, body)
		assert.Contains(t, body, "the largest call any route's pools admit")
	})

	t.Run("the bound is what the service says", func(t *testing.T) {
		ts := startDeferred(t, "  unknown_client: deny")
		id := ts.admit(t, "acme")
		bound, _ := ts.srv.Service().SettleBound(id)
		assert.Equal(t, "8.5", bound.String())
		_, err := ts.srv.Service().Settle(context.Background(), id, bound+1)
		assert.ErrorIs(t, err, admission.ErrSettleTooLarge)
	})
}
