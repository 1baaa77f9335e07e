package authz_test

import (
	"context"
	"net/http"
	"testing"

	authv3 "github.com/envoyproxy/go-control-plane/envoy/service/auth/v3"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"google.golang.org/genproto/googleapis/rpc/code"

	"github.com/tollgate/tollgate/admission"
	"github.com/tollgate/tollgate/authz"
)

// TestUsageHistoryAPI: GET /api/usage/{client} adds the history by month,
// route and model, booked by the store as calls settle (a call through
// Envoy settled by the API, and direct work consumed); /current is the
// period alone; months= is checked.
func TestUsageHistoryAPI(t *testing.T) {
	for name, newStore := range resourceStores {
		t.Run(name, func(t *testing.T) {
			ts := startResource(t, newStore, nil)
			resp, err := ts.auth.Check(context.Background(), chatCheck("acme", chatBody("gpt-4", 16, "hi")))
			require.NoError(t, err)
			id := reservationOf(t, resp)
			sc, body := ts.postJSON(t, "/api/reservations/"+id+"/settle", `{"actual_cost_usd": "0.0012"}`)
			require.Equal(t, http.StatusOK, sc, body)

			sc, body = ts.postJSON(t, "/internal/reserve", `{"client": "acme", "pool": "rows", "units": 10, "request_id": "job-7"}`)
			res := decodeAs[admission.DirectReservation](t, sc, body)
			sc, body = ts.postJSON(t, "/internal/consume", `{"reservation_id": "`+res.ID+`", "actual_cost_usd": "0.0005"}`)
			require.Equal(t, http.StatusOK, sc, body)

			sc, body = ts.get(t, "/api/usage/acme?months=2")
			h := decodeAs[admission.UsageHistory](t, sc, body)
			assert.Equal(t, "acme", h.Client)
			require.Len(t, h.History, 2)
			cur := h.History[0]
			assert.Equal(t, h.Period, cur.Month)
			assert.Equal(t, int64(2), cur.Calls)
			assert.Equal(t, "0.0017", cur.Cost)
			require.Len(t, cur.Rows, 2)
			assert.Equal(t, admission.HistoryRow{Route: "openai", Model: "gpt-4", Calls: 1, Cost: "0.0012", InputTokens: cur.Rows[0].InputTokens,
				OutputTokens: 16, Saved: "0"}, cur.Rows[0])
			assert.Positive(t, cur.Rows[0].InputTokens)
			assert.Equal(t, admission.HistoryRow{Route: "pool:rows", Calls: 1, Cost: "0.0005", Saved: "0"}, cur.Rows[1])
			assert.Equal(t, int64(0), h.History[1].Calls, "last month: nothing")

			sc, body = ts.get(t, "/api/usage/acme/current")
			cu := decodeAs[admission.UsageReport](t, sc, body)
			assert.Equal(t, "0.0017", cu.Budgets[0].Spent)
			assert.NotContains(t, body, "history")

			for _, bad := range []string{"0", "25", "x"} {
				sc, _ = ts.get(t, "/api/usage/acme?months="+bad)
				assert.Equal(t, http.StatusBadRequest, sc, bad)
			}
			sc, _ = ts.get(t, "/api/usage/stranger")
			assert.Equal(t, http.StatusNotFound, sc)
		})
	}
}

// TestCostRecordAPI: GET /api/cost/{requestId} shows a settled call's
// estimate, actual cost, tokens, model, route and outcome; an unknown id
// is 404.
func TestCostRecordAPI(t *testing.T) {
	for name, newStore := range resourceStores {
		t.Run(name, func(t *testing.T) {
			ts := startResource(t, newStore, nil)
			resp, err := ts.auth.Check(context.Background(), chatCheck("acme", chatBody("gpt-4", 16, "hi")))
			require.NoError(t, err)
			id := reservationOf(t, resp)
			sc, body := ts.postJSON(t, "/api/reservations/"+id+"/settle", `{"actual_cost_usd": "0.0012"}`)
			require.Equal(t, http.StatusOK, sc, body)

			sc, body = ts.get(t, "/api/cost/req-1") // chatCheck's x-request-id
			c := decodeAs[admission.CostReport](t, sc, body)
			assert.Equal(t, "req-1", c.RequestID)
			assert.Equal(t, "acme", c.Client)
			assert.Equal(t, "openai", c.Route)
			assert.Equal(t, "gpt-4", c.Model)
			assert.Equal(t, "settled", c.Outcome)
			assert.Equal(t, "0.0012", c.Actual)
			assert.NotEqual(t, "0", c.Estimate)
			assert.Equal(t, int64(16), c.OutputTokens)

			sc, body = ts.postJSON(t, "/internal/reserve", `{"client": "acme", "pool": "rows", "units": 10, "request_id": "job-8"}`)
			res := decodeAs[admission.DirectReservation](t, sc, body)
			sc, body = ts.postJSON(t, "/internal/release", `{"reservation_id": "`+res.ID+`"}`)
			require.Equal(t, http.StatusOK, sc, body)
			sc, body = ts.get(t, "/api/cost/job-8")
			c = decodeAs[admission.CostReport](t, sc, body)
			assert.Equal(t, "released", c.Outcome)
			assert.Equal(t, "0", c.Actual)
			assert.Equal(t, "pool:rows", c.Route)

			sc, _ = ts.get(t, "/api/cost/never-seen")
			assert.Equal(t, http.StatusNotFound, sc)
		})
	}
}

// reservationOf is the reservation id an allowed check sends upstream.
func reservationOf(tb testing.TB, resp *authv3.CheckResponse) string {
	tb.Helper()
	require.Equal(tb, int32(code.Code_OK), resp.GetStatus().GetCode(), resp.GetDeniedResponse().GetBody())
	for _, h := range resp.GetOkResponse().GetHeaders() {
		if h.GetHeader().GetKey() == authz.HeaderReservation {
			return h.GetHeader().GetValue()
		}
	}
	tb.Fatalf("no %s header on the allowed check", authz.HeaderReservation)
	return ""
}
