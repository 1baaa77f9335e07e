package costing_test

import (
	"bytes"
	"compress/flate"
	"compress/gzip"
	"compress/zlib"
	"fmt"
	"strings"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/tollgate/tollgate/costing"
	"github.com/tollgate/tollgate/policy"
)

// compress encodes body as enc would send it ("deflate-raw": the raw
// deflate some servers send for "deflate").
func compress(tb testing.TB, enc string, body []byte) []byte {
	tb.Helper()
	var buf bytes.Buffer
	var w interface {
		Write([]byte) (int, error)
		Close() error
	}
	switch enc {
	case "gzip":
		w = gzip.NewWriter(&buf)
	case "deflate":
		w = zlib.NewWriter(&buf)
	case "deflate-raw":
		fw, err := flate.NewWriter(&buf, flate.DefaultCompression)
		require.NoError(tb, err)
		w = fw
	default:
		tb.Fatalf("no encoding %q", enc)
	}
	_, err := w.Write(body)
	require.NoError(tb, err)
	require.NoError(tb, w.Close())
	return buf.Bytes()
}

// TestResponseReaderCompressed: a gzip or deflate response (JSON or SSE)
// yields exactly the usage its identity form does, and passes untouched,
// Strip or not (compressed bytes cannot be cut); br, a cut body and a body
// that inflates past the limit are settled at the estimate.
func TestResponseReaderCompressed(t *testing.T) {
	rec := recordedResponses(t)
	tests := map[string]struct {
		provider policy.Provider
		file     string
		sse      bool
	}{
		"openai json":       {provider: policy.ProviderOpenAI, file: "openai-chat.json"},
		"openai sse":        {provider: policy.ProviderOpenAI, file: "openai-chat-stream.sse", sse: true},
		"openai responses":  {provider: policy.ProviderOpenAI, file: "openai-responses-stream.sse", sse: true},
		"anthropic json":    {provider: policy.ProviderAnthropic, file: "anthropic-message.json"},
		"anthropic sse":     {provider: policy.ProviderAnthropic, file: "anthropic-stream.sse", sse: true},
		"twilio json price": {provider: policy.ProviderTwilio, file: "twilio-message-priced.json"},
	}
	for name, tc := range tests {
		plain := rec[tc.file]
		want := costing.NewResponseReader(tc.provider, tc.sse, false)
		feed(want, plain, 0)
		wu, wfound, wcomplete := want.Usage()
		require.True(t, wfound, tc.file)
		for _, enc := range []string{"gzip", "deflate", "deflate-raw"} {
			for _, chunk := range []int{1, 7, 0} {
				t.Run(fmt.Sprintf("%s/%s/chunk %d", name, enc, chunk), func(t *testing.T) {
					body := compress(t, enc, plain)
					r := costing.NewResponseReader(tc.provider, tc.sse, true)
					r.SetEncoding(costing.ParseEncoding(strings.TrimSuffix(enc, "-raw")))
					require.False(t, r.Stripping(), "a compressed stream is never cut")
					out := feed(r, body, chunk)
					assert.Equal(t, body, out, "forwarded untouched")
					u, found, complete := r.Usage()
					assert.Equal(t, wu, u)
					assert.Equal(t, wfound, found)
					assert.Equal(t, wcomplete, complete)
				})
			}
		}
	}

	t.Run("br is not read", func(t *testing.T) {
		r := costing.NewResponseReader(policy.ProviderOpenAI, false, false)
		r.SetEncoding(costing.ParseEncoding("br"))
		feed(r, []byte("\x1b\x00"), 0)
		_, found, complete := r.Usage()
		assert.False(t, found)
		assert.False(t, complete)
	})
	t.Run("a cut gzip stream is incomplete", func(t *testing.T) {
		body := compress(t, "gzip", rec["openai-chat-stream.sse"])
		r := costing.NewResponseReader(policy.ProviderOpenAI, true, false)
		r.SetEncoding(costing.EncodingGzip)
		feed(r, body[:len(body)-12], 0)
		_, _, complete := r.Usage()
		assert.False(t, complete)
	})
	t.Run("a bomb inflates to the limit only", func(t *testing.T) {
		huge := append(bytes.Repeat([]byte(" "), costing.MaxDecodedResponse+10), rec["openai-chat.json"]...)
		body := compress(t, "gzip", huge)
		require.Less(t, len(body), costing.MaxEncodedResponse)
		r := costing.NewResponseReader(policy.ProviderOpenAI, false, false)
		r.SetEncoding(costing.EncodingGzip)
		feed(r, body, 4096)
		_, found, complete := r.Usage()
		assert.False(t, found)
		assert.False(t, complete)
	})
}

func TestParseEncoding(t *testing.T) {
	for in, want := range map[string]costing.Encoding{
		"": costing.EncodingIdentity, "identity": costing.EncodingIdentity, " GZIP ": costing.EncodingGzip,
		"x-gzip": costing.EncodingGzip, "deflate": costing.EncodingDeflate, "br": costing.EncodingOther,
		"zstd": costing.EncodingOther, "gzip, br": costing.EncodingOther,
	} {
		assert.Equal(t, want, costing.ParseEncoding(in), in)
	}
}
