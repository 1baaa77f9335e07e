package costing_test

import (
	"bytes"
	"encoding/json"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/tollgate/tollgate/costing"
	"github.com/tollgate/tollgate/policy"
)

// responsesDir holds recorded upstream responses, shared with authz's tests.
const responsesDir = "../testdata/responses"

func response(tb testing.TB, name string) []byte {
	tb.Helper()
	b, err := os.ReadFile(filepath.Join(responsesDir, name))
	require.NoError(tb, err)
	return b
}

func TestParseUsageRecorded(t *testing.T) {
	tests := map[string]struct {
		provider policy.Provider
		file     string
		want     costing.Usage
	}{
		"openai chat": {policy.ProviderOpenAI, "openai-chat.json", costing.Usage{
			Model: "gpt-4o-2024-08-06", InputTokens: 1117, CachedInputTokens: 1024, OutputTokens: 46}},
		"openai embeddings": {policy.ProviderOpenAI, "openai-embeddings.json", costing.Usage{
			Model: "text-embedding-3-small", InputTokens: 8}},
		// input_tokens (2095) excludes the cache read (1800): 3895 in all.
		"anthropic": {policy.ProviderAnthropic, "anthropic-message.json", costing.Usage{
			Model: "claude-sonnet-4-5-20250929", InputTokens: 3895, CachedInputTokens: 1800, OutputTokens: 503}},
		"twilio, price not yet known": {policy.ProviderTwilio, "twilio-message.json", costing.Usage{Segments: 2}},
		"twilio, priced":              {policy.ProviderTwilio, "twilio-message-priced.json", costing.Usage{Segments: 1, Price: 7_900_000, HasPrice: true}},
	}
	for name, tc := range tests {
		t.Run(name, func(t *testing.T) {
			u, found, err := costing.ParseUsage(tc.provider, response(t, tc.file))
			require.NoError(t, err)
			assert.True(t, found)
			assert.Equal(t, tc.want, u)
		})
	}
}

func TestParseUsageEdges(t *testing.T) {
	tests := map[string]struct {
		provider policy.Provider
		body     string
		found    bool
		want     costing.Usage
		wantErr  bool
	}{
		"responses api":         {policy.ProviderOpenAI, `{"model":"o3","usage":{"input_tokens":100,"input_tokens_details":{"cached_tokens":40},"output_tokens":900,"output_tokens_details":{"reasoning_tokens":700}}}`, true, costing.Usage{Model: "o3", InputTokens: 100, CachedInputTokens: 40, OutputTokens: 900, ReasoningTokens: 700}, false},
		"no usage":              {policy.ProviderOpenAI, `{"object":"list","data":[]}`, false, costing.Usage{}, false},
		"usage null":            {policy.ProviderOpenAI, `{"model":"m","usage":null}`, false, costing.Usage{Model: "m"}, false},
		"negative counts":       {policy.ProviderOpenAI, `{"usage":{"prompt_tokens":-5,"completion_tokens":3}}`, true, costing.Usage{OutputTokens: 3}, false},
		"cached above input":    {policy.ProviderOpenAI, `{"usage":{"prompt_tokens":5,"prompt_tokens_details":{"cached_tokens":50}}}`, true, costing.Usage{InputTokens: 5, CachedInputTokens: 5}, false},
		"not json":              {policy.ProviderOpenAI, `<html>502</html>`, false, costing.Usage{}, true},
		"array":                 {policy.ProviderAnthropic, `[1]`, false, costing.Usage{}, true},
		"wrong type":            {policy.ProviderOpenAI, `{"usage":{"prompt_tokens":"many"}}`, false, costing.Usage{}, true},
		"twilio numeric":        {policy.ProviderTwilio, `{"num_segments":3,"price":-0.0225,"price_unit":"USD"}`, true, costing.Usage{Segments: 3, Price: 22_500_000, HasPrice: true}, false},
		"twilio other currency": {policy.ProviderTwilio, `{"num_segments":"1","price":"-0.0500","price_unit":"EUR"}`, true, costing.Usage{Segments: 1}, false},
		"twilio bad price":      {policy.ProviderTwilio, `{"num_segments":"1","price":"free"}`, false, costing.Usage{}, true},
		"twilio nothing":        {policy.ProviderTwilio, `{"sid":"SM1"}`, false, costing.Usage{}, false},
		"sendgrid":              {policy.ProviderSendGrid, `{}`, false, costing.Usage{}, false},
	}
	for name, tc := range tests {
		t.Run(name, func(t *testing.T) {
			u, found, err := costing.ParseUsage(tc.provider, []byte(tc.body))
			if tc.wantErr {
				require.ErrorIs(t, err, costing.ErrMalformedBody)
				return
			}
			require.NoError(t, err)
			assert.Equal(t, tc.found, found)
			assert.Equal(t, tc.want, u)
		})
	}
}

