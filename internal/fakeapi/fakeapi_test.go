package fakeapi_test

import (
	"bufio"
	"compress/gzip"
	"compress/zlib"
	"encoding/json"
	"io"
	"net/http"
	"net/http/httptest"
	"net/url"
	"strings"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/tollgate/tollgate/internal/fakeapi"
)

func start(t *testing.T) *httptest.Server {
	t.Helper()
	srv := httptest.NewServer(fakeapi.New(fakeapi.DefaultConfig()))
	t.Cleanup(srv.Close)
	return srv
}

// post sends body with the given headers through a transport that leaves
// compressed bodies as they are.
func post(t *testing.T, rawURL, contentType, body string, hdr map[string]string) *http.Response {
	t.Helper()
	req, err := http.NewRequest(http.MethodPost, rawURL, strings.NewReader(body))
	require.NoError(t, err)
	req.Header.Set("content-type", contentType)
	for k, v := range hdr {
		req.Header.Set(k, v)
	}
	resp, err := (&http.Client{Transport: &http.Transport{DisableCompression: true}}).Do(req)
	require.NoError(t, err)
	t.Cleanup(func() { _ = resp.Body.Close() })
	return resp
}

// events splits an SSE body into its data payloads.
func events(t *testing.T, r io.Reader) []string {
	t.Helper()
	var out []string
	sc := bufio.NewScanner(r)
	for sc.Scan() {
		if d, ok := strings.CutPrefix(sc.Text(), "data: "); ok {
			out = append(out, d)
		}
	}
	require.NoError(t, sc.Err())
	return out
}

const chat = `{"model":"gpt-4.1-nano","max_tokens":%s,"messages":[{"role":"system","content":"Be brief."},{"role":"user","content":[{"type":"text","text":"Say hello."}]}]%s}`

func chatBody(maxTokens, extra string) string {
	return strings.Replace(strings.Replace(chat, "%s", maxTokens, 1), "%s", extra, 1)
}

func TestOpenAIChatJSON(t *testing.T) {
	srv := start(t)
	for name, tc := range map[string]struct {
		maxTokens  string
		scenario   string
		wantText   string
		wantCached int64
	}{
		"whole reply":     {maxTokens: "100", wantText: "Hello from the fake upstream."},
		"capped":          {maxTokens: "2", wantText: "Hello from"},
		"cached half":     {maxTokens: "100", scenario: "cached", wantText: "Hello from the fake upstream.", wantCached: 9},
		"gzip when asked": {maxTokens: "100", scenario: "gzip", wantText: "Hello from the fake upstream."},
	} {
		t.Run(name, func(t *testing.T) {
			resp := post(t, srv.URL+"/v1/chat/completions", "application/json", chatBody(tc.maxTokens, ""),
				map[string]string{fakeapi.ScenarioHeader: tc.scenario, "accept-encoding": "gzip, deflate"})
			require.Equal(t, http.StatusOK, resp.StatusCode)
			assert.Equal(t, "9999", resp.Header.Get("x-ratelimit-remaining-requests"))
			body := io.Reader(resp.Body)
			if tc.scenario == "gzip" {
				require.Equal(t, "gzip", resp.Header.Get("content-encoding"))
				zr, err := gzip.NewReader(resp.Body)
				require.NoError(t, err)
				body = zr
			} else {
				assert.Empty(t, resp.Header.Get("content-encoding"))
			}
			var got struct {
				Choices []struct {
					Message struct{ Content string }
				}
				Usage fakeapi.OpenAIUsage
			}
			require.NoError(t, json.NewDecoder(body).Decode(&got))
			require.Len(t, got.Choices, 1)
			assert.Equal(t, tc.wantText, got.Choices[0].Message.Content)
			// "Be brief." is 9 bytes, "Say hello." 10.
			assert.EqualValues(t, 19, got.Usage.PromptTokens)
			assert.EqualValues(t, len(strings.Fields(strings.ReplaceAll(tc.wantText, ".", " ."))), got.Usage.CompletionTokens)
			assert.Equal(t, got.Usage.PromptTokens+got.Usage.CompletionTokens, got.Usage.TotalTokens)
			assert.Equal(t, tc.wantCached, got.Usage.PromptTokensDetails.CachedTokens)
		})
	}
}

