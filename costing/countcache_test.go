package costing_test

import (
	"math/rand/v2"
	"strings"
	"sync"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/tollgate/tollgate/costing"
)

var encodings = []string{costing.EncodingO200K, costing.EncodingCL100K}

// tokenizers returns t's encoders without a cache, with the default one and
// with a single set of four entries (where every text evicts another).
func tokenizers(tb testing.TB) (off, on, tiny *costing.Tokenizer) {
	tok := tokenizer(tb)
	return costing.ShareEncoders(tok, costing.TokenizerConfig{}),
		costing.ShareEncoders(tok, costing.DefaultTokenizerConfig()),
		costing.ShareEncoders(tok, costing.TokenizerConfig{CacheEntries: 4, CacheBytes: 64, CacheMinLen: 1})
}

func TestTokenizerConfigValidate(t *testing.T) {
	for name, tc := range map[string]struct {
		cfg     costing.TokenizerConfig
		wantErr string
	}{
		"default":             {costing.DefaultTokenizerConfig(), ""},
		"off":                 {costing.TokenizerConfig{}, ""},
		"negative entries":    {costing.TokenizerConfig{CacheEntries: -1}, "negative"},
		"bytes below a set":   {costing.TokenizerConfig{CacheEntries: 16, CacheBytes: 63}, "below the 64 of one set"},
		"entries below a set": {costing.TokenizerConfig{CacheEntries: 3, CacheBytes: 64}, "below the 4 of one set"},
		"negative min len":    {costing.TokenizerConfig{CacheMinLen: -1}, "negative"},
	} {
		t.Run(name, func(t *testing.T) {
			err := tc.cfg.Validate()
			if tc.wantErr == "" {
				require.NoError(t, err)
				return
			}
			require.ErrorContains(t, err, tc.wantErr)
			_, err = costing.NewTokenizerWith(tc.cfg)
			require.ErrorContains(t, err, tc.wantErr)
		})
	}
}

func TestCountCacheBounds(t *testing.T) {
	tok := tokenizer(t)
	for name, tc := range map[string]struct {
		cfg  costing.TokenizerConfig
		want int
	}{
		"default: 1 MiB of 16-byte entries": {costing.DefaultTokenizerConfig(), 1 << 16},
		"entries bind, rounded down":        {costing.TokenizerConfig{CacheEntries: 1000, CacheBytes: 1 << 20}, 512},
		"bytes bind":                        {costing.TokenizerConfig{CacheEntries: 1 << 16, CacheBytes: 4096}, 256},
		"off":                               {costing.TokenizerConfig{}, 0},
		"one set":                           {costing.TokenizerConfig{CacheEntries: 7, CacheBytes: 64}, 4},
	} {
		t.Run(name, func(t *testing.T) {
			assert.Equal(t, tc.want, costing.ShareEncoders(tok, tc.cfg).CacheStats().Entries)
		})
	}
}

func TestCountCacheStats(t *testing.T) {
	_, on, _ := tokenizers(t)
	long := "You are a helpful assistant that answers briefly."
	on.Count(costing.EncodingO200K, long)
	on.Count(costing.EncodingO200K, long)
	on.Count(costing.EncodingO200K, long)
	on.Count(costing.EncodingCL100K, long) // another encoding: another entry
	on.Count(costing.EncodingO200K, "hi")  // too short to cache
	assert.Equal(t, costing.CacheStats{Hits: 2, Misses: 2, Entries: 1 << 16}, on.CacheStats())

	var zero costing.Tokenizer
	assert.Equal(t, int64(1), zero.Count(costing.EncodingO200K, long[:3]), "the zero Tokenizer counts, uncached")
	assert.Equal(t, costing.CacheStats{}, zero.CacheStats())
}