// feed writes body to r in chunks of n bytes (n <= 0: whole) and returns
// what r forwarded, flush included.
func feed(r *costing.ResponseReader, body []byte, n int) []byte {
	var out []byte
	if n <= 0 {
		n = len(body) + 1
	}
	for len(body) > 0 {
		k := min(n, len(body))
		out = append(out, r.Write(body[:k])...)
		body = body[k:]
	}
	return append(out, r.Flush()...)
}

func TestResponseReaderStreams(t *testing.T) {
	tests := map[string]struct {
		provider policy.Provider
		file     string
		want     costing.Usage
		found    bool
		complete bool
	}{
		"openai chat with usage": {policy.ProviderOpenAI, "openai-chat-stream.sse",
			costing.Usage{Model: "gpt-4o-mini-2024-07-18", InputTokens: 19, OutputTokens: 10}, true, true},
		"openai chat without usage": {policy.ProviderOpenAI, "openai-chat-stream-no-usage.sse",
			costing.Usage{Model: "gpt-4o-mini-2024-07-18"}, false, false},
		"openai responses": {policy.ProviderOpenAI, "openai-responses-stream.sse",
			costing.Usage{Model: "gpt-4.1-2025-04-14", InputTokens: 37, OutputTokens: 11}, true, true},
		// message_start: 472 + 2048 written to the cache; message_delta: 15 out.
		"anthropic": {policy.ProviderAnthropic, "anthropic-stream.sse",
			costing.Usage{Model: "claude-sonnet-4-5-20250929", InputTokens: 2520, CacheWriteTokens: 2048, OutputTokens: 15}, true, true},
	}
	for name, tc := range tests {
		body := response(t, tc.file)
		for _, chunk := range []int{0, 1, 7, 64, 500} {
			for _, crlf := range []bool{false, true} {
				in := body
				if crlf {
					in = bytes.ReplaceAll(body, []byte("\n"), []byte("\r\n"))
				}
				t.Run(name, func(t *testing.T) {
					r := costing.NewResponseReader(tc.provider, true, false)
					out := feed(r, in, chunk)
					assert.Equal(t, in, out, "without strip every byte passes as is")
					u, found, complete := r.Usage()
					assert.Equal(t, tc.want, u, "chunks of %d, crlf %v", chunk, crlf)
					assert.Equal(t, tc.found, found)
					assert.Equal(t, tc.complete, complete)
				})
			}
		}
	}
}

func TestResponseReaderCutStream(t *testing.T) {
	body := response(t, "anthropic-stream.sse")
	cut := body[:bytes.Index(body, []byte("event: message_delta"))]
	r := costing.NewResponseReader(policy.ProviderAnthropic, true, false)
	feed(r, cut, 100)
	u, found, complete := r.Usage()
	assert.True(t, found, "message_start said what went in")
	assert.False(t, complete, "no message_stop: the stream was cut")
	assert.Equal(t, int64(2), u.OutputTokens, "only message_start's count")

	chat := response(t, "openai-chat-stream.sse")
	r = costing.NewResponseReader(policy.ProviderOpenAI, true, false)
	feed(r, chat[:bytes.Index(chat, []byte(`"choices":[]`))], 0)
	_, found, complete = r.Usage()
	assert.False(t, found)
	assert.False(t, complete)
}

