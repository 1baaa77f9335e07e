package optimize_test

import (
	"os"
	"path/filepath"
	"testing"

	"github.com/stretchr/testify/require"

	"github.com/tollgate/tollgate/costing/optimize"
)

// benchApply runs Apply on body with edits, checking once that it changes
// the body or not as expected.
func benchApply(b *testing.B, body []byte, edits []optimize.Edit, changes bool) {
	out, applied, err := optimize.Apply(chat, body, edits)
	require.NoError(b, err)
	require.Equal(b, changes, len(applied) > 0)
	require.Equal(b, !changes, sameSlice(body, out))
	b.ReportAllocs()
	b.SetBytes(int64(len(body)))
	for b.Loop() {
		if _, _, err := optimize.Apply(chat, body, edits); err != nil {
			b.Fatal(err)
		}
	}
}

// noopEdits read the whole body and change nothing: the model is already
// gpt-4o and max_tokens (700) is below the cap. The common path.
var noopEdits = []optimize.Edit{
	{Strategy: optimize.Downgrade, Model: "gpt-4o"},
	{Strategy: optimize.TokenCap, MaxTokens: 4096},
}

func BenchmarkApplyNoop4KB(b *testing.B) {
	benchApply(b, readBody(b, "openai/chat-4kb.json"), noopEdits, false)
}

func BenchmarkApplyNoop4KBParallel(b *testing.B) {
	body := readBody(b, "openai/chat-4kb.json")
	b.ReportAllocs()
	b.SetBytes(int64(len(body)))
	b.RunParallel(func(pb *testing.PB) {
		for pb.Next() {
			if _, _, err := optimize.Apply(chat, body, noopEdits); err != nil {
				b.Error(err)
				return
			}
		}
	})
}

func BenchmarkApplyDowngrade4KB(b *testing.B) {
	benchApply(b, readBody(b, "openai/chat-4kb.json"),
		[]optimize.Edit{{Strategy: optimize.Downgrade, Model: "gpt-4o-mini"}}, true)
}

// BenchmarkApplyCompact4KB compacts the 4 KB chat made untidy: trailing
// blanks, runs of blank lines, and a message sent twice.
func BenchmarkApplyCompact4KB(b *testing.B) {
	body, err := os.ReadFile(filepath.Join("testdata", "chat-4kb-untidy.json"))
	require.NoError(b, err)
	benchApply(b, body, []optimize.Edit{{Strategy: optimize.Compact}}, true)
}

// BenchmarkApplyCompactNoop4KB is Compact on a body with nothing to
// compact: every message is read, no string is decoded.
func BenchmarkApplyCompactNoop4KB(b *testing.B) {
	benchApply(b, readBody(b, "openai/chat-4kb.json"), []optimize.Edit{{Strategy: optimize.Compact}}, false)
}