// TestCountCacheSameCounts checks that a cache never changes a count, on
// the recorded bodies' texts and on random ones, each counted several
// times, in a cache large enough to keep them and in one that evicts all
// the time.
func TestCountCacheSameCounts(t *testing.T) {
	off, on, tiny := tokenizers(t)
	texts := randomTexts(rand.New(rand.NewPCG(1, 2)), 3000)
	for _, provider := range []string{"openai", "anthropic"} {
		for _, b := range bodies(t, provider) {
			texts = append(texts, string(b), string(b[:len(b)/2]))
		}
	}
	for round := range 3 {
		for _, s := range texts {
			for _, enc := range encodings {
				want := off.Count(enc, s)
				require.Equal(t, want, on.Count(enc, s), "round %d %s %q", round, enc, s)
				require.Equal(t, want, tiny.Count(enc, s), "round %d %s %q", round, enc, s)
			}
		}
	}
	assert.Positive(t, on.CacheStats().Hits)
	assert.Positive(t, tiny.CacheStats().Hits)
}

// randomTexts returns n texts, many of them repeated, short and long, from
// an alphabet of ASCII, accents, CJK, emoji, whitespace, digits and invalid
// bytes.
func randomTexts(rng *rand.Rand, n int) []string {
	alphabet := []string{"a", "Z", "the ", " quick", "'s", "'LL", "1", "234", "!", "?!", " ", "  ", "\n", "\r\n", "\t",
		"é", "e\u0301", "ß", "お誕生日", "😀", "\u00a0", "\xff", "\xe2\x82", "{\"k\":", "}"}
	out := make([]string, 0, n)
	for len(out) < n {
		if len(out) > 0 && rng.IntN(3) == 0 {
			out = append(out, out[rng.IntN(len(out))])
			continue
		}
		var sb strings.Builder
		for range rng.IntN(80) {
			sb.WriteString(alphabet[rng.IntN(len(alphabet))])
		}
		out = append(out, sb.String())
	}
	return out
}

// TestCountCacheConcurrent counts the same texts from several goroutines
// through a cache of one set, so that writers race on the same slots; run
// it with -race.
func TestCountCacheConcurrent(t *testing.T) {
	off, on, tiny := tokenizers(t)
	texts := randomTexts(rand.New(rand.NewPCG(3, 4)), 64)
	want := make(map[string][2]int64, len(texts))
	for _, s := range texts {
		want[s] = [2]int64{off.Count(encodings[0], s), off.Count(encodings[1], s)}
	}
	for _, tok := range []*costing.Tokenizer{on, tiny} {
		var wg sync.WaitGroup
		errs := make(chan string, 8)
		for g := range 8 {
			wg.Go(func() {
				rng := rand.New(rand.NewPCG(uint64(g), 5))
				for range 2000 {
					s, e := texts[rng.IntN(len(texts))], rng.IntN(2)
					if got := tok.Count(encodings[e], s); got != want[s][e] {
						errs <- s
						return
					}
				}
			})
		}
		wg.Wait()
		close(errs)
		for s := range errs {
			t.Errorf("wrong count for %q", s)
		}
		st := tok.CacheStats()
		assert.Positive(t, st.Hits)
	}
}

// TestCountCacheParsers checks that the parsers count the same with a
// cache as without, on every recorded body, sent three times.
func TestCountCacheParsers(t *testing.T) {
	off, on, tiny := tokenizers(t)
	for _, provider := range []string{"openai", "anthropic"} {
		for file, body := range bodies(t, provider) {
			t.Run(provider+"/"+file, func(t *testing.T) {
				for range 3 {
					for _, p := range openAIPaths {
						sameCached(t, off, on, p, body)
						sameCached(t, off, tiny, p, body)
					}
				}
			})
		}
	}
}

// sameCached requires tokenizer tok to parse body as off, which has no
// cache, does.
func sameCached(t *testing.T, off, tok *costing.Tokenizer, path string, body []byte) {
	t.Helper()
	want, wantErr := costing.ParseOpenAI(path, body, off)
	got, err := costing.ParseOpenAI(path, body, tok)
	require.Equal(t, want, got, "%s %q", path, body)
	require.Equal(t, wantErr, err)
	wantA, wantErr := costing.ParseAnthropic(body, off)
	gotA, err := costing.ParseAnthropic(body, tok)
	require.Equal(t, wantA, gotA, "%q", body)
	require.Equal(t, wantErr, err)
}