// TestResponseReaderStrip: the usage chunk Tollgate asked for is removed,
// and the "usage":null OpenAI adds to every chunk once asked, from each
// event that comes whole in one chunk (one split across chunks went on as
// it came: Tollgate holds nothing but the usage chunk); every other byte
// reaches the worker, in any chunking.
func TestResponseReaderStrip(t *testing.T) {
	body := response(t, "openai-chat-stream.sse")
	events := bytes.SplitAfter(body, []byte("\n\n"))
	var want []byte
	for _, e := range events {
		if !bytes.Contains(e, []byte(`"choices":[]`)) {
			want = append(want, bytes.ReplaceAll(e, []byte(`,"usage":null`), nil)...)
		}
	}
	require.NotContains(t, string(want), `"usage"`)
	noNull := func(b []byte) string { return string(bytes.ReplaceAll(b, []byte(`,"usage":null`), nil)) }
	for _, chunk := range []int{0, 1, 3, 50, 333} {
		r := costing.NewResponseReader(policy.ProviderOpenAI, true, true)
		out := feed(r, body, chunk)
		assert.Equal(t, string(want), noNull(out), "chunks of %d", chunk)
		if chunk == 0 {
			assert.Equal(t, string(want), string(out), "whole events lose their usage:null")
		}
		u, found, complete := r.Usage()
		assert.True(t, found)
		assert.True(t, complete)
		assert.Equal(t, int64(29), u.Tokens())
	}

	// A stream with no usage chunk passes whole, and a cut one loses
	// nothing of what it held.
	noUsage := response(t, "openai-chat-stream-no-usage.sse")
	r := costing.NewResponseReader(policy.ProviderOpenAI, true, true)
	assert.Equal(t, noUsage, feed(r, noUsage, 10))
	partial := []byte("data: {\"choices\":[{\"delta\":{\"content\":\"hal")
	r = costing.NewResponseReader(policy.ProviderOpenAI, true, true)
	assert.Equal(t, partial, r.Write(partial), "an incomplete event goes on at once: a lost stream must not lose it")
	assert.Empty(t, r.Flush())
	// Only the event after a finished choice is held: it can only be the
	// usage chunk (or [DONE], given back at its end).
	finish := []byte("data: {\"choices\":[{\"delta\":{},\"finish_reason\":\"stop\"}]}\n\n")
	r = costing.NewResponseReader(policy.ProviderOpenAI, true, true)
	assert.Equal(t, finish, r.Write(finish))
	assert.Empty(t, r.Write([]byte("data: {\"choices\":[],\"us")), "held")
	assert.Empty(t, r.Write([]byte("age\":{\"prompt_tokens\":1}}\n\n")), "dropped")
	assert.Equal(t, "data: [DO", string(r.Write([]byte("data: [DO"))), "after it, nothing is held")
	r = costing.NewResponseReader(policy.ProviderOpenAI, true, true)
	r.Write(finish)
	assert.Empty(t, r.Write([]byte("data: [DO")), "no usage chunk came: [DONE] was held")
	assert.Equal(t, "data: [DONE]\n\n", string(r.Write([]byte("NE]\n\n"))), "and given back at its end")
}

