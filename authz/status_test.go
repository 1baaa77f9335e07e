package authz_test

import (
	"context"
	"crypto/hmac"
	"crypto/sha256"
	"encoding/hex"
	"io"
	"net/http"
	"net/url"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"google.golang.org/genproto/googleapis/rpc/code"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/tollgate/tollgate/admission"
	"github.com/tollgate/tollgate/authz"
	"github.com/tollgate/tollgate/internal/fakeclock"
)

// statusPolicy: two pools on one route, "calls" (10 requests) and "burst"
// (2 requests), neither refilling while the fake clock stands still; two
// budgeted clients; normal calls may wait.
const statusPolicy = `
defaults:
  unknown_client: deny
  unmatched_route: deny
pools:
  calls:
    unit: request
    capacity: 10
    refill_per_second: 1
    price: "0.01"
  burst:
    unit: request
    capacity: 2
    refill_per_second: 1
    price: "0"
routes:
  openai:
    host: api.openai.com
    path_prefix: /v1/
    provider: openai
    pools: [calls, burst]
    class: normal
tiers:
  team:
    priority: 10
    max_concurrent: 5
    monthly_budget: "1000"
clients:
  alpha:
    tier: team
    monthly_budget: "100"
  beta:
    tier: team
    monthly_budget: "50"
queue:
  classes:
    normal: {max_wait: 5s}
`

// hostilePath is a path a worker sent that no route matches: the page must
// show it as text.
const hostilePath = `/v9/<script>alert("x")</script>`

// statusScene starts a server on statusPolicy and brings it to a known
// state: alpha's call settled at $0.05, beta's admitted and unsettled (its
// estimate held), beta's third call held in the queue (burst is empty),
// and two refusals: an unknown client and a hostile unmatched path. The
// held call is cancelled at cleanup.
func statusScene(t *testing.T) *testServer {
	t.Helper()
	ts := startServer(t, serverOpts{policy: statusPolicy, config: func(c *authz.Config) { c.Settlement = admission.SettleDeferred }})
	id := ts.admit(t, "alpha")
	sc, body := ts.post(t, "/api/reservations/"+id+"/settle", `{"actual_cost_usd":"0.05"}`)
	require.Equal(t, http.StatusOK, sc, body)
	ts.admit(t, "beta")

	ctx, cancel := context.WithCancel(context.Background())
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		_, err := ts.auth.Check(ctx, chatCheck("beta", chatBody("gpt-4o-mini", 16, "hi")))
		if err != nil { // cancelled at cleanup: the only way it ends
			assert.Equal(t, codes.Canceled, status.Code(err))
		}
	}()
	t.Cleanup(func() { cancel(); wg.Wait() })
	require.Eventually(t, func() bool { return ts.srv.Service().QueueStatus().Total == 1 }, 10*time.Second, time.Millisecond)

	resp, err := ts.auth.Check(context.Background(), chatCheck("mallory", chatBody("gpt-4o-mini", 16, "hi")))
	require.NoError(t, err)
	require.Equal(t, int32(code.Code_PERMISSION_DENIED), resp.GetStatus().GetCode()) // an unknown client: 403
	hostile := chatCheck("alpha", chatBody("gpt-4o-mini", 16, "hi"))
	hostile.Attributes.Request.Http.Path = hostilePath
	_, err = ts.auth.Check(context.Background(), hostile)
	require.NoError(t, err)
	require.Len(t, ts.srv.Service().Refusals(), 2)
	return ts
}

// getPage GETs path on the API listener with the headers given.
func getPage(t *testing.T, srv *authz.Server, method, path string, body io.Reader, header http.Header) (*http.Response, string) {
	t.Helper()
	req, err := http.NewRequest(method, "http://"+srv.APIAddr().String()+path, body)
	require.NoError(t, err)
	for k, v := range header {
		req.Header[k] = v
	}
	client := &http.Client{Transport: &http.Transport{DisableKeepAlives: true},
		CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse }}
	resp, err := client.Do(req)
	require.NoError(t, err)
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	require.NoError(t, err)
	return resp, string(b)
}

func bearer(token string) http.Header { return http.Header{"Authorization": {"Bearer " + token}} }

