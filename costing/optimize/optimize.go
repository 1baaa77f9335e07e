// Package optimize holds the cost-cutting rewrites of LLM request bodies
// (issue 12), as pure functions: a body and the edits a policy chose go in,
// the rewritten body and the edits that changed it come out. Choosing the
// edits (policy `optimize:` rules), calling Apply on the way out (ext_proc)
// and booking the savings are the caller's.
//
// # What a rewrite keeps
//
// A rewrite is a splice: the bytes of the values it changes are replaced,
// and a member it adds is inserted right after the opening '{' of its
// object. Every other byte of the body (unknown fields, key order,
// whitespace, the spelling of numbers and strings) stays as it was, and
// the output is checked to be one valid JSON object before it is returned.
//
// A rewrite never creates a duplicate key: it replaces a member that is
// there and inserts one only where it is not. A body that already has a
// key twice in one object (at any depth) is refused with ErrDuplicateKey,
// since JSON decoders disagree on which of the two wins. Invalid UTF-8,
// and an escaped lone surrogate such as "\ud800", is refused as malformed
// (encoding/json would take it, replacing it with U+FFFD). A refused body
// is returned unchanged, as the same slice.
//
// # The strategies
//
//   - Downgrade replaces the top-level "model" string (OpenAI chat,
//     responses, completions and embeddings; Anthropic messages).
//   - Flex sets the top-level "service_tier" to "flex" (OpenAI chat and
//     responses): it replaces "auto", "default" or null and inserts the
//     member when absent; "flex", "priority", "scale" and any other value
//     are left alone. Flex is billed at Batch API prices, is slower, may be
//     refused when capacity runs out, and only some models take it: the
//     policy decides where it fits.
//   - TokenCap lowers the output allowance to at most Edit.MaxTokens; it
//     never raises one. See tokenCap for the fields per endpoint.
//   - PromptCache marks the end of the stable prefix of an Anthropic call
//     with cache_control, when the body has none. See promptCache.
//   - Compact trims whitespace in message text and drops consecutive
//     duplicate messages (OpenAI chat; Anthropic messages and system). See
//     compact for exactly what it changes.
package optimize

import (
	"errors"
	"fmt"
	"unicode/utf8"

	"github.com/tollgate/tollgate/costing"
	"github.com/tollgate/tollgate/policy"
)

// Strategy names a rewrite.
type Strategy string

// The strategies.
const (
	Downgrade   Strategy = "downgrade"    // model → a cheaper model
	Flex        Strategy = "flex"         // OpenAI service_tier: "flex"
	TokenCap    Strategy = "token_cap"    // clamp the output allowance
	PromptCache Strategy = "prompt_cache" // Anthropic cache_control on a long stable prefix
	Compact     Strategy = "compact"      // order-preserving, meaning-preserving compaction
)

// KindMessages is the Kind of an Anthropic Messages API call (POST
// /v1/messages). costing names only OpenAI's kinds; for Anthropic, Apply
// takes KindMessages or "".
const KindMessages = "messages"

// Edit is one rewrite decided for a call (by the policy, elsewhere).
type Edit struct {
	Strategy Strategy
	// Model is Downgrade's target model; required.
	Model string
	// MaxTokens is TokenCap's most output tokens allowed; must be > 0.
	MaxTokens int64
	// MinPrefixTokens: PromptCache marks the prefix only when it counts at
	// least this many tokens (Body.CountTokens counts them). 0 marks any
	// prefix. Anthropic does not cache a prefix shorter than the model's
	// minimum: see promptCache.
	MinPrefixTokens int64
}

// Applied is an edit that changed the body, with what it replaced.
type Applied struct {
	Edit
	FromModel string // Downgrade: the model the body asked for
	// FromMaxTokens (TokenCap) is the largest allowance the body stated in
	// the fields the edit lowered, floored to an integer; 0 when it stated
	// none and the edit inserted one.
	FromMaxTokens   int64
	FromTier        string // Flex: the service_tier asked for ("" none or null)
	RemovedBytes    int64  // Compact: bytes removed from the body
	RemovedMessages int    // Compact: duplicate messages dropped
}

// Body identifies what is being rewritten.
type Body struct {
	// Provider is policy.ProviderOpenAI or policy.ProviderAnthropic; an
	// edit for any other provider does nothing.
	Provider policy.Provider
	// Kind is costing.KindChat, KindResponses, KindCompletions or
	// KindEmbeddings for OpenAI, KindMessages (or "") for Anthropic.
	Kind string
	// CountTokens counts the tokens of a text, for PromptCache's
	// MinPrefixTokens (costing's Tokenizer.Count with the model's encoding
	// will do; for Anthropic it is an approximation either way). It may be
	// nil when no PromptCache edit has MinPrefixTokens > 0. It is called
	// with the compact JSON of the tools and with each system text (see
	// PrefixText), synchronously, from the goroutine that called Apply.
	CountTokens func(text string) int64
}