func TestResponseReaderLimits(t *testing.T) {
	// An event over MaxEvent is passed through unread, never buffered.
	huge := append([]byte("data: "), bytes.Repeat([]byte("x"), costing.MaxEvent+10)...)
	huge = append(huge, "\n\ndata: {\"choices\":[],\"usage\":{\"prompt_tokens\":1}}\n\n"...)
	r := costing.NewResponseReader(policy.ProviderOpenAI, true, true)
	assert.Equal(t, huge, feed(r, huge, 4096))
	_, found, _ := r.Usage()
	assert.False(t, found, "the reader gave up on the stream")

	// A JSON body over MaxJSONResponse: usage from its tail.
	var b bytes.Buffer
	b.WriteString(`{"object":"list","model":"text-embedding-3-large","data":[`)
	for i := 0; b.Len() < costing.MaxJSONResponse+100_000; i++ {
		if i > 0 {
			b.WriteByte(',')
		}
		b.WriteString(`{"object":"embedding","index":1,"embedding":[0.0023064255,-0.009327292,-0.0028842222]}`)
	}
	b.WriteString(`],"usage":{"prompt_tokens":81920,"total_tokens":81920}}`)
	r = costing.NewResponseReader(policy.ProviderOpenAI, false, false)
	feed(r, b.Bytes(), 16384)
	u, found, complete := r.Usage()
	assert.True(t, found)
	assert.True(t, complete)
	assert.Equal(t, costing.Usage{Model: "text-embedding-3-large", InputTokens: 81920}, u)

	// A JSON body cut short: nothing found, not complete.
	r = costing.NewResponseReader(policy.ProviderOpenAI, false, false)
	feed(r, response(t, "openai-chat.json")[:300], 0)
	_, found, complete = r.Usage()
	assert.False(t, found)
	assert.False(t, complete)
}

const settlePolicy = `
pools:
  tpm:  {unit: token, capacity: 1000000, refill_per_second: 1000, price: "1/1M"}
  rpm:  {unit: request, capacity: 100, refill_per_second: 1, price: "0.001"}
  sms:  {unit: segment, capacity: 500, refill_per_second: 8, price: "0.0075"}
models:
  "gpt-4o*": {input: "2.50/1M", output: "10/1M", cached_input: "1.25/1M"}
  "claude-sonnet-4*": {input: "3/1M", output: "15/1M", cached_input: "0.30/1M", cache_write: "3.75/1M"}
routes:
  openai:    {host: api.openai.com, provider: openai, pools: [tpm, rpm]}
  anthropic: {host: api.anthropic.com, provider: anthropic, pools: [tpm]}
  unpriced:  {host: llm.example, provider: openai, pools: [tpm]}
  twilio:    {host: api.twilio.com, provider: twilio, pools: [sms]}
`

func TestPrice(t *testing.T) {
	set, err := policy.Compile(policy.Source{Name: "s.yaml", Data: []byte(settlePolicy)})
	require.NoError(t, err)
	tok := tokenizer(t)
	estimate := func(host, path, body string) (*policy.Route, costing.Estimate) {
		r := set.MatchRoute(host, path, "")
		require.NotNil(t, r)
		return r, costing.Estimator{Tok: tok}.Estimate(set, r, costing.Call{Path: path, Body: []byte(body), BodySize: int64(len(body)),
			ContentType: "application/x-www-form-urlencoded"})
	}

	t.Run("openai: cached input at its discount", func(t *testing.T) {
		r, est := estimate("api.openai.com", "/v1/chat/completions", `{"model":"gpt-4o","messages":[{"role":"user","content":"hi"}],"max_tokens":100}`)
		u := costing.Usage{InputTokens: 1117, CachedInputTokens: 1024, OutputTokens: 46}
		a := costing.Price(set, r, est, u)
		// 93 × $2.50/1M + 1024 × $1.25/1M + 46 × $10/1M, each rounded up to a nano-dollar.
		wantIn := policy.Money(232_500 + 1_280_000)
		wantOut := policy.Money(460_000)
		assert.Equal(t, wantIn, a.InputCost)
		assert.Equal(t, wantOut, a.OutputCost)
		assert.Equal(t, wantIn+wantOut+1_000_000, a.Cost, "the request pool's unit price on top")
		assert.Equal(t, []costing.PoolCost{{Pool: set.Pools["tpm"], Units: 1163}, {Pool: set.Pools["rpm"], Units: 1}}, a.Pools)
		assert.Equal(t, []bool{true, false}, a.Measured)
	})
	t.Run("anthropic: reads and writes of the cache", func(t *testing.T) {
		r, est := estimate("api.anthropic.com", "/v1/messages", `{"model":"claude-sonnet-4-5","max_tokens":1024,"messages":[{"role":"user","content":"hi"}]}`)
		u := costing.Usage{InputTokens: 2520, CacheWriteTokens: 2048, CachedInputTokens: 0, OutputTokens: 15}
		a := costing.Price(set, r, est, u)
		// 472 × $3/1M + 2048 × $3.75/1M; 15 × $15/1M
		assert.Equal(t, policy.Money(1_416_000+7_680_000), a.InputCost)
		assert.Equal(t, policy.Money(225_000), a.OutputCost)
		assert.Equal(t, a.InputCost+a.OutputCost, a.Cost)
	})
	t.Run("unpriced model: the pool's price", func(t *testing.T) {
		r, est := estimate("llm.example", "/v1/chat/completions", `{"model":"local-llama","messages":[]}`)
		a := costing.Price(set, r, est, costing.Usage{InputTokens: 500, OutputTokens: 500})
		assert.Equal(t, policy.Money(1_000_000), a.Cost, "1000 tokens at $1/1M")
	})
	t.Run("no model in the request: the response's", func(t *testing.T) {
		r, est := estimate("api.openai.com", "/openai/deployments/prod/chat/completions", `{"messages":[{"role":"user","content":"hi"}]}`)
		require.Empty(t, est.PriceEntry)
		a := costing.Price(set, r, est, costing.Usage{Model: "gpt-4o-2024-08-06", InputTokens: 1000})
		assert.Equal(t, policy.Money(2_500_000+1_000_000), a.Cost)
	})
	t.Run("twilio: its own price, else segments", func(t *testing.T) {
		r, est := estimate("api.twilio.com", "/2010-04-01/Accounts/AC1/Messages.json", "To=%2B15558675310&From=%2B15557122661&Body=hi")
		require.Equal(t, policy.Money(7_500_000), est.Cost)
		a := costing.Price(set, r, est, costing.Usage{Segments: 1, Price: 7_900_000, HasPrice: true})
		assert.Equal(t, policy.Money(7_900_000), a.Cost)
		a = costing.Price(set, r, est, costing.Usage{Segments: 3})
		assert.Equal(t, policy.Money(22_500_000), a.Cost)
		assert.Equal(t, int64(3), a.Pools[0].Units)
	})
}

