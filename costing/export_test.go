package costing

import (
	"errors"
	"reflect"
	"strings"
	"sync"
	"time"

	"github.com/dlclark/regexp2"
	"github.com/pkoukk/tiktoken-go"
	tiktoken_loader "github.com/pkoukk/tiktoken-go-loader"

	"github.com/tollgate/tollgate/policy"
)

// The references the tokenizer is tested against, kept out of the binary:
// tiktoken-go (a port of OpenAI's tiktoken) and the encodings' own
// pre-tokenizer regular expressions, verbatim from tiktoken-go v0.1.8
// (encoding.go), itself a copy of OpenAI's tiktoken_ext/openai_public.py,
// run by the same engine (regexp2, default options).
var (
	patCL100K = `(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+`
	patO200K  = strings.Join([]string{
		`[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]*[\p{Ll}\p{Lm}\p{Lo}\p{M}]+(?i:'s|'t|'re|'ve|'m|'ll|'d)?`,
		`[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]+[\p{Ll}\p{Lm}\p{Lo}\p{M}]*(?i:'s|'t|'re|'ve|'m|'ll|'d)?`,
		`\p{N}{1,3}`,
		` ?[^\s\p{L}\p{N}]+[\r\n/]*`,
		`\s*[\r\n]+`,
		`\s+(?!\S)`,
		`\s+`,
	}, "|")
	refRegex = map[string]*regexp2.Regexp{
		EncodingCL100K: mustRef(patCL100K),
		EncodingO200K:  mustRef(patO200K),
	}
	// tiktoken-go reads its ranks through a process-wide loader; set once.
	tiktokenOnce sync.Once
	tiktokenEnc  sync.Map // encoding → *tiktoken.Tiktoken
)

func tiktokenFor(encoding string) (*tiktoken.Tiktoken, error) {
	tiktokenOnce.Do(func() { tiktoken.SetBpeLoader(tiktoken_loader.NewOfflineLoader()) })
	if e, ok := tiktokenEnc.Load(encoding); ok {
		return e.(*tiktoken.Tiktoken), nil
	}
	e, err := tiktoken.GetEncoding(encoding)
	if err != nil {
		return nil, err
	}
	tiktokenEnc.Store(encoding, e)
	return e, nil
}

// mustRef compiles a reference pattern. Backtracking can make regexp2 very
// slow on some inputs (the reason Count does not use it); a match that
// takes too long reports ErrSlowReference rather than stall a fuzzer.
func mustRef(pat string) *regexp2.Regexp {
	re := regexp2.MustCompile(pat, regexp2.None)
	re.MatchTimeout = 2 * time.Second
	return re
}

// ErrSlowReference reports a text the reference regular expression took too
// long on: there is nothing to compare with.
var ErrSlowReference = errors.New("costing: the reference regexp timed out")

// regexPieces cuts text with the encoding's regular expression.
func regexPieces(encoding, text string) ([]string, error) {
	var out []string
	m, err := refRegex[encoding].FindStringMatch(text)
	for m != nil && err == nil {
		out = append(out, m.String())
		m, err = refRegex[encoding].FindNextMatch(m)
	}
	if err != nil {
		return nil, ErrSlowReference
	}
	return out, nil
}

// CountPaths counts text three ways, for the external tests to check that
// they agree with each other and with OpenAI's tokenizer: tiktoken-go's
// encoder, the regular expression's pieces merged by bpeCounter, and Count's
// own path (the hand-written split, merged by bpeCounter).
func CountPaths(t *Tokenizer, encoding, text string) (tiktokenGo, regex, split int64, err error) {
	e, err := t.encoder(encoding)
	if err != nil {
		return 0, 0, 0, err
	}
	ref, err := tiktokenFor(e.name(encoding))
	if err != nil {
		return 0, 0, 0, err
	}
	pieces, err := regexPieces(e.name(encoding), text)
	if err != nil {
		return 0, 0, 0, err
	}
	n := 0
	for _, p := range pieces {
		n += e.bpe.pieceCount(p)
	}
	return int64(len(ref.EncodeOrdinary(text))), int64(n), int64(e.bpe.count(text)), nil
}

// name is the encoding an encoder of Tokenizer stands for.
func (l *lazyEncoder) name(asked string) string {
	if asked == EncodingCL100K {
		return EncodingCL100K
	}
	return EncodingO200K
}

