package costing_test

import (
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"unicode/utf8"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/tollgate/tollgate/costing"
)

// The fuzz targets are seeded from testdata/bodies; each must never panic,
// and whatever it accepts must satisfy the invariants checked here.

// maxTokensFor bounds the tokens a parser may find in body: at most one per
// byte of text, three for an invalid byte (decoded as U+FFFD), and three per
// message wrapper, which needs at least three bytes ("{},").
func maxTokensFor(body []byte) int64 { return 3*int64(len(body)) + 8 }

var openAIPaths = []string{"/v1/chat/completions", "/v1/responses", "/v1/embeddings", "/v1/completions"}

func FuzzParseOpenAI(f *testing.F) {
	recorded := bodies(f, "openai")
	for _, file := range sortedKeys(recorded) {
		for _, p := range openAIPaths {
			f.Add(p, recorded[file])
		}
	}
	if b, err := os.ReadFile(filepath.Join(bodiesDir, "openai-chat-1k.json")); err == nil {
		f.Add("/v1/chat/completions", b)
	}
	f.Add("/openai/deployments/x/chat/completions?api-version=1", []byte(`{"messages":[{"role":"user","content":[{"type":"text","text":"hi"}]}]}`))
	tok := tokenizer(f)
	f.Fuzz(func(t *testing.T, path string, body []byte) {
		r, err := costing.ParseOpenAI(path, body, tok)
		if err != nil {
			require.True(t, errors.Is(err, costing.ErrMalformedBody) || errors.Is(err, costing.ErrUnknownEndpoint), "%v", err)
			return
		}
		assert.Contains(t, []string{costing.KindChat, costing.KindResponses, costing.KindEmbeddings, costing.KindCompletions}, r.Kind)
		assert.GreaterOrEqual(t, r.InputTokens, int64(0))
		assert.LessOrEqual(t, r.InputTokens, maxTokensFor(body))
		assert.GreaterOrEqual(t, r.MaxOutputTokens, int64(0))
		assert.GreaterOrEqual(t, r.N, int64(1))
		for _, v := range []int64{r.Images, r.AudioParts, r.Files} {
			assert.GreaterOrEqual(t, v, int64(0))
			assert.LessOrEqual(t, v, int64(len(body)))
		}
		if !r.Stream {
			assert.False(t, r.IncludeUsage)
		}
	})
}

func FuzzParseAnthropic(f *testing.F) {
	recorded := bodies(f, "anthropic")
	for _, file := range sortedKeys(recorded) {
		f.Add(recorded[file])
	}
	tok := tokenizer(f)
	f.Fuzz(func(t *testing.T, body []byte) {
		r, err := costing.ParseAnthropic(body, tok)
		if err != nil {
			require.ErrorIs(t, err, costing.ErrMalformedBody)
			return
		}
		assert.GreaterOrEqual(t, r.InputTokens, int64(0))
		assert.LessOrEqual(t, r.InputTokens, maxTokensFor(body))
		assert.GreaterOrEqual(t, r.MaxOutputTokens, int64(0))
		assert.GreaterOrEqual(t, r.Images, int64(0))
		assert.GreaterOrEqual(t, r.Documents, int64(0))
	})
}

func FuzzSMSSegments(f *testing.F) {
	for _, s := range []string{"", "a", "€", "😀", "ж", "\f", "\x1b", "ab\xffcd", gsmTable, gsmExtension} {
		f.Add(s)
	}
	for _, body := range bodies(f, "twilio") {
		m, err := costing.ParseTwilioMessage("application/x-www-form-urlencoded", body)
		require.NoError(f, err)
		f.Add(m.Body)
	}
	f.Fuzz(func(t *testing.T, text string) {
		segments, encoding := costing.SMSSegments(text)
		refSegments, units, refEncoding := referenceSegments(text)
		require.Equal(t, refEncoding, encoding)
		require.Equal(t, refSegments, segments)
		require.GreaterOrEqual(t, segments, int64(1))
		single, part := int64(160), int64(153)
		if encoding == costing.EncodingUCS2 {
			single, part = 70, 67
		}
		if segments == 1 {
			require.LessOrEqual(t, units, single)
			return
		}
		require.Greater(t, units, single)
		require.LessOrEqual(t, units, part*segments)
		// Never more segments than needed: a pair left over wastes at most
		// one unit per segment.
		require.LessOrEqual(t, segments, (units-1)/(part-1)+1)
	})
}