func TestEnsureStreamUsage(t *testing.T) {
	tests := map[string]struct {
		kind, body string
		changed    bool
		want       string // exact output when changed and not "" ; else checked by decoding
	}{
		"adds it first":            {costing.KindChat, `{"model":"m","stream":true,"messages":[]}`, true, `{"stream_options":{"include_usage":true},"model":"m","stream":true,"messages":[]}`},
		"leading space kept":       {costing.KindCompletions, ` { "stream": true }`, true, ` {"stream_options":{"include_usage":true}, "stream": true }`},
		"already asked":            {costing.KindChat, `{"stream":true,"stream_options":{"include_usage":true}}`, false, ""},
		"options without it":       {costing.KindChat, `{"stream":true,"stream_options":{"include_obfuscation":false},"model":"m"}`, true, ""},
		"asked false":              {costing.KindChat, `{"stream":true,"stream_options":{"include_usage":false}}`, true, ""},
		"not streaming":            {costing.KindChat, `{"stream":false}`, false, ""},
		"stream absent":            {costing.KindChat, `{"model":"m"}`, false, ""},
		"responses always have it": {costing.KindResponses, `{"stream":true}`, false, ""},
		"embeddings":               {costing.KindEmbeddings, `{"stream":true}`, false, ""},
	}
	for name, tc := range tests {
		t.Run(name, func(t *testing.T) {
			out, changed, err := costing.EnsureStreamUsage(tc.kind, []byte(tc.body))
			require.NoError(t, err)
			assert.Equal(t, tc.changed, changed)
			if !changed {
				assert.Equal(t, tc.body, string(out))
				return
			}
			if tc.want != "" {
				assert.Equal(t, tc.want, string(out))
			}
			var doc map[string]json.RawMessage
			require.NoError(t, json.Unmarshal(out, &doc))
			var opts map[string]json.RawMessage
			require.NoError(t, json.Unmarshal(doc["stream_options"], &opts))
			assert.Equal(t, "true", string(opts["include_usage"]))
			var before map[string]json.RawMessage
			require.NoError(t, json.Unmarshal([]byte(tc.body), &before))
			for k, v := range before {
				if k != "stream_options" {
					assert.JSONEq(t, string(v), string(doc[k]), "field %s kept", k)
				}
			}
		})
	}
	for _, bad := range []string{`[]`, `{"stream":true`, `{"stream":true,"stream_options":[1]}`} {
		out, changed, err := costing.EnsureStreamUsage(costing.KindChat, []byte(bad))
		assert.ErrorIs(t, err, costing.ErrMalformedBody, bad)
		assert.False(t, changed)
		assert.Equal(t, bad, string(out), "a refused body is returned as is")
	}
}