// TestStatusPage: with the token the page shows the pools' fill, the
// budgets' spend and held amount, the queue per class and the refusals,
// with the worker's path escaped; without it the page is a login form.
func TestStatusPage(t *testing.T) {
	ts := statusScene(t)
	resp, page := getPage(t, ts.srv, http.MethodGet, "/", nil, bearer(testToken))
	require.Equal(t, http.StatusOK, resp.StatusCode, page)
	assert.Equal(t, "text/html; charset=utf-8", resp.Header.Get("Content-Type"))
	assert.Equal(t, "no-store", resp.Header.Get("Cache-Control"))
	assert.Contains(t, resp.Header.Get("Content-Security-Policy"), "default-src 'none'")

	beta, err := ts.srv.Service().Usage(context.Background(), "beta")
	require.NoError(t, err)
	require.NotEqual(t, "0", beta.Budgets[0].Reserved, "beta's admitted call holds its estimate")
	for _, want := range []string{
		`<meta http-equiv="refresh" content="10">`,
		`data-pool="calls"`, "8 / 10 request", // two calls admitted; the held one took nothing
		`data-pool="burst"`, "0 / 2 request",
		`<div style="width: 80%">`, `<div style="width: 0%">`,
		`data-client="alpha"`, "$100", "$0.05", // alpha: budget, spent
		`data-client="beta"`, "$50", "$" + beta.Budgets[0].Reserved, // beta: budget, held
		`<tr data-class="normal"><td>normal</td><td class="num">1</td>`,
		`<tr data-class="fast"><td>fast</td><td class="num">0</td>`,
		"1 held, 0 of them parked",
		"unknown_client", "unmatched_route",
		`<td>alpha</td><td>api.openai.com/v9/&lt;script&gt;alert(&#34;x&#34;)&lt;/script&gt;</td><td>unmatched</td><td>unmatched_route</td>`,
		`<td>mallory</td><td>openai</td><td>denied</td><td>unknown_client</td>`,
		"1 per 1s",
		// burst is empty: the pool alert fires, evaluated as the page is read
		`<tr class="alert-warning"><td>TollgatePoolLow</td>`,
		"pool burst has less than 10% of its capacity left",
	} {
		assert.Contains(t, page, want)
	}
	assert.NotContains(t, page, "<script")
	assert.NotContains(t, page, testToken)

	t.Run("without a token: 401 and the login form", func(t *testing.T) {
		for name, h := range map[string]http.Header{"none": nil, "wrong": bearer(testToken + "x")} {
			resp, page := getPage(t, ts.srv, http.MethodGet, "/", nil, h)
			assert.Equal(t, http.StatusUnauthorized, resp.StatusCode, name)
			assert.Equal(t, "text/html; charset=utf-8", resp.Header.Get("Content-Type"), name)
			assert.Contains(t, page, `<form method="post" action="/login">`, name)
			assert.NotContains(t, page, "calls", name)
		}
	})
}

// TestStatusLogin: the login form sets an HttpOnly, SameSite=Strict cookie
// that is not the token and opens the page, and nothing else: the JSON API
// still wants the header. A wrong token sets nothing; logging out clears it.
func TestStatusLogin(t *testing.T) {
	ts := startServer(t, serverOpts{policy: statusPolicy})
	form := func(token string) io.Reader { return strings.NewReader(url.Values{"token": {token}}.Encode()) }
	formHeader := http.Header{"Content-Type": {"application/x-www-form-urlencoded"}}

	resp, page := getPage(t, ts.srv, http.MethodPost, "/login", form(testToken+"x"), formHeader)
	assert.Equal(t, http.StatusUnauthorized, resp.StatusCode)
	assert.Empty(t, resp.Cookies())
	assert.Contains(t, page, "missing or wrong API token")

	resp, _ = getPage(t, ts.srv, http.MethodPost, "/login", form(testToken), formHeader)
	require.Equal(t, http.StatusSeeOther, resp.StatusCode)
	assert.Equal(t, "/", resp.Header.Get("Location"))
	require.Len(t, resp.Cookies(), 1)
	c := resp.Cookies()[0]
	assert.Equal(t, "tollgate_status", c.Name)
	assert.True(t, c.HttpOnly)
	assert.Equal(t, http.SameSiteStrictMode, c.SameSite)
	assert.NotContains(t, c.Value, testToken)
	assert.Regexp(t, `^[0-9]+\.[0-9a-f]{64}$`, c.Value) // issued at, HMAC-SHA256 in hex

	withCookie := http.Header{"Cookie": {c.Name + "=" + c.Value}}
	resp, page = getPage(t, ts.srv, http.MethodGet, "/", nil, withCookie)
	assert.Equal(t, http.StatusOK, resp.StatusCode)
	assert.Contains(t, page, `data-pool="calls"`)
	assert.Contains(t, page, `action="/logout"`)

	resp, _ = getPage(t, ts.srv, http.MethodGet, "/api/queue/status", nil, withCookie)
	assert.Equal(t, http.StatusUnauthorized, resp.StatusCode, "the cookie opens the page only")
	resp, _ = getPage(t, ts.srv, http.MethodGet, "/", nil, http.Header{"Cookie": {c.Name + "=" + strings.Repeat("0", 64)}})
	assert.Equal(t, http.StatusUnauthorized, resp.StatusCode, "a forged cookie")

	// A cookie is good for 12 hours from its issue, whatever the browser
	// keeps: one signed 13 hours ago is refused.
	old := strconv.FormatInt(time.Now().Add(-13*time.Hour).Unix(), 10)
	mac := hmac.New(sha256.New, []byte(testToken))
	mac.Write([]byte("tollgate status page session v1|" + old))
	resp, _ = getPage(t, ts.srv, http.MethodGet, "/", nil, http.Header{"Cookie": {c.Name + "=" + old + "." + hex.EncodeToString(mac.Sum(nil))}})
	assert.Equal(t, http.StatusUnauthorized, resp.StatusCode, "an expired cookie")

	// Another site can neither log in nor log the operator out.
	crossSite := http.Header{"Content-Type": {"application/x-www-form-urlencoded"}, "Sec-Fetch-Site": {"cross-site"}}
	resp, _ = getPage(t, ts.srv, http.MethodPost, "/login", form(testToken), crossSite)
	assert.Equal(t, http.StatusForbidden, resp.StatusCode)
	assert.Empty(t, resp.Cookies())
	resp, _ = getPage(t, ts.srv, http.MethodPost, "/logout", nil, http.Header{"Cookie": withCookie["Cookie"], "Origin": {"https://evil.example"}})
	assert.Equal(t, http.StatusForbidden, resp.StatusCode)
	assert.Empty(t, resp.Cookies())

	resp, _ = getPage(t, ts.srv, http.MethodPost, "/logout", nil, withCookie)
	assert.Equal(t, http.StatusSeeOther, resp.StatusCode)
	require.Len(t, resp.Cookies(), 1)
	assert.Equal(t, -1, resp.Cookies()[0].MaxAge)
}