func TestOpenAIChatStream(t *testing.T) {
	srv := start(t)
	for name, tc := range map[string]struct {
		extra    string
		scenario string
		usage    bool
	}{
		"without include_usage": {extra: `,"stream":true`},
		"with include_usage":    {extra: `,"stream":true,"stream_options":{"include_usage":true}`, usage: true},
		"deflate":               {extra: `,"stream":true,"stream_options":{"include_usage":true}`, usage: true, scenario: "deflate"},
		"split events":          {extra: `,"stream":true,"stream_options":{"include_usage":true}`, usage: true, scenario: "split"},
	} {
		t.Run(name, func(t *testing.T) {
			resp := post(t, srv.URL+"/v1/chat/completions", "application/json", chatBody("100", tc.extra),
				map[string]string{fakeapi.ScenarioHeader: tc.scenario, "accept-encoding": "gzip, deflate"})
			require.Equal(t, http.StatusOK, resp.StatusCode)
			assert.Equal(t, "text/event-stream; charset=utf-8", resp.Header.Get("content-type"))
			body := io.Reader(resp.Body)
			if tc.scenario == "deflate" {
				require.Equal(t, "deflate", resp.Header.Get("content-encoding"))
				zr, err := zlib.NewReader(resp.Body)
				require.NoError(t, err)
				body = zr
			}
			evs := events(t, body)
			require.Equal(t, "[DONE]", evs[len(evs)-1])
			var text strings.Builder
			var usage *fakeapi.OpenAIUsage
			for i, e := range evs[:len(evs)-1] {
				var raw map[string]json.RawMessage
				require.NoError(t, json.Unmarshal([]byte(e), &raw))
				u, has := raw["usage"]
				assert.Equal(t, tc.usage, has, "event %d: a usage field only with include_usage", i)
				var ch struct {
					Choices []struct{ Delta struct{ Content string } }
					Usage   *fakeapi.OpenAIUsage
				}
				require.NoError(t, json.Unmarshal([]byte(e), &ch))
				if len(ch.Choices) == 0 {
					require.Equal(t, len(evs)-2, i, "only the last chunk has empty choices")
					usage = ch.Usage
					continue
				}
				if has {
					assert.Equal(t, "null", string(u), "event %d", i)
				}
				text.WriteString(ch.Choices[0].Delta.Content)
			}
			assert.Equal(t, "Hello from the fake upstream.", text.String())
			if tc.usage {
				require.NotNil(t, usage)
				assert.EqualValues(t, 19, usage.PromptTokens)
				assert.EqualValues(t, 6, usage.CompletionTokens)
			} else {
				assert.Nil(t, usage)
			}
		})
	}
}

func TestOpenAIEmbeddings(t *testing.T) {
	srv := start(t)
	resp := post(t, srv.URL+"/v1/embeddings", "application/json", `{"model":"text-embedding-3-small","input":["abc","defg"]}`, nil)
	require.Equal(t, http.StatusOK, resp.StatusCode)
	var got struct {
		Data  []any
		Usage struct{ PromptTokens, TotalTokens int64 } `json:"usage"`
	}
	require.NoError(t, json.NewDecoder(resp.Body).Decode(&got))
	assert.Len(t, got.Data, 2)
}

func TestAnthropicMessages(t *testing.T) {
	srv := start(t)
	body := `{"model":"claude-haiku-4-5","max_tokens":%d,"system":"Be brief.","messages":[{"role":"user","content":"Say hello."}]%s}`
	t.Run("json", func(t *testing.T) {
		resp := post(t, srv.URL+"/v1/messages", "application/json", strings.Replace(strings.Replace(body, "%d", "3", 1), "%s", "", 1), nil)
		require.Equal(t, http.StatusOK, resp.StatusCode)
		assert.Equal(t, "3999", resp.Header.Get("anthropic-ratelimit-requests-remaining"))
		var got struct {
			Content    []struct{ Text string }
			StopReason string `json:"stop_reason"`
			Usage      fakeapi.AnthropicUsage
		}
		require.NoError(t, json.NewDecoder(resp.Body).Decode(&got))
		assert.Equal(t, "Hello from the", got.Content[0].Text)
		assert.Equal(t, "max_tokens", got.StopReason)
		assert.Equal(t, fakeapi.AnthropicUsage{InputTokens: 19, OutputTokens: 3}, got.Usage)
	})
	t.Run("stream", func(t *testing.T) {
		resp := post(t, srv.URL+"/v1/messages", "application/json", strings.Replace(strings.Replace(body, "%d", "100", 1), "%s", `,"stream":true`, 1), nil)
		require.Equal(t, http.StatusOK, resp.StatusCode)
		var types []string
		var text strings.Builder
		var in, out int64
		for _, e := range events(t, resp.Body) {
			var ev struct {
				Type    string
				Message struct{ Usage fakeapi.AnthropicUsage }
				Delta   struct{ Text string }
				Usage   fakeapi.AnthropicUsage
			}
			require.NoError(t, json.Unmarshal([]byte(e), &ev))
			types = append(types, ev.Type)
			text.WriteString(ev.Delta.Text)
			switch ev.Type {
			case "message_start":
				in = ev.Message.Usage.InputTokens
			case "message_delta":
				out = ev.Usage.OutputTokens
			}
		}
		assert.Equal(t, []string{"message_start", "content_block_start", "ping", "content_block_delta", "content_block_delta",
			"content_block_delta", "content_block_delta", "content_block_delta", "content_block_delta", "content_block_stop",
			"message_delta", "message_stop"}, types)
		assert.Equal(t, "Hello from the fake upstream.", text.String())
		assert.EqualValues(t, 19, in)
		assert.EqualValues(t, 6, out)
	})
}