func TestParseSignal(t *testing.T) {
	now := time.Date(2026, 12, 1, 12, 0, 0, 0, time.UTC)
	tests := map[string]struct {
		provider policy.Provider
		status   int
		headers  map[string]string
		want     costing.Signal
	}{
		"openai ok": {policy.ProviderOpenAI, 200, map[string]string{
			"x-ratelimit-limit-requests": "500", "x-ratelimit-remaining-requests": "499", "x-ratelimit-reset-requests": "120ms",
			"x-ratelimit-limit-tokens": "30000", "x-ratelimit-remaining-tokens": "28500", "x-ratelimit-reset-tokens": "6m0s",
		}, costing.Signal{RemainingTokens: 28500, RemainingRequests: 499, ResetTokens: 6 * time.Minute, ResetRequests: 120 * time.Millisecond}},
		"openai 429 with retry-after": {policy.ProviderOpenAI, 429, map[string]string{
			"retry-after": "20", "x-ratelimit-remaining-tokens": "0", "x-ratelimit-reset-tokens": "1.442s",
		}, costing.Signal{RemainingTokens: 0, RemainingRequests: -1, ResetTokens: 1442 * time.Millisecond, Limited: true, Pause: 20 * time.Second}},
		"openai 429, the reset of what ran out": {policy.ProviderOpenAI, 429, map[string]string{
			"x-ratelimit-remaining-tokens": "0", "x-ratelimit-reset-tokens": "1.442s", "x-ratelimit-remaining-requests": "3", "x-ratelimit-reset-requests": "9s",
		}, costing.Signal{RemainingTokens: 0, RemainingRequests: 3, ResetTokens: 1442 * time.Millisecond, ResetRequests: 9 * time.Second, Limited: true, Pause: 1442 * time.Millisecond}},
		"openai retry-after-ms": {policy.ProviderOpenAI, 429, map[string]string{"retry-after-ms": "250", "retry-after": "1"},
			costing.Signal{RemainingTokens: -1, RemainingRequests: -1, Limited: true, Pause: 250 * time.Millisecond}},
		"429 with nothing else": {policy.ProviderGeneric, 429, nil,
			costing.Signal{RemainingTokens: -1, RemainingRequests: -1, Limited: true, Pause: costing.DefaultPause}},
		"retry-after as a date": {policy.ProviderTwilio, 429, map[string]string{"retry-after": "Tue, 01 Dec 2026 12:00:30 GMT"},
			costing.Signal{RemainingTokens: -1, RemainingRequests: -1, Limited: true, Pause: 30 * time.Second}},
		"retry-after huge": {policy.ProviderOpenAI, 429, map[string]string{"retry-after": "99999999"},
			costing.Signal{RemainingTokens: -1, RemainingRequests: -1, Limited: true, Pause: costing.MaxPause}},
		"anthropic": {policy.ProviderAnthropic, 200, map[string]string{
			"anthropic-ratelimit-requests-remaining": "49", "anthropic-ratelimit-requests-reset": "2026-12-01T12:00:01Z",
			"anthropic-ratelimit-tokens-remaining": "38000", "anthropic-ratelimit-tokens-reset": "2026-12-01T12:00:05Z",
			"anthropic-ratelimit-input-tokens-remaining": "10", // the combined count wins
		}, costing.Signal{RemainingTokens: 38000, RemainingRequests: 49, ResetTokens: 5 * time.Second, ResetRequests: time.Second}},
		"anthropic, input and output only": {policy.ProviderAnthropic, 200, map[string]string{
			"anthropic-ratelimit-input-tokens-remaining": "30000", "anthropic-ratelimit-input-tokens-reset": "2026-12-01T12:00:02Z",
			"anthropic-ratelimit-output-tokens-remaining": "7000", "anthropic-ratelimit-output-tokens-reset": "2026-12-01T12:00:09Z",
		}, costing.Signal{RemainingTokens: 7000, RemainingRequests: -1, ResetTokens: 9 * time.Second}},
		"anthropic 529": {policy.ProviderAnthropic, 529, map[string]string{"retry-after": "3"},
			costing.Signal{RemainingTokens: -1, RemainingRequests: -1, Pause: 3 * time.Second}},
		"nothing left without a 429": {policy.ProviderOpenAI, 200, map[string]string{"x-ratelimit-remaining-requests": "0", "x-ratelimit-reset-requests": "2s"},
			costing.Signal{RemainingTokens: -1, RemainingRequests: 0, ResetRequests: 2 * time.Second, Pause: 2 * time.Second}},
		"sendgrid": {policy.ProviderSendGrid, 200, map[string]string{"x-ratelimit-remaining": "590", "x-ratelimit-reset": "1796126460"},
			costing.Signal{RemainingTokens: -1, RemainingRequests: 590, ResetRequests: 60 * time.Second}},
		"garbage": {policy.ProviderOpenAI, 200, map[string]string{"x-ratelimit-remaining-tokens": "lots", "x-ratelimit-reset-tokens": "-3s", "retry-after": "soon"},
			costing.Signal{RemainingTokens: -1, RemainingRequests: -1}},
	}
	for name, tc := range tests {
		t.Run(name, func(t *testing.T) {
			got := costing.ParseSignal(tc.provider, tc.status, tc.headers, now)
			assert.Equal(t, tc.want, got)
			assert.Equal(t, tc.want.RemainingTokens >= 0 || tc.want.RemainingRequests >= 0 || tc.want.Pause > 0, got.Known())
		})
	}
}

