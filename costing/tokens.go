package costing

import (
	"errors"
	"fmt"
	"strings"
	"sync"
)

// Encoding names, as tiktoken spells them.
const (
	EncodingO200K  = "o200k_base"
	EncodingCL100K = "cl100k_base"
)

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
	return int64(e.bpe.count(text))
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
