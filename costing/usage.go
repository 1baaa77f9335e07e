package costing

import (
	"bytes"
	"encoding/json"
	"fmt"
	"strings"

	"github.com/tollgate/tollgate/policy"
)

// Usage is what an upstream response says a call consumed.
type Usage struct {
	// Model is the model the response names (often a dated snapshot of
	// the one asked for).
	Model string
	// InputTokens counts every input token, cached and cache-written ones
	// included; CachedInputTokens and CacheWriteTokens are the parts of it
	// read from and written to a prompt cache.
	InputTokens, CachedInputTokens, CacheWriteTokens int64
	// OutputTokens counts every output token, reasoning included;
	// ReasoningTokens is the part of it spent thinking.
	OutputTokens, ReasoningTokens int64
	// Segments is the SMS segments Twilio bills (num_segments); Price is
	// Twilio's own price for the message when it is already known.
	Segments int64
	Price    policy.Money
	HasPrice bool
}

// Tokens is every token the call consumed.
func (u Usage) Tokens() int64 { return satAdd(u.InputTokens, u.OutputTokens) }

// usageDoc is every provider's usage object at once; field names do not
// collide across OpenAI Chat Completions, OpenAI Responses and Anthropic.
type usageDoc struct {
	PromptTokens        *int64 `json:"prompt_tokens"`     // OpenAI chat, completions, embeddings
	CompletionTokens    *int64 `json:"completion_tokens"` // OpenAI chat, completions
	PromptTokensDetails *struct {
		CachedTokens *int64 `json:"cached_tokens"`
	} `json:"prompt_tokens_details"`
	CompletionTokensDetails *struct {
		ReasoningTokens *int64 `json:"reasoning_tokens"`
	} `json:"completion_tokens_details"`
	InputTokens        *int64 `json:"input_tokens"`  // OpenAI Responses, Anthropic
	OutputTokens       *int64 `json:"output_tokens"` // OpenAI Responses, Anthropic
	InputTokensDetails *struct {
		CachedTokens *int64 `json:"cached_tokens"`
	} `json:"input_tokens_details"`
	OutputTokensDetails *struct {
		ReasoningTokens *int64 `json:"reasoning_tokens"`
	} `json:"output_tokens_details"`
	CacheCreationInputTokens *int64 `json:"cache_creation_input_tokens"` // Anthropic
	CacheReadInputTokens     *int64 `json:"cache_read_input_tokens"`     // Anthropic
}

func val(p *int64) int64 {
	if p == nil || *p < 0 {
		return 0
	}
	return *p
}

// apply reads the usage object into u. For Anthropic, input_tokens counts
// only the uncached input, and a later message_delta repeats (cumulatively)
// what message_start said, so fields present overwrite and absent ones keep.
func (d *usageDoc) apply(provider policy.Provider, u *Usage) {
	if provider == policy.ProviderAnthropic {
		in, cw, cr := val(d.InputTokens), val(d.CacheCreationInputTokens), val(d.CacheReadInputTokens)
		if d.InputTokens != nil || d.CacheCreationInputTokens != nil || d.CacheReadInputTokens != nil {
			if d.InputTokens == nil {
				in = u.InputTokens - u.CacheWriteTokens - u.CachedInputTokens
			}
			if d.CacheCreationInputTokens == nil {
				cw = u.CacheWriteTokens
			}
			if d.CacheReadInputTokens == nil {
				cr = u.CachedInputTokens
			}
			u.InputTokens, u.CacheWriteTokens, u.CachedInputTokens = satAdd(satAdd(max(in, 0), cw), cr), cw, cr
		}
		if d.OutputTokens != nil {
			u.OutputTokens = val(d.OutputTokens)
		}
		return
	}
	switch {
	case d.InputTokens != nil || d.OutputTokens != nil: // Responses API
		u.InputTokens, u.OutputTokens = val(d.InputTokens), val(d.OutputTokens)
		if d.InputTokensDetails != nil {
			u.CachedInputTokens = val(d.InputTokensDetails.CachedTokens)
		}
		if d.OutputTokensDetails != nil {
			u.ReasoningTokens = val(d.OutputTokensDetails.ReasoningTokens)
		}
	default:
		u.InputTokens, u.OutputTokens = val(d.PromptTokens), val(d.CompletionTokens)
		if d.PromptTokensDetails != nil {
			u.CachedInputTokens = val(d.PromptTokensDetails.CachedTokens)
		}
		if d.CompletionTokensDetails != nil {
			u.ReasoningTokens = val(d.CompletionTokensDetails.ReasoningTokens)
		}
	}
	u.CachedInputTokens = min(u.CachedInputTokens, u.InputTokens)
	u.ReasoningTokens = min(u.ReasoningTokens, u.OutputTokens)
}