func TestLearner(t *testing.T) {
	cfg := policy.AdaptiveConfig{Percentile: 90, MinPercent: 50, MaxPercent: 150, Window: 10, MinSamples: 5}
	l := costing.NewLearner()
	_, ok := l.Percent("k", cfg)
	assert.False(t, ok, "nothing learned yet")
	for range 4 {
		l.Observe("k", 1000, 700, cfg.Window)
	}
	_, ok = l.Percent("k", cfg)
	assert.False(t, ok, "below min_samples")
	l.Observe("k", 1000, 800, cfg.Window)
	pct, ok := l.Percent("k", cfg)
	require.True(t, ok)
	assert.Equal(t, int64(80), pct, "p90 of {70,70,70,70,80}")

	for _, a := range []policy.Money{100, 100, 100, 100, 100} { // now 10 samples: five at 10%
		l.Observe("k", 1000, a, cfg.Window)
	}
	pct, _ = l.Percent("k", cfg)
	assert.Equal(t, int64(70), pct, "p90 of five 10%s, four 70%s and one 80% is 70%")
	for range 10 {
		l.Observe("k", 1000, 10, cfg.Window) // the window forgets the old ratios
	}
	pct, _ = l.Percent("k", cfg)
	assert.Equal(t, int64(50), pct, "bounded below by min_percent")
	for range 10 {
		l.Observe("k", 1000, 5000, cfg.Window)
	}
	pct, _ = l.Percent("k", cfg)
	assert.Equal(t, int64(150), pct, "bounded above by max_percent")

	_, ok = l.Percent("other", cfg)
	assert.False(t, ok, "series are per key")
	l.Observe("k", 0, 100, cfg.Window) // an estimate of nothing teaches nothing
	cfg.Window = 4                     // a reload shrinks the window
	l.Observe("k", 1000, 1000, cfg.Window)
	cfg.MinSamples = 4
	pct, ok = l.Percent("k", cfg)
	require.True(t, ok)
	assert.Equal(t, int64(150), pct, "p90 of the newest four: 500%, 500%, 500%, 100%")
}

