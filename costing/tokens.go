package costing

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"hash/maphash"
	"strings"
	"sync"
)

// Encoding names, as tiktoken spells them.
const (
	EncodingO200K  = "o200k_base"
	EncodingCL100K = "cl100k_base"
)

// Tokenizer counts tokens with OpenAI's BPE encodings. It caches one encoder
// per encoding, built on first use (or up front by NewTokenizer), and the
// counts of texts it has seen (see TokenizerConfig). It is safe for
// concurrent use. Its zero value is ready to use but builds lazily and
// caches no counts; prefer NewTokenizer at startup, which pays the load (a
// few hundred ms and some tens of MB per encoding) before traffic arrives
// and reports a broken build.
type Tokenizer struct {
	o200k, cl100k lazyEncoder
	cache         *countCache // nil: every text is counted
}

type lazyEncoder struct {
	once sync.Once
	bpe  *bpeCounter
	err  error
}

func (l *lazyEncoder) get(name string) (*lazyEncoder, error) {
	l.once.Do(func() {
		if l.bpe, l.err = newBPECounter(name); l.err != nil {
			l.err = fmt.Errorf("costing: load %s: %w", name, l.err)
		}
	})
	return l, l.err
}

// NewTokenizer returns a Tokenizer with both encodings loaded from the
// embedded ranks, and DefaultTokenizerConfig's cache.
func NewTokenizer() (*Tokenizer, error) {
	return NewTokenizerWith(DefaultTokenizerConfig())
}

// NewTokenizerWith returns a Tokenizer with both encodings loaded and the
// cache cfg asks for.
func NewTokenizerWith(cfg TokenizerConfig) (*Tokenizer, error) {
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	t := &Tokenizer{cache: newCountCache(cfg)}
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

// Count returns the number of tokens text encodes to. Encodings other than
// cl100k_base count as o200k_base. Special-token strings such as
// "<|endoftext|>" count as ordinary text, as the API treats user input.
//
// Count never fails: should an encoder fail to load (the ranks are embedded,
// so only a broken build can do that, and NewTokenizer reports it), it
// returns len(text), an upper bound since every token covers at least one
// byte.
//
// A text of CacheMinLen bytes or more is looked up in the cache first; the
// count is the same either way.
func (t *Tokenizer) Count(encoding, text string) int64 {
	if text == "" {
		return 0
	}
	e, err := t.encoder(encoding)
	if err != nil {
		return int64(len(text))
	}
	if !t.cache.takes(len(text)) {
		return int64(e.bpe.count(text))
	}
	h := maphash.String(t.cache.seeds[keyText+t.index(e)], text)
	if n, ok := t.cache.get(h, len(text)); ok {
		return n
	}
	n := e.bpe.count(text)
	t.cache.put(h, len(text), n)
	return int64(n)
}

// countJSON returns Count of raw's compact form (raw a valid JSON value),
// compacting it into buf. The cache keys it by raw itself, so that tool
// definitions sent again cost neither compacting nor counting.
func (t *Tokenizer) countJSON(encoding string, raw []byte, buf *bytes.Buffer) int64 {
	e, err := t.encoder(encoding)
	if err != nil || !t.cache.takes(len(raw)) {
		return t.Count(encoding, compact(raw, buf))
	}
	h := maphash.Bytes(t.cache.seeds[keyCompactJSON+t.index(e)], raw)
	if n, ok := t.cache.get(h, len(raw)); ok {
		return n
	}
	text := compact(raw, buf)
	n := 0
	if text != "" {
		n = e.bpe.count(text)
	}
	t.cache.put(h, len(raw), n)
	return int64(n)
}

// compact returns raw in compact form, using buf.
func compact(raw []byte, buf *bytes.Buffer) string {
	buf.Reset()
	if err := json.Compact(buf, raw); err != nil {
		return string(raw) // unreachable: raw came from a successful decode
	}
	return buf.String()
}

// index is e's place among the encoders, for its seeds in the cache.
func (t *Tokenizer) index(e *lazyEncoder) int {
	if e == &t.cl100k {
		return 1
	}
	return 0
}

// CacheStats returns the cache's hits and misses so far, for a metric.
func (t *Tokenizer) CacheStats() CacheStats { return t.cache.snapshot() }

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
