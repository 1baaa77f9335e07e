package authz_test

import (
	"bytes"
	"compress/gzip"
	"compress/zlib"
	"fmt"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/tollgate/tollgate/policy"
)

func encode(tb testing.TB, enc string, b []byte) []byte {
	tb.Helper()
	var buf bytes.Buffer
	var w interface {
		Write([]byte) (int, error)
		Close() error
	}
	if enc == "gzip" {
		w = gzip.NewWriter(&buf)
	} else {
		w = zlib.NewWriter(&buf)
	}
	_, err := w.Write(b)
	require.NoError(tb, err)
	require.NoError(tb, w.Close())
	return buf.Bytes()
}

// TestSettleCompressed: a call Tollgate reads asks the upstream for
// accept-encoding: identity; an upstream that compresses all the same
// (gzip, deflate; JSON and SSE) is read after inflating and the budget
// holds exactly the actual cost; the compressed bytes reach the worker
// untouched.
func TestSettleCompressed(t *testing.T) {
	for _, enc := range []string{"gzip", "deflate"} {
		for _, sse := range []bool{false, true} {
			t.Run(fmt.Sprintf("%s/sse=%v", enc, sse), func(t *testing.T) {
				ss := startSettle(t, storeKinds["memory"], settlePolicy)
				var body, plain []byte
				var want policy.Money
				ct := "application/json"
				if sse {
					// Asks for its usage itself: nothing to strip.
					body = []byte(`{"model":"gpt-4o-mini","stream":true,"stream_options":{"include_usage":true},"max_tokens":50,"messages":[{"role":"user","content":"hi"}]}`)
					plain, ct = recorded(t, "openai-chat-stream.sse"), "text/event-stream"
					want = 19*2500 + 10*10_000
				} else {
					body = chatBody("gpt-4o", 300, "Describe the picture.")
					plain = recorded(t, "openai-chat.json")
					want = 232_500 + 1_280_000 + 460_000
				}
				a := ss.admit(t, "acme", body)
				up := encode(t, enc, plain)
				ex := ss.process(t, a, body, upstream{status: 200, headers: []string{"content-type", ct, "content-encoding", enc}, body: up, chunk: 41})
				assert.Equal(t, "identity", ex.upstreamHeaders["accept-encoding"], "Tollgate asks for an answer it can read")
				assert.Equal(t, up, ex.forwarded, "the compressed bytes pass untouched")
				u := ss.usage(t)
				assert.Equal(t, want, u.Spent, "settled exactly, not at the estimate")
				assert.Zero(t, u.Reserved)
				assert.Equal(t, 1.0, metricValue(t, ss.reg, "tollgate_settle_encoded_responses_total", map[string]string{"encoding": enc}))
			})
		}
	}
}