func TestEstimateAdaptive(t *testing.T) {
	set, err := policy.Compile(policy.Source{Name: "a.yaml", Data: []byte(settlePolicy + `
defaults:
  reservation: adaptive
  adaptive: {percentile: 100, min_percent: 10, max_percent: 200, window: 20, min_samples: 3}
`)})
	require.NoError(t, err)
	l := costing.NewLearner()
	e := costing.Estimator{Tok: tokenizer(t), Learner: l}
	r := set.Route("openai")
	body := []byte(`{"model":"gpt-4o","messages":[{"role":"user","content":"hi"}],"max_tokens":1000}`)
	call := costing.Call{Path: "/v1/chat/completions", Body: body, BodySize: int64(len(body))}
	est := e.Estimate(set, r, call)
	assert.Equal(t, policy.Adaptive, est.Strategy)
	assert.Equal(t, int64(120), est.ReservePercent, "conservative until it has learned")
	for range 3 {
		l.Observe(costing.LearnKey(r, est.PriceEntry), est.Cost, est.Cost*3/10, set.Defaults.Adaptive.Window)
	}
	est = e.Estimate(set, r, call)
	assert.Equal(t, int64(30), est.ReservePercent)
	assert.Equal(t, costing.ApplyStrategy(est.Cost, 30), est.Reserve)
	assert.Equal(t, "gpt-4o*", est.PriceEntry)
	assert.True(t, strings.HasPrefix(costing.LearnKey(r, est.PriceEntry), "openai"))
}

// TestResponseReaderStripCut: the ext_proc stream is lost after any chunk
// (Envoy then fails open and passes the rest of the response straight on):
// the worker's bytes are the upstream's minus only bytes of the usage event
// Tollgate asked for (all of it once past it; the part it saw when the
// cut falls inside it, whose rest is no data line), never a byte of any
// other event. "usage":null removals aside.
func TestResponseReaderStripCut(t *testing.T) {
	body := response(t, "openai-chat-stream.sse")
	start := bytes.Index(body, []byte(`data: {"id":"chatcmpl-BKj2pWqL3n","object":"chat.completion.chunk","created":1744213991,"model":"gpt-4o-mini-2024-07-18","service_tier":"default","system_fingerprint":"fp_44added55e","choices":[],`))
	require.Positive(t, start)
	end := start + bytes.Index(body[start:], []byte("\n\n")) + 2
	noNull := func(b []byte) string { return string(bytes.ReplaceAll(b, []byte(`,"usage":null`), nil)) }
	for _, chunk := range []int{1, 2, 7, 37, 100} {
		for cut := 0; cut <= len(body); cut += chunk {
			r := costing.NewResponseReader(policy.ProviderOpenAI, true, true)
			var worker []byte
			for off := 0; off < cut; off += chunk {
				worker = append(worker, r.Write(body[off:min(off+chunk, cut)])...)
			}
			worker = append(worker, body[cut:]...) // Envoy fails open: the rest goes straight on
			var want []byte
			switch {
			case cut <= start:
				want = body
			case cut >= end:
				want = append(append([]byte{}, body[:start]...), body[end:]...)
			default:
				want = append(append([]byte{}, body[:start]...), body[cut:]...)
			}
			require.Equal(t, noNull(want), noNull(worker), "chunks of %d, cut at %d", chunk, cut)
		}
	}
}

// TestResponseReaderEmptyBody: an answer with no body (SendGrid's 202
// Accepted) is whole, with no usage in it: it settles as "no_usage", not
// as a cut response.
func TestResponseReaderEmptyBody(t *testing.T) {
	for _, p := range []policy.Provider{policy.ProviderSendGrid, policy.ProviderOpenAI} {
		r := costing.NewResponseReader(p, false, false)
		_, found, complete := r.Usage()
		assert.False(t, found, p)
		assert.True(t, complete, p)
	}
}
