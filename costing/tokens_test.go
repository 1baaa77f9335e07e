package costing_test

import (
	"encoding/json"
	"os"
	"strings"
	"sync"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/tollgate/tollgate/costing"
)

func TestEncodingFor(t *testing.T) {
	tests := map[string]string{
		"gpt-4o":                              costing.EncodingO200K,
		"gpt-4o-mini-2024-07-18":              costing.EncodingO200K,
		"chatgpt-4o-latest":                   costing.EncodingO200K,
		"gpt-4.1":                             costing.EncodingO200K,
		"gpt-4.1-nano":                        costing.EncodingO200K,
		"gpt-4.5-preview":                     costing.EncodingO200K,
		"gpt-5":                               costing.EncodingO200K,
		"gpt-5-mini-2025-08-07":               costing.EncodingO200K,
		"o1":                                  costing.EncodingO200K,
		"o1-preview":                          costing.EncodingO200K,
		"o3-mini":                             costing.EncodingO200K,
		"o4-mini":                             costing.EncodingO200K,
		"ft:gpt-4o-mini-2024-07-18:acme::abc": costing.EncodingO200K,
		"gpt-4":                               costing.EncodingCL100K,
		"gpt-4-0613":                          costing.EncodingCL100K,
		"gpt-4-turbo":                         costing.EncodingCL100K,
		"gpt-4-32k":                           costing.EncodingCL100K,
		"gpt-3.5-turbo":                       costing.EncodingCL100K,
		"gpt-3.5-turbo-instruct":              costing.EncodingCL100K,
		"gpt-35-turbo":                        costing.EncodingCL100K,
		"ft:gpt-3.5-turbo-0125:acme::xyz":     costing.EncodingCL100K,
		"text-embedding-3-small":              costing.EncodingCL100K,
		"text-embedding-ada-002":              costing.EncodingCL100K,
		"davinci-002":                         costing.EncodingCL100K,
		"GPT-4-Turbo":                         costing.EncodingCL100K,
		"":                                    costing.EncodingO200K,
		"some-future-model":                   costing.EncodingO200K,
		"claude-sonnet-4-5":                   costing.EncodingO200K,
	}
	for model, want := range tests {
		t.Run(model, func(t *testing.T) {
			assert.Equal(t, want, costing.EncodingFor(model))
		})
	}
}

// TestCountPublished checks counts that OpenAI publishes in its cookbook
// ("How to count tokens with tiktoken") and README.
func TestCountPublished(t *testing.T) {
	tok := tokenizer(t)
	tests := map[string]struct {
		encoding, text string
		want           int64
	}{
		"cl100k tiktoken is great!":           {costing.EncodingCL100K, "tiktoken is great!", 6},
		"o200k tiktoken is great!":            {costing.EncodingO200K, "tiktoken is great!", 6},
		"o200k hello world":                   {costing.EncodingO200K, "hello world", 2},
		"cl100k hello world":                  {costing.EncodingCL100K, "hello world", 2},
		"cl100k antidisestablishmentarianism": {costing.EncodingCL100K, "antidisestablishmentarianism", 6},
		"o200k antidisestablishmentarianism":  {costing.EncodingO200K, "antidisestablishmentarianism", 6},
		"cl100k 2 + 2 = 4":                    {costing.EncodingCL100K, "2 + 2 = 4", 7},
		"o200k 2 + 2 = 4":                     {costing.EncodingO200K, "2 + 2 = 4", 7},
		"cl100k birthday":                     {costing.EncodingCL100K, "お誕生日おめでとう", 9},
		"o200k birthday":                      {costing.EncodingO200K, "お誕生日おめでとう", 8},
		"empty":                               {costing.EncodingO200K, "", 0},
	}
	for name, tc := range tests {
		t.Run(name, func(t *testing.T) {
			assert.Equal(t, tc.want, tok.Count(tc.encoding, tc.text))
		})
	}
}