// Errors of Apply and PrefixText; each returned error wraps one of these.
var (
	// ErrMalformedBody: the body is not one valid JSON object (or holds
	// invalid UTF-8).
	ErrMalformedBody = errors.New("optimize: malformed request body")
	// ErrDuplicateKey: an object of the body has a key twice.
	ErrDuplicateKey = errors.New("optimize: duplicate key in request body")
	// ErrInvalidEdit: an edit that cannot be applied as given (unknown
	// strategy, no target model, a cap below 1, a MinPrefixTokens with no
	// counter). A bug in the caller, not in the body.
	ErrInvalidEdit = errors.New("optimize: invalid edit")
)

// Apply applies edits in order, each to the body the previous ones left,
// and returns the new body and the edits that changed it.
//
// When no edit changes the body, out is body itself (the same slice, not a
// copy) and applied is nil; when no edit can apply to b at all (say Flex on
// Anthropic) the body is not even read. An error (the body is malformed or
// has a duplicate key, or an edit is invalid) returns body unchanged, with
// no edit applied. Apply never modifies body's bytes.
func Apply(b Body, body []byte, edits []Edit) (out []byte, applied []Applied, err error) {
	if err := validate(b, edits); err != nil {
		return body, nil, err
	}
	need := false
	for _, e := range edits {
		need = need || applies(b, e.Strategy)
	}
	if !need {
		return body, nil, nil
	}
	cur := body
	t, err := scanTop(cur)
	if err != nil {
		return body, nil, err
	}
	for _, e := range edits {
		if !applies(b, e.Strategy) {
			continue
		}
		next, a, err := apply1(b, cur, &t, e)
		if err != nil {
			return body, nil, err
		}
		if next == nil {
			continue
		}
		// Read the result again: the next edit works on it, and it proves
		// the splice left one valid object with no duplicate key.
		if t, err = scanTop(next); err != nil {
			return body, nil, fmt.Errorf("optimize: %s produced a bad body (a bug): %w", e.Strategy, err)
		}
		cur = next
		applied = append(applied, a)
	}
	if applied == nil {
		return body, nil, nil
	}
	return cur, applied, nil
}

// apply1 applies one edit; a nil out means it changed nothing.
func apply1(b Body, body []byte, t *top, e Edit) (out []byte, a Applied, err error) {
	a.Edit = e
	var sp []splice
	switch e.Strategy {
	case Downgrade:
		sp, a.FromModel = downgrade(body, t, e.Model)
	case Flex:
		sp, a.FromTier = flex(body, t)
	case TokenCap:
		sp, a.FromMaxTokens = tokenCap(b, body, t, e.MaxTokens)
	case PromptCache:
		sp, err = promptCache(b, body, t, e.MinPrefixTokens)
	case Compact:
		sp, a.RemovedMessages, err = compact(b, body, t)
	}
	if err != nil || len(sp) == 0 {
		return nil, Applied{}, err
	}
	out = splices(body, sp)
	if e.Strategy == Compact {
		a.RemovedBytes = int64(len(body) - len(out))
	}
	return out, a, nil
}

// validate checks the edits alone.
func validate(b Body, edits []Edit) error {
	for i, e := range edits {
		var bad string
		switch e.Strategy {
		case Downgrade:
			if e.Model == "" || !utf8.ValidString(e.Model) {
				bad = "downgrade needs a target model (valid UTF-8)"
			}
		case TokenCap:
			if e.MaxTokens < 1 {
				bad = fmt.Sprintf("token_cap needs a cap of at least 1, got %d", e.MaxTokens)
			}
		case PromptCache:
			if e.MinPrefixTokens < 0 {
				bad = "prompt_cache: negative min_prefix_tokens"
			} else if e.MinPrefixTokens > 0 && b.CountTokens == nil {
				bad = "prompt_cache: min_prefix_tokens needs Body.CountTokens"
			}
		case Flex, Compact:
		default:
			bad = fmt.Sprintf("unknown strategy %q", e.Strategy)
		}
		if bad != "" {
			return fmt.Errorf("%w: edits[%d]: %s", ErrInvalidEdit, i, bad)
		}
	}
	return nil
}

// applies reports whether strategy s can change a body of b at all.
func applies(b Body, s Strategy) bool {
	switch b.Provider {
	case policy.ProviderOpenAI:
		k := b.Kind
		chat, resp := k == costing.KindChat, k == costing.KindResponses
		switch s {
		case Downgrade:
			return chat || resp || k == costing.KindCompletions || k == costing.KindEmbeddings
		case Flex:
			return chat || resp
		case TokenCap:
			return chat || resp || k == costing.KindCompletions
		case Compact:
			return chat
		}
	case policy.ProviderAnthropic:
		if b.Kind != "" && b.Kind != KindMessages {
			return false
		}
		return s == Downgrade || s == TokenCap || s == PromptCache || s == Compact
	}
	return false
}