// ParseUsage reads the usage of a whole, non-streamed response body. found
// is false when the body is valid but names no usage (an endpoint that
// consumes no tokens, or a Twilio message with no segment count); a body
// that is not a JSON object is an ErrMalformedBody.
func ParseUsage(provider policy.Provider, body []byte) (u Usage, found bool, err error) {
	if !isObject(body) {
		return Usage{}, false, malformed("%s response: not a JSON object", provider)
	}
	switch provider {
	case policy.ProviderOpenAI, policy.ProviderAnthropic:
		var doc struct {
			Model string    `json:"model"`
			Usage *usageDoc `json:"usage"`
		}
		if err := json.Unmarshal(body, &doc); err != nil {
			return Usage{}, false, malformed("%s response: %v", provider, err)
		}
		u.Model = doc.Model
		if doc.Usage == nil {
			return u, false, nil
		}
		doc.Usage.apply(provider, &u)
		return u, true, nil
	case policy.ProviderTwilio:
		return parseTwilioResponse(body)
	}
	return Usage{}, false, nil
}

// parseTwilioResponse reads a Message resource: num_segments ("2") and
// price ("-0.01500", negative for a charge, null until Twilio knows it).
func parseTwilioResponse(body []byte) (Usage, bool, error) {
	var doc struct {
		NumSegments json.RawMessage `json:"num_segments"`
		Price       json.RawMessage `json:"price"`
		PriceUnit   string          `json:"price_unit"`
	}
	if err := json.Unmarshal(body, &doc); err != nil {
		return Usage{}, false, malformed("twilio response: %v", err)
	}
	var u Usage
	if s := unquote(doc.NumSegments); s != "" {
		n, _, err := intParam("num_segments", []byte(s))
		if err != nil {
			return Usage{}, false, fmt.Errorf("twilio response: %w", err)
		}
		u.Segments = n
	}
	if s := unquote(doc.Price); s != "" && (doc.PriceUnit == "" || strings.EqualFold(doc.PriceUnit, "USD")) {
		m, err := policy.ParseMoney(strings.TrimPrefix(s, "-"))
		if err != nil || m < 0 {
			return Usage{}, false, malformed("twilio response: price %.40q", s)
		}
		u.Price, u.HasPrice = m, true
	}
	return u, u.Segments > 0 || u.HasPrice, nil
}

// unquote returns a JSON string's or number's text; "" for null or absent.
func unquote(raw json.RawMessage) string {
	raw = bytes.TrimSpace(raw)
	if isNull(raw) {
		return ""
	}
	if raw[0] == '"' {
		var s string
		if json.Unmarshal(raw, &s) != nil {
			return ""
		}
		return strings.TrimSpace(s)
	}
	return string(raw)
}

// Bounds of what a response's usage may claim for one call. No model
// reads or writes anywhere near MaxUsageTokens in one call (the largest
// context windows are a few million tokens); Twilio bills at most 10
// segments per 1,600-character message. A response claiming more (a
// buggy or hostile upstream, prompt_tokens: 9223372036854775807) is held
// to them, so that one answer cannot book billions or put a pool years in
// debt.
const (
	MaxUsageTokens   = 10_000_000
	MaxUsageSegments = 10_000
	MaxUsagePrice    = 1_000 * policy.NanosPerDollar
)

// Bounded returns u with every count held to its bound, and whether any
// was cut.
func (u Usage) Bounded() (Usage, bool) {
	cut := false
	clamp := func(v *int64, hi int64) {
		if *v > hi {
			*v, cut = hi, true
		}
		if *v < 0 {
			*v, cut = 0, true
		}
	}
	clamp(&u.InputTokens, MaxUsageTokens)
	clamp(&u.OutputTokens, MaxUsageTokens)
	clamp(&u.CachedInputTokens, u.InputTokens)
	clamp(&u.CacheWriteTokens, u.InputTokens-u.CachedInputTokens)
	clamp(&u.ReasoningTokens, u.OutputTokens)
	clamp(&u.Segments, MaxUsageSegments)
	p := int64(u.Price)
	clamp(&p, int64(MaxUsagePrice))
	u.Price = policy.Money(p)
	return u, cut
}
