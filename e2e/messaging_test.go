package e2e

import (
	"encoding/json"
	"io"
	"net/http"
	"net/url"
	"strings"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/tollgate/tollgate/internal/fakeapi"
	"github.com/tollgate/tollgate/policy"
)

// TestMessaging sends a Twilio SMS, a SendGrid mail and a Cloudflare D1
// query through the stand-in with Go's HTTP client (twilio-node has no
// base-URL option, only a custom httpClient; SendGrid's client is a thin
// wrapper of the same POST), and checks what Tollgate booked: Twilio's own
// price when the answer carries it, the e-mails and the query at their
// pools' prices.
func TestMessaging(t *testing.T) {
	t.Parallel()
	r := newRig(t)
	post := func(t *testing.T, rawURL, client, contentType, body string) (*http.Response, []byte) {
		t.Helper()
		req, err := http.NewRequest(http.MethodPost, rawURL, strings.NewReader(body))
		require.NoError(t, err)
		req.Header.Set("content-type", contentType)
		req.Header.Set("x-tollgate-client", client)
		req.SetBasicAuth("AC123", "secret")
		resp, err := http.DefaultClient.Do(req)
		require.NoError(t, err)
		b, err := io.ReadAll(resp.Body)
		require.NoError(t, err)
		require.NoError(t, resp.Body.Close())
		return resp, b
	}

	t.Run("twilio sms", func(t *testing.T) {
		text := strings.Repeat("a", 200) // GSM-7, 200 characters: two segments of 153
		resp, body := post(t, r.twilio+"/2010-04-01/Accounts/AC123/Messages.json", "e2e-twilio", "application/x-www-form-urlencoded",
			url.Values{"To": {"+15550001111"}, "From": {"+15550002222"}, "Body": {text}}.Encode())
		require.Equal(t, http.StatusCreated, resp.StatusCode, string(body))
		var msg struct {
			NumSegments string `json:"num_segments"`
			Price       string `json:"price"`
		}
		require.NoError(t, json.Unmarshal(body, &msg))
		require.Equal(t, "2", msg.NumSegments)
		price, err := policy.ParseMoney(strings.TrimPrefix(msg.Price, "-"))
		require.NoError(t, err)
		assert.Equal(t, "api.twilio.com", r.last(t).Host)
		assert.Equal(t, price, r.settled(t, "e2e-twilio"), "Twilio's own price, %s", msg.Price)
	})

	t.Run("sendgrid mail", func(t *testing.T) {
		mail := `{"personalizations":[{"to":[{"email":"a@example.com"},{"email":"b@example.com"}]}],` +
			`"from":{"email":"noreply@example.com"},"subject":"hi","content":[{"type":"text/plain","value":"hello"}]}`
		before := r.fake.Calls().ByPath["POST /v3/mail/send"]
		resp, body := post(t, r.sendgrid+"/v3/mail/send", "e2e-sendgrid", "application/json", mail)
		require.Equal(t, http.StatusAccepted, resp.StatusCode, string(body))
		assert.Equal(t, before+1, r.fake.Calls().ByPath["POST /v3/mail/send"])
		assert.Equal(t, policy.Money(2*100_000), r.settled(t, "e2e-sendgrid"), "two e-mails at $0.0001")
	})

	t.Run("sendgrid 429 reaches the worker", func(t *testing.T) {
		req, err := http.NewRequest(http.MethodPost, r.sendgrid+"/v3/mail/send", strings.NewReader(
			`{"personalizations":[{"to":[{"email":"a@example.com"}]}],"from":{"email":"x@example.com"},"subject":"s","content":[{"type":"text/plain","value":"v"}]}`))
		require.NoError(t, err)
		req.Header.Set("content-type", "application/json")
		req.Header.Set("x-tollgate-client", "e2e-sendgrid")
		req.Header.Set(fakeapi.ScenarioHeader, fakeapi.Scenario429)
		resp, err := http.DefaultClient.Do(req)
		require.NoError(t, err)
		b, _ := io.ReadAll(resp.Body)
		require.NoError(t, resp.Body.Close())
		assert.Equal(t, http.StatusTooManyRequests, resp.StatusCode)
		assert.Contains(t, string(b), "too many requests")
		assert.Equal(t, policy.Money(2*100_000), r.settled(t, "e2e-sendgrid"), "a refused mail costs nothing")
	})

	t.Run("cloudflare d1 query", func(t *testing.T) {
		const path = "/client/v4/accounts/acc/d1/database/db/query"
		before := r.fake.Calls().ByPath["POST "+path]
		resp, body := post(t, r.cloudflare+path, "e2e-cloudflare", "application/json", `{"sql":"SELECT 1"}`)
		require.Equal(t, http.StatusOK, resp.StatusCode, string(body))
		assert.Equal(t, before+1, r.fake.Calls().ByPath["POST "+path])
		assert.Equal(t, "api.cloudflare.com", r.last(t).Host)
		assert.Equal(t, policy.Money(1_000), r.settled(t, "e2e-cloudflare"), "one query at the pool's $0.000001")
	})
}