// referenceCase is one string counted by OpenAI's own tiktoken (its npm
// WASM build, run once outside the repository to write the fixture).
type referenceCase struct {
	Name   string `json:"name"`
	Text   string `json:"text"`
	CL100K int64  `json:"cl100k_base"`
	O200K  int64  `json:"o200k_base"`
}

// TestCountMatchesReference checks Count, and both of its paths, against
// OpenAI's tiktoken on every string of the recorded LLM bodies, hand-picked
// edge cases of the pre-tokenizer and seeded random strings.
func TestCountMatchesReference(t *testing.T) {
	tok := tokenizer(t)
	raw, err := os.ReadFile("testdata/tokenizer_reference.json")
	require.NoError(t, err)
	var cases []referenceCase
	require.NoError(t, json.Unmarshal(raw, &cases))
	require.Greater(t, len(cases), 400)
	long := 0
	for _, c := range cases {
		if longestPiece(t, tok, c.Text) > costing.SmallPiece {
			long++
		}
		t.Run(c.Name, func(t *testing.T) {
			for enc, want := range map[string]int64{costing.EncodingCL100K: c.CL100K, costing.EncodingO200K: c.O200K} {
				assert.Equal(t, want, tok.Count(enc, c.Text), enc)
				tt, regex, split, err := costing.CountPaths(tok, enc, c.Text)
				require.NoError(t, err)
				assert.Equal(t, want, tt, "%s: tiktoken-go", enc)
				assert.Equal(t, want, regex, "%s: regexp split, heap merge", enc)
				assert.Equal(t, want, split, "%s: hand split, heap merge", enc)
			}
		})
	}
	assert.Greater(t, long, 20, "too few cases exercise the heap merge")
}

// TestCountLongRun: text that is one huge pre-tokenized piece counts
// right. (tiktoken-go's quadratic merge takes about 20 s on 200 KB of one
// piece, and OpenAI's tiktoken, built as WASM, 40 s; Count's heap merge takes
// tens of milliseconds: see BenchmarkCount.)
func TestCountLongRun(t *testing.T) {
	tok := tokenizer(t)
	tests := map[string]struct {
		text string
		want int64
	}{
		"letters": {strings.Repeat("a", 200_000), 25_000},
		"spaces":  {strings.Repeat(" ", 200_000), 1563},
		"han":     {strings.Repeat("漢", 70_000), 70_000},
	}
	for name, tc := range tests {
		t.Run(name, func(t *testing.T) {
			assert.Equal(t, tc.want, tok.Count(costing.EncodingO200K, tc.text))
		})
	}
}

// TestTokenizerConcurrent counts from many goroutines on a zero Tokenizer,
// whose encoders load on first use; run with -race.
func TestTokenizerConcurrent(t *testing.T) {
	var tok costing.Tokenizer
	texts := []string{"tiktoken is great!", strings.Repeat("x", 1000), "hello world", "お誕生日おめでとう"}
	want := make([]int64, len(texts))
	shared := tokenizer(t)
	for i, s := range texts {
		want[i] = shared.Count(costing.EncodingCL100K, s)
	}
	var wg sync.WaitGroup
	for g := range 8 {
		wg.Go(func() {
			for i := range 20 {
				k := (g + i) % len(texts)
				assert.Equal(t, want[k], tok.Count(costing.EncodingCL100K, texts[k]))
			}
		})
	}
	wg.Wait()
}

func TestCountUnknownEncodingIsO200K(t *testing.T) {
	tok := tokenizer(t)
	s := "お誕生日おめでとう"
	assert.Equal(t, tok.Count(costing.EncodingO200K, s), tok.Count("p50k_base", s))
}

// longestPiece is the byte length of text's longest o200k piece.
func longestPiece(tb testing.TB, tok *costing.Tokenizer, text string) int {
	tb.Helper()
	_, pieces, err := costing.Pieces(tok, costing.EncodingO200K, strings.ToValidUTF8(text, "\uFFFD"))
	require.NoError(tb, err)
	n := 0
	for _, p := range pieces {
		n = max(n, len(p))
	}
	return n
}