// TestStatusNoToken: with no API token configured the page refuses, saying
// how to set one, and the login form cannot open it.
func TestStatusNoToken(t *testing.T) {
	ts := startServer(t, serverOpts{policy: statusPolicy, config: func(c *authz.Config) { c.APIToken = "" }})
	resp, page := getPage(t, ts.srv, http.MethodGet, "/", nil, bearer(testToken))
	assert.Equal(t, http.StatusForbidden, resp.StatusCode)
	assert.Contains(t, page, "--api-token-file")
	resp, _ = getPage(t, ts.srv, http.MethodPost, "/login", strings.NewReader("token="), http.Header{"Content-Type": {"application/x-www-form-urlencoded"}})
	assert.Equal(t, http.StatusForbidden, resp.StatusCode)
	assert.Empty(t, resp.Cookies())
}

// TestStatusForecast: once the spend samples span the forecast's shortest
// window, each watched budget shows its month-end projection.
func TestStatusForecast(t *testing.T) {
	clk := fakeclock.New(epoch)
	ts := startServer(t, serverOpts{policy: statusPolicy, clk: clk, config: func(c *authz.Config) { c.Settlement = admission.SettleDeferred }})
	resp, page := getPage(t, ts.srv, http.MethodGet, "/", nil, bearer(testToken))
	require.Equal(t, http.StatusOK, resp.StatusCode, page)
	assert.NotContains(t, page, "no alert evaluator configured")

	id := ts.admit(t, "alpha")
	sc, body := ts.post(t, "/api/reservations/"+id+"/settle", `{"actual_cost_usd":"0.1"}`)
	require.Equal(t, http.StatusOK, sc, body)
	clk.Advance(10 * time.Minute)
	_, page = getPage(t, ts.srv, http.MethodGet, "/", nil, bearer(testToken))

	snap := ts.srv.Service().Status(context.Background())
	var alpha admission.StatusBudget
	for _, b := range snap.Budgets {
		if b.Owner == "alpha" {
			alpha = b
		}
	}
	require.True(t, alpha.HasForecast, "alpha spent $0.10 in 10 minutes: a rate, so a forecast")
	assert.Greater(t, alpha.Forecast, alpha.Spent, "the month goes on: more than is spent now")
	assert.Contains(t, page, "$"+alpha.Forecast.String())
}

// TestStatusStoreDown: a store that fails leaves a page that says so per
// section, with the pools' shape and the queue still shown, not an error
// page.
func TestStatusStoreDown(t *testing.T) {
	ts := startServer(t, serverOpts{policy: statusPolicy, store: failingStore{err: errStoreDown}})
	resp, page := getPage(t, ts.srv, http.MethodGet, "/", nil, bearer(testToken))
	require.Equal(t, http.StatusOK, resp.StatusCode)
	assert.Contains(t, page, "reading pool levels: "+errStoreDown.Error())
	assert.Contains(t, page, "reading budgets: "+errStoreDown.Error())
	assert.Contains(t, page, "? / 10 request")
	assert.Contains(t, page, `<tr data-class="normal"><td>normal</td><td class="num">0</td>`)
}

// TestStatusLoginIgnoresQuery: a token in the URL's query (where access
// logs and history keep it) does not log in.
func TestStatusLoginIgnoresQuery(t *testing.T) {
	ts := startServer(t, serverOpts{policy: statusPolicy})
	resp, _ := getPage(t, ts.srv, http.MethodPost, "/login?token="+testToken, strings.NewReader(""), http.Header{"Content-Type": {"application/x-www-form-urlencoded"}})
	assert.Equal(t, http.StatusUnauthorized, resp.StatusCode)
	assert.Empty(t, resp.Cookies())
	resp, _ = getPage(t, ts.srv, http.MethodGet, "/?token="+testToken, nil, nil)
	assert.Equal(t, http.StatusUnauthorized, resp.StatusCode)
}
