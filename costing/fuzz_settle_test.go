package costing_test

import (
	"bytes"
	"encoding/json"
	"errors"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/tollgate/tollgate/costing"
	"github.com/tollgate/tollgate/policy"
)

// recordedResponses returns every recorded upstream response, by file name.
func recordedResponses(tb testing.TB) map[string][]byte {
	tb.Helper()
	paths, err := filepath.Glob(filepath.Join(responsesDir, "*"))
	require.NoError(tb, err)
	require.NotEmpty(tb, paths)
	out := map[string][]byte{}
	for _, p := range paths {
		b, err := os.ReadFile(p)
		require.NoError(tb, err)
		out[filepath.Base(p)] = b
	}
	return out
}

var fuzzProviders = []policy.Provider{policy.ProviderOpenAI, policy.ProviderAnthropic, policy.ProviderTwilio, policy.ProviderSendGrid, policy.ProviderGeneric}

// FuzzResponseReader: any bytes, in any chunking, never panic the reader;
// without strip every byte is forwarded as is; with strip what is forwarded
// is the input with whole events removed, never a byte invented; and the
// usage it reports is never negative.
func FuzzResponseReader(f *testing.F) {
	rec := recordedResponses(f)
	for _, name := range sortedKeys(rec) {
		for p := range fuzzProviders {
			f.Add(uint8(p), true, true, uint16(7), rec[name])
			f.Add(uint8(p), false, false, uint16(100), rec[name])
		}
	}
	f.Add(uint8(0), true, true, uint16(1), []byte("data: {\"choices\":[],\"usage\":{}}\r\rdata: [DONE]\r\n\r\n"))
	for _, name := range sortedKeys(rec) { // compressed: gzip and deflate bytes, and plain bytes gzipped by the fuzzer
		f.Add(uint8(8), true, false, uint16(5), compress(f, "gzip", rec[name]))
		f.Add(uint8(16), false, false, uint16(64), compress(f, "deflate", rec[name]))
		f.Add(uint8(24), true, true, uint16(3), rec[name])
	}
	f.Add(uint8(1), true, false, uint16(3), []byte("event: message_delta\ndata: {\"type\":\"message_delta\",\"usage\":{\"input_tokens\":-9}}\n\n"))
	f.Add(uint8(0), false, false, uint16(0), []byte(`{"usage":{"prompt_tokens":9223372036854775807,"completion_tokens":1e300}}`))
	f.Fuzz(func(t *testing.T, p uint8, sse, strip bool, chunk uint16, body []byte) {
		provider := fuzzProviders[int(p)%len(fuzzProviders)]
		r := costing.NewResponseReader(provider, sse, strip)
		// The high bits of p pick a Content-Encoding: the input is read as
		// compressed (fuzzed bytes), or compressed here first.
		plain := body
		switch (p / 8) % 4 {
		case 1:
			r.SetEncoding(costing.EncodingGzip)
		case 2:
			r.SetEncoding(costing.EncodingDeflate)
		case 3:
			body = compress(t, "gzip", body)
			r.SetEncoding(costing.EncodingGzip)
		}
		if (p/8)%4 != 0 {
			strip = false // a compressed stream is never cut
		}
		out := feed(r, body, int(chunk%4096))
		if (p/8)%4 == 3 && len(body) <= costing.MaxEncodedResponse {
			// Read after inflating, as the identity bytes are read.
			id := costing.NewResponseReader(provider, sse, false)
			feed(id, plain, 0)
			wu, wf, wc := id.Usage()
			gu, gf, gc := r.Usage()
			require.Equal(t, wu, gu)
			require.Equal(t, wf, gf)
			require.Equal(t, wc, gc)
		}
		if !strip || !sse {
			require.Equal(t, string(body), string(out))
		} else {
			require.LessOrEqual(t, len(out), len(body))
			require.True(t, isSubsequence(out, body), "strip only removes bytes")
		}
		u, _, _ := r.Usage()
		for _, v := range []int64{u.InputTokens, u.CachedInputTokens, u.CacheWriteTokens, u.OutputTokens, u.ReasoningTokens, u.Segments, int64(u.Price)} {
			require.GreaterOrEqual(t, v, int64(0))
		}
		require.LessOrEqual(t, u.CachedInputTokens, u.InputTokens)
		require.LessOrEqual(t, u.ReasoningTokens, u.OutputTokens)
		requireBounded(t, u)
	})
}