// Pieces returns text cut by the encoding's regular expression and by the
// hand-written pre-tokenizer (text must be valid UTF-8).
func Pieces(t *Tokenizer, encoding, text string) (regex, split []string, err error) {
	e, err := t.encoder(encoding)
	if err != nil {
		return nil, nil, err
	}
	e.bpe.split(text, func(p string) { split = append(split, p) })
	regex, err = regexPieces(e.name(encoding), text)
	return regex, split, err
}

// SmallPiece is the longest piece the rescan merge takes.
const SmallPiece = smallPiece

// WholeDecodes returns how many times c's body was decoded whole so far
// (0 for a Call that has not attached a decode).
func WholeDecodes(c *Call) int {
	if c.parsed == nil {
		return 0
	}
	return int(c.parsed.decodes.Load())
}

// DecodedAgain reports whether some parser decodes body whole again: when
// it repeats a key, or its messages are not an array of objects.
func DecodedAgain(body []byte) bool {
	p := newParsedBody(body)
	p.decoded()
	return p.whole || p.badMessages
}

// wholeBody is a body decoded the way the parsers did before parsedBody:
// whole into each parser's struct, as a body with a repeated key still is.
func wholeBody(body []byte) *parsedBody {
	p := newParsedBody(body)
	p.once.Do(func() { p.whole = true })
	return p
}

// The parsers as they were, each decoding the body whole into its struct:
// the reference the one-decode path is held to.
func ParseOpenAIWhole(path string, body []byte, tok *Tokenizer) (OpenAIRequest, error) {
	return parseOpenAI(path, wholeBody(body), tok)
}

func ParseAnthropicWhole(body []byte, tok *Tokenizer) (AnthropicRequest, error) {
	return parseAnthropic(wholeBody(body), tok)
}

// LLMBodyOnce is what Call.Model reads: ParseLLMBody's answer from the
// one decode.
func LLMBodyOnce(body []byte) (LLMBody, error) { return newParsedBody(body).llmBody() }

// ParserFields returns, for TestBodyFieldsCoverParsers, the JSON names of
// the fields of each parser struct, under the names of the fields that
// parsedBody keeps for it (bodyFields, or rawMessage for a message).
func ParserFields() map[string]map[string][]string {
	names := func(v any) []string {
		var out []string
		t := reflect.TypeOf(v)
		for i := range t.NumField() {
			out = append(out, strings.Split(t.Field(i).Tag.Get("json"), ",")[0])
		}
		return out
	}
	return map[string]map[string][]string{
		strings.Join(names(bodyFields{}), " "): {
			"llmFields":          names(llmFields{}),
			"chatRequest":        names(chatRequest{}),
			"responsesRequest":   names(responsesRequest{}),
			"embeddingsRequest":  names(embeddingsRequest{}),
			"completionsRequest": names(completionsRequest{}),
			"anthropicRequest":   names(anthropicRequest{}),
		},
		strings.Join(names(rawMessage{}), " "): {
			"chatMessage":      names(chatMessage{}),
			"anthropicMessage": names(anthropicMessage{}),
		},
	}
}

// EstimateWhole is Estimate with c's body read by the parsers as they were
// (ParseOpenAIWhole, ParseAnthropicWhole, and ParseLLMBody's decode).
func EstimateWhole(e Estimator, set *policy.Set, r *policy.Route, c Call) Estimate {
	c.parsed = wholeBody(c.Body)
	return e.Estimate(set, r, c)
}

// ShareEncoders returns a Tokenizer with t's loaded encoders (immutable,
// tens of MB each) and a cache of its own as cfg asks, so tests and
// benchmarks compare caches without loading the ranks again.
func ShareEncoders(t *Tokenizer, cfg TokenizerConfig) *Tokenizer {
	n := &Tokenizer{cache: newCountCache(cfg)}
	for _, e := range [][2]*lazyEncoder{{&n.o200k, &t.o200k}, {&n.cl100k, &t.cl100k}} {
		dst, src := e[0], e[1]
		dst.once.Do(func() { dst.bpe, dst.err = src.bpe, src.err })
	}
	return n
}

// DropNullUsage exposes dropNullUsage to the tests.
var DropNullUsage = dropNullUsage

// CanonicalJSON is canonicalJSON, for the identity tests.
func CanonicalJSON(body []byte) ([]byte, bool) {
	out, _, ok := canonicalJSON(body)
	return out, ok
}
