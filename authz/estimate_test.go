package authz_test

import (
	"encoding/json"
	"io"
	"net/http"
	"net/url"
	"strings"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/tollgate/tollgate/admission"
)

func TestEstimateAPI(t *testing.T) {
	ts := startServer(t, serverOpts{policy: settlePolicy})
	post := func(target, contentType, body string) (int, string) {
		t.Helper()
		u := ts.base + "/api/estimate"
		if target != "" {
			u += "?url=" + url.QueryEscape(target)
		}
		resp, err := ts.http.Post(u, contentType, strings.NewReader(body))
		require.NoError(t, err)
		defer resp.Body.Close()
		b, err := io.ReadAll(resp.Body)
		require.NoError(t, err)
		return resp.StatusCode, string(b)
	}

	body := string(chatBody("gpt-4o", 100, "What is the capital of France?"))
	sc, out := post("https://api.openai.com/v1/chat/completions", "application/json", body)
	require.Equal(t, http.StatusOK, sc, out)
	var rep admission.EstimateReport
	require.NoError(t, json.Unmarshal([]byte(out), &rep))
	in := tokens(0, []byte(body))
	// in × $2.50/1M + 100 × $10/1M
	assert.Equal(t, admission.EstimateReport{
		Route: "openai", Provider: "openai", Model: "gpt-4o", PriceEntry: "gpt-4o*", ModelKnown: true, Kind: "chat", Exact: true,
		InputTokens: in, OutputTokens: 100, Segments: 1, Recipients: 1,
		Pools:     []admission.EstimatePool{{Pool: "gpt", Unit: "token", Units: in + 100}},
		Cost:      moneyString(in*2500 + 1_000_000),
		Breakdown: admission.EstimateBreakdown{Input: moneyString(in * 2500), Output: "0.001", Images: "0", Audio: "0", Units: "0"},
		Strategy:  "conservative", ReservePercent: 120, Reserve: moneyString((in*2500 + 1_000_000) * 120 / 100),
	}, rep)
	assert.Zero(t, ts.srv.Service().Pending(), "an estimate reserves nothing")

	for name, tc := range map[string]struct {
		target, body string
		status       int
		msg          string
	}{
		"no url":    {"", body, http.StatusBadRequest, "give the call's URL"},
		"bad url":   {"/v1/chat", body, http.StatusBadRequest, "want an absolute URL"},
		"no route":  {"https://example.com/x", body, http.StatusNotFound, "no route matches example.com/x"},
		"too large": {"https://api.openai.com/v1/chat/completions", strings.Repeat("x", 4<<20+1), http.StatusRequestEntityTooLarge, "over"},
	} {
		t.Run(name, func(t *testing.T) {
			sc, out := post(tc.target, "application/json", tc.body)
			assert.Equal(t, tc.status, sc)
			assert.Contains(t, out, tc.msg)
		})
	}
	// Not JSON: estimated from its size, never an error.
	sc, out = post("https://api.openai.com/v1/chat/completions", "application/json", "garbage")
	require.Equal(t, http.StatusOK, sc)
	require.NoError(t, json.Unmarshal([]byte(out), &rep))
	assert.False(t, rep.Exact)
}

func moneyString(nanos int64) string { return policyMoney(nanos).String() }
