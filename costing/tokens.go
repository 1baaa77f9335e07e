package costing

import (
	"errors"
	"fmt"
	"strings"
	"sync"
	"unicode"
	"unicode/utf8"

	"github.com/pkoukk/tiktoken-go"
	tiktoken_loader "github.com/pkoukk/tiktoken-go-loader"
)

// Encoding names, as tiktoken spells them.
const (
	EncodingO200K  = "o200k_base"
	EncodingCL100K = "cl100k_base"
)

// loaderOnce installs the BPE loader that reads the ranks embedded in
// tiktoken-go-loader, so nothing is ever downloaded at run time.
//
// tiktoken-go only offers a process-wide setter (tiktoken.SetBpeLoader writes
// an unsynchronised package variable that every later GetEncoding reads), so
// this is the one place in Tollgate that calls it: exactly once, before the
// first encoder is built. Nothing else may call SetBpeLoader.
var loaderOnce sync.Once

func installLoader() {
	loaderOnce.Do(func() { tiktoken.SetBpeLoader(tiktoken_loader.NewOfflineLoader()) })
}

// Tokenizer counts tokens with OpenAI's BPE encodings. It caches one encoder
// per encoding, built on first use (or up front by NewTokenizer). It is safe
// for concurrent use. Its zero value is ready to use but builds lazily; prefer
// NewTokenizer at startup, which pays the load (a few hundred ms and some tens
// of MB per encoding) before traffic arrives and reports a broken build.
type Tokenizer struct {
	o200k, cl100k lazyEncoder
}

type lazyEncoder struct {
	once sync.Once
	fast *tiktoken.Tiktoken // tiktoken-go's port of OpenAI's encoder
	safe *bpeCounter        // the same encoding, worst case O(n log n)
	err  error
}

func (l *lazyEncoder) get(name string) (*lazyEncoder, error) {
	l.once.Do(func() {
		installLoader()
		l.fast, l.err = tiktoken.GetEncoding(name)
		if l.err == nil {
			l.safe, l.err = newBPECounter(name)
		}
		if l.err != nil {
			l.err = fmt.Errorf("costing: load %s: %w", name, l.err)
		}
	})
	return l, l.err
}

// NewTokenizer returns a Tokenizer with both encodings loaded from the
// embedded ranks.
func NewTokenizer() (*Tokenizer, error) {
	t := &Tokenizer{}
	_, err1 := t.o200k.get(EncodingO200K)
	_, err2 := t.cl100k.get(EncodingCL100K)
	if err := errors.Join(err1, err2); err != nil {
		return nil, err
	}
	return t, nil
}

func (t *Tokenizer) encoder(encoding string) (*lazyEncoder, error) {
	if encoding == EncodingCL100K {
		return t.cl100k.get(EncodingCL100K)
	}
	return t.o200k.get(EncodingO200K)
}

// maxFastRun bounds, in bytes, the longest run of same-class characters that
// Count hands to tiktoken-go. Its merge loop is quadratic in the length of a
// pre-tokenized piece (100 KB of "a", of spaces or of one CJK character take
// about 5 s), and a piece can only be long where such a run is; text with a
// longer run goes to bpeCounter, which gives the same count in O(n log n).
// At 256, text built of runs just under the limit counts no slower than
// prose (about 150-250 µs per KB here).
const maxFastRun = 256

// Count returns the number of tokens text encodes to. Encodings other than
// cl100k_base count as o200k_base. Special-token strings such as
// "<|endoftext|>" count as ordinary text, as the API treats user input.
//
// Count never fails: should an encoder fail to load (the ranks are embedded,
// so only a broken build can do that, and NewTokenizer reports it), it
// returns len(text), an upper bound since every token covers at least one
// byte.
func (t *Tokenizer) Count(encoding, text string) int64 {
	if text == "" {
		return 0
	}
	e, err := t.encoder(encoding)
	if err != nil {
		return int64(len(text))
	}
	if longestRun(text) > maxFastRun {
		return int64(e.safe.count(text))
	}
	return int64(len(e.fast.EncodeOrdinary(text)))
}

// Run classes for longestRun. Every piece the pre-tokenizers of cl100k_base
// and o200k_base cut is at most one leading character, plus a run of one
// class, plus (after punctuation) a run of whitespace or of [\r\n/]; so a
// text whose runs are all short has only short pieces. The classes need not
// match the regexes exactly: both paths count exactly, and this only picks
// the faster one.
const (
	runNone = iota
	runSpace
	runNumber
	runOther
)

// longestRun returns the byte length of the longest run of characters of one
// class (whitespace, numbers, anything else) or of [\r\n/] characters.
func longestRun(text string) int {
	if len(text) <= maxFastRun {
		return len(text)
	}
	longest, run, slash := 0, 0, 0
	class := runNone
	for i := 0; i < len(text); {
		r, size := rune(text[i]), 1
		if r >= utf8.RuneSelf {
			r, size = utf8.DecodeRuneInString(text[i:])
		}
		c := runOther
		switch {
		case unicode.IsSpace(r): // ASCII fast path inside; matches \s
			c = runSpace
		case (r >= '0' && r <= '9') || (r >= utf8.RuneSelf && unicode.IsNumber(r)):
			c = runNumber
		}
		if c == class {
			run += size
		} else {
			class, run = c, size
		}
		if r == '\r' || r == '\n' || r == '/' {
			slash += size
		} else {
			slash = 0
		}
		longest = max(longest, run, slash)
		i += size
	}
	return longest
}

// EncodingFor names the encoding a model tokenizes with. tiktoken-go's
// EncodingForModel fails for newer names (gpt-5, o3-mini, gpt-4.1-nano...),
// so the mapping is kept here; unknown models get o200k_base, the encoding
// of every model since gpt-4o. Fine-tuned names ("ft:gpt-4o-mini:org::id")
// map as their base model, and Azure's "gpt-35-turbo" as gpt-3.5-turbo.
func EncodingFor(model string) string {
	m := strings.ToLower(strings.TrimSpace(model))
	m = strings.TrimPrefix(m, "ft:")
	switch {
	case hasAnyPrefix(m, "gpt-4o", "gpt-4.1", "gpt-4.5", "gpt-5", "o1", "o3", "o4", "chatgpt-4o", "gpt-oss"):
		return EncodingO200K
	case hasAnyPrefix(m, "gpt-4", "gpt-3.5", "gpt-35", "text-embedding-", "davinci-002", "babbage-002"):
		return EncodingCL100K
	}
	return EncodingO200K
}

func hasAnyPrefix(s string, prefixes ...string) bool {
	for _, p := range prefixes {
		if strings.HasPrefix(s, p) {
			return true
		}
	}
	return false
}