func FuzzParseTwilio(f *testing.F) {
	for _, file := range sortedKeys(bodies(f, "twilio")) {
		f.Add("application/x-www-form-urlencoded", bodies(f, "twilio")[file])
	}
	f.Add("application/x-www-form-urlencoded; charset=utf-8", []byte("To=%2B1&To=%2B2&Body=%E2%82%AC%F0%9F%98%80"))
	f.Add("text/plain", []byte("Body=hi"))
	f.Fuzz(func(t *testing.T, contentType string, body []byte) {
		m, err := costing.ParseTwilioMessage(contentType, body)
		if err != nil {
			require.True(t, errors.Is(err, costing.ErrMalformedBody) || errors.Is(err, costing.ErrContentType) ||
				errors.Is(err, costing.ErrMessageTooLong), "%v", err)
			return
		}
		assert.LessOrEqual(t, utf8.RuneCountInString(m.Body), costing.MaxSMSChars)
		segments, encoding := costing.SMSSegments(m.Body)
		assert.Equal(t, segments, m.Segments)
		assert.Equal(t, encoding, m.Encoding)
		assert.GreaterOrEqual(t, m.Recipients, int64(len(m.To)))
		assert.LessOrEqual(t, m.Recipients, max(int64(len(m.To)), 1))
		assert.GreaterOrEqual(t, m.Media, int64(0))
	})
}

func FuzzParseSendGrid(f *testing.F) {
	recorded := bodies(f, "sendgrid")
	for _, file := range sortedKeys(recorded) {
		f.Add(recorded[file])
	}
	f.Fuzz(func(t *testing.T, body []byte) {
		m, err := costing.ParseSendGrid(body)
		if err != nil {
			require.True(t, errors.Is(err, costing.ErrMalformedBody) || errors.Is(err, costing.ErrNoRecipients), "%v", err)
			return
		}
		assert.GreaterOrEqual(t, m.Personalizations, int64(1))
		assert.GreaterOrEqual(t, m.Recipients, int64(1))
		assert.LessOrEqual(t, m.Recipients, int64(len(body)))
	})
}

// FuzzCountPaths checks that the heap path counts exactly what tiktoken-go
// counts, whatever the text.
func FuzzCountPaths(f *testing.F) {
	for _, s := range []string{"tiktoken is great!", "   x", "!!!\n/\n/", "I'LL don't", "お誕生日おめでとう", "e\u0301\u0301", "1234567", "\t\t \n\r\n"} {
		f.Add(s)
	}
	for _, body := range bodies(f, "openai") {
		f.Add(string(body))
	}
	tok := tokenizer(f)
	f.Fuzz(func(t *testing.T, text string) {
		if len(text) > 4096 {
			return // tiktoken-go is quadratic on long pieces
		}
		texts := []string{text}
		if n := len(text); n > 0 && n <= 64 {
			// Repeated, a short text makes the long pieces that only the heap
			// merge handles (random inputs rarely do).
			texts = append(texts, strings.Repeat(text, 2048/n))
		}
		for _, s := range texts {
			for _, enc := range []string{costing.EncodingCL100K, costing.EncodingO200K} {
				tt, regex, split, err := costing.CountPaths(tok, enc, s)
				if errors.Is(err, costing.ErrSlowReference) {
					continue
				}
				require.NoError(t, err)
				require.Equal(t, tt, regex, "%s %q", enc, s)
				require.Equal(t, tt, split, "%s %q", enc, s)
				require.Equal(t, tt, tok.Count(enc, s), "%s %q", enc, s)
			}
		}
	})
}