func TestRateLimited(t *testing.T) {
	srv := start(t)
	for path, wantBody := range map[string]string{
		"/v1/chat/completions":                         `"code":"rate_limit_exceeded"`,
		"/v1/messages":                                 `"type":"rate_limit_error"`,
		"/2010-04-01/Accounts/AC1/Messages.json":       `"code":20429`,
		"/v3/mail/send":                                `"message":"too many requests"`,
		"/client/v4/accounts/acc/d1/database/db/query": `"success":false`,
	} {
		t.Run(path, func(t *testing.T) {
			resp := post(t, srv.URL+path, "application/json", `{}`, map[string]string{fakeapi.ScenarioHeader: "429"})
			require.Equal(t, http.StatusTooManyRequests, resp.StatusCode)
			assert.Equal(t, "1", resp.Header.Get("retry-after"))
			b, err := io.ReadAll(resp.Body)
			require.NoError(t, err)
			assert.Contains(t, string(b), wantBody)
		})
	}
}

func TestMessagingAndCalls(t *testing.T) {
	srv := start(t)
	form := url.Values{"To": {"+15550001111"}, "From": {"+15550002222"}, "Body": {strings.Repeat("a", 161)}}
	resp := post(t, srv.URL+"/2010-04-01/Accounts/AC1/Messages.json", "application/x-www-form-urlencoded", form.Encode(), nil)
	require.Equal(t, http.StatusCreated, resp.StatusCode)
	var msg struct {
		NumSegments string `json:"num_segments"`
		Price       string
	}
	require.NoError(t, json.NewDecoder(resp.Body).Decode(&msg))
	assert.Equal(t, "2", msg.NumSegments)
	assert.Equal(t, "-0.01580", msg.Price)

	resp = post(t, srv.URL+"/v3/mail/send", "application/json", `{"personalizations":[]}`, nil)
	assert.Equal(t, http.StatusAccepted, resp.StatusCode)

	r, err := http.Get(srv.URL + "/fakeapi/calls")
	require.NoError(t, err)
	defer r.Body.Close()
	var calls fakeapi.Calls
	require.NoError(t, json.NewDecoder(r.Body).Decode(&calls))
	assert.Equal(t, 2, calls.Total)
	assert.Equal(t, map[string]int{"POST /2010-04-01/Accounts/AC1/Messages.json": 1, "POST /v3/mail/send": 1}, calls.ByPath)
	require.Len(t, calls.Recent, 2)
	assert.Equal(t, "/v3/mail/send", calls.Recent[1].Path)
	assert.Equal(t, "application/json", calls.Recent[1].Headers["content-type"])
}

// TestCloudflare: the D1 query and KV read paths the bundled policy routes
// answer in Cloudflare's shapes, and a D1 call without sql is refused.
func TestCloudflare(t *testing.T) {
	srv := start(t)
	const d1 = "/client/v4/accounts/acc/d1/database/db/query"
	resp := post(t, srv.URL+d1, "application/json", `{"sql":"SELECT 1","params":[]}`, nil)
	require.Equal(t, http.StatusOK, resp.StatusCode)
	var env struct {
		Success bool
		Result  []struct {
			Success bool
			Results []any
		}
	}
	require.NoError(t, json.NewDecoder(resp.Body).Decode(&env))
	assert.True(t, env.Success)
	require.Len(t, env.Result, 1)
	assert.True(t, env.Result[0].Success)

	resp = post(t, srv.URL+d1, "application/json", `{}`, nil)
	assert.Equal(t, http.StatusBadRequest, resp.StatusCode)

	r, err := http.Get(srv.URL + "/client/v4/accounts/acc/storage/kv/namespaces/ns/values/session:42")
	require.NoError(t, err)
	defer r.Body.Close()
	require.Equal(t, http.StatusOK, r.StatusCode)
	b, err := io.ReadAll(r.Body)
	require.NoError(t, err)
	assert.Equal(t, "fake-value:session:42", string(b))
}