// requireBounded: Bounded holds every count to its bound, keeps the parts
// within their wholes, and changes nothing in usage within them.
func requireBounded(t *testing.T, u costing.Usage) {
	b, cut := u.Bounded()
	require.LessOrEqual(t, b.InputTokens, int64(costing.MaxUsageTokens))
	require.LessOrEqual(t, b.OutputTokens, int64(costing.MaxUsageTokens))
	require.LessOrEqual(t, b.CachedInputTokens+b.CacheWriteTokens, b.InputTokens)
	require.LessOrEqual(t, b.ReasoningTokens, b.OutputTokens)
	require.LessOrEqual(t, b.Segments, int64(costing.MaxUsageSegments))
	require.LessOrEqual(t, b.Price, costing.MaxUsagePrice)
	if !cut {
		require.Equal(t, u, b)
	}
}

// isSubsequence reports whether a's bytes appear in b in order.
func isSubsequence(a, b []byte) bool {
	for _, c := range a {
		i := bytes.IndexByte(b, c)
		if i < 0 {
			return false
		}
		b = b[i+1:]
	}
	return true
}

func FuzzParseUsage(f *testing.F) {
	rec := recordedResponses(f)
	for _, name := range sortedKeys(rec) {
		f.Add(uint8(0), rec[name])
		f.Add(uint8(1), rec[name])
		f.Add(uint8(2), rec[name])
	}
	f.Fuzz(func(t *testing.T, p uint8, body []byte) {
		provider := fuzzProviders[int(p)%len(fuzzProviders)]
		u, found, err := costing.ParseUsage(provider, body)
		if err != nil {
			require.True(t, errors.Is(err, costing.ErrMalformedBody), "%v", err)
			require.False(t, found)
			return
		}
		require.GreaterOrEqual(t, u.InputTokens, u.CachedInputTokens)
		require.GreaterOrEqual(t, u.OutputTokens, u.ReasoningTokens)
		require.GreaterOrEqual(t, u.CachedInputTokens, int64(0))
		require.GreaterOrEqual(t, u.Price, policy.Money(0))
		requireBounded(t, u)
	})
}

func FuzzParseSignal(f *testing.F) {
	f.Add(uint8(0), 429, "retry-after", "20", "x-ratelimit-reset-tokens", "6m0s")
	f.Add(uint8(1), 200, "anthropic-ratelimit-tokens-reset", "2026-12-01T12:00:05Z", "anthropic-ratelimit-tokens-remaining", "0")
	f.Add(uint8(3), 200, "x-ratelimit-reset", "99999999999999", "x-ratelimit-remaining", "0")
	f.Add(uint8(0), 429, "retry-after-ms", "1e9", "retry-after", "Tue, 01 Dec 2026 12:00:30 GMT")
	now := time.Date(2026, 12, 1, 12, 0, 0, 0, time.UTC)
	f.Fuzz(func(t *testing.T, p uint8, status int, k1, v1, k2, v2 string) {
		provider := fuzzProviders[int(p)%len(fuzzProviders)]
		s := costing.ParseSignal(provider, status, map[string]string{k1: v1, k2: v2}, now)
		require.GreaterOrEqual(t, s.Pause, time.Duration(0))
		require.LessOrEqual(t, s.Pause, costing.MaxPause)
		require.GreaterOrEqual(t, s.RemainingTokens, int64(-1))
		require.GreaterOrEqual(t, s.RemainingRequests, int64(-1))
		require.GreaterOrEqual(t, s.ResetTokens, time.Duration(0))
		require.GreaterOrEqual(t, s.ResetRequests, time.Duration(0))
		if status == 429 {
			require.True(t, s.Limited)
			require.Positive(t, s.Pause)
		}
	})
}

// FuzzEnsureStreamUsage: a rewrite is valid JSON that asks for usage and
// keeps every other field; a refusal returns the body untouched.
func FuzzEnsureStreamUsage(f *testing.F) {
	for _, b := range bodies(f, "openai") {
		f.Add(b)
		f.Add(bytes.Replace(b, []byte(`"model"`), []byte(`"stream":true,"model"`), 1))
	}
	f.Add([]byte(`{"stream":true,"stream_options":{"include_usage":false,"x":1}}`))
	f.Fuzz(func(t *testing.T, body []byte) {
		out, changed, err := costing.EnsureStreamUsage(costing.KindChat, body)
		if err != nil || !changed {
			require.Equal(t, string(body), string(out))
			return
		}
		var doc map[string]json.RawMessage
		require.NoError(t, json.Unmarshal(out, &doc), "%s", out)
		var opts struct {
			IncludeUsage bool `json:"include_usage"`
		}
		require.NoError(t, json.Unmarshal(doc["stream_options"], &opts))
		require.True(t, opts.IncludeUsage)
		var before map[string]json.RawMessage
		if json.Unmarshal(body, &before) == nil {
			for k := range before {
				assert.Contains(t, doc, k)
			}
		}
	})
}