// FuzzSplit holds the hand-written pre-tokenizers to the regular
// expressions they replace: the same pieces, in the same order, for any
// valid UTF-8 text.
func FuzzSplit(f *testing.F) {
	for _, s := range []string{"tiktoken is great!", "   x", "!!!\n/\n/", "I'LL don't 'Re 's", "お誕生日おめでとう", "e\u0301\u0301",
		"1234567", "\t\t \n\r\n", "HelloWORLDfoo", "ǅungla ǈ", "\u00a0\u2028x", "a\u0300B\u0300c", "x  \ny", " !!\r\n/", "\r\r\n\n  "} {
		f.Add(s)
	}
	for _, body := range bodies(f, "openai") {
		f.Add(string(body))
	}
	for _, body := range bodies(f, "anthropic") {
		f.Add(string(body))
	}
	tok := tokenizer(f)
	f.Fuzz(func(t *testing.T, text string) {
		if len(text) > 1024 {
			return // the regular expressions backtrack badly on long runs
		}
		text = strings.ToValidUTF8(text, "\uFFFD")
		for _, enc := range []string{costing.EncodingCL100K, costing.EncodingO200K} {
			regex, split, err := costing.Pieces(tok, enc, text)
			if errors.Is(err, costing.ErrSlowReference) {
				return // the reference gave up: nothing to compare
			}
			require.NoError(t, err)
			require.Equal(t, regex, split, "%s %q", enc, text)
		}
	})
}

// FuzzParseOnce holds the one-decode path (NewCall, Model, the parsers
// reading parsedBody) to the parsers as they were, decoding the body whole
// into each of their structs: the same results, errors of the same kind,
// the same route and the same estimate, the same counts with the cache as
// without, and one whole-body decode unless the
// body repeats a key or its messages are not an array of objects.
func FuzzParseOnce(f *testing.F) {
	for _, provider := range []string{"openai", "anthropic"} {
		recorded := bodies(f, provider)
		for _, file := range sortedKeys(recorded) {
			f.Add("/v1/chat/completions", recorded[file], uint16(0))
		}
	}
	for _, name := range sortedKeys(parseCases) {
		for _, p := range append(openAIPaths, "/v1/messages") {
			f.Add(p, []byte(parseCases[name]), uint16(0))
		}
	}
	f.Add("/v1/chat/completions", []byte(`{"model":"gpt-4o-mini","messages":[{"role":"user","content":"hi"}]} `), uint16(1))
	tok := tokenizer(f)
	off := costing.ShareEncoders(tok, costing.TokenizerConfig{})
	set := routedSet(f)
	f.Fuzz(func(t *testing.T, path string, body []byte, cut uint16) {
		sameParse(t, tok, path, body, false)
		sameCached(t, off, tok, path, body)

		sent := body // cut > 0: only the body's first bytes reached us
		if int(cut) < len(body) && cut > 0 {
			sent = body[:len(body)-int(cut)]
		}
		for _, host := range []string{"api.openai.com", "api.anthropic.com"} {
			c := costing.NewCall(path, "application/json", sent, int64(len(body)))
			r := routeCall(set, host, &c)
			old, _ := costing.ParseLLMBody(sent)
			want := set.MatchRoute(host, path, old.Model)
			require.Equal(t, want, r, "%s %q", host, sent)
			if r == nil {
				continue
			}
			for _, est := range []costing.Estimator{{Tok: tok}, {}} {
				require.Equal(t, costing.EstimateWhole(est, set, r, costing.Call{Path: path, Body: sent, BodySize: int64(len(body))}),
					est.Estimate(set, r, c), "%s %q", host, sent)
			}
			if !costing.DecodedAgain(sent) { // else decoded whole by some parser, the old way
				require.Equal(t, 1, costing.WholeDecodes(&c), "%q", sent)
			}
		}
	})
}

// FuzzCountCache checks that a cache never changes a count: counted twice
// (a miss, then a hit), through a cache that keeps it and through one of a
// single set that another text may have evicted it from.
func FuzzCountCache(f *testing.F) {
	for _, s := range []string{"", "a", "tiktoken is great!", "お誕生日おめでとう", "ab\xffcd", strings.Repeat("x", 100)} {
		f.Add(s, "other text")
	}
	off, on, tiny := tokenizers(f)
	f.Fuzz(func(t *testing.T, text, other string) {
		for _, enc := range encodings {
			want := off.Count(enc, text)
			for range 2 {
				require.Equal(t, want, on.Count(enc, text), "%s %q", enc, text)
				require.Equal(t, want, tiny.Count(enc, text), "%s %q", enc, text)
				require.Equal(t, off.Count(enc, other), tiny.Count(enc, other), "%s %q", enc, other)
			}
		}
	})
}
