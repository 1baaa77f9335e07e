package optimize

import (
	"bytes"
	"strings"

	"github.com/go-json-experiment/json/jsontext"
	"github.com/tollgate/tollgate/policy"
)

// cacheControl is the mark promptCache adds.
const cacheControl = `"cache_control":{"type":"ephemeral"}`

// promptCache marks the end of the stable prefix of an Anthropic call for
// prompt caching. Anthropic caches the prefix in the order tools → system
// → messages, up to and including the block that carries cache_control;
// a later call with the same prefix reads it at a tenth of the input price
// (writing it costs 1.25 times, for the default 5-minute cache).
//
// The mark goes on the last system block; a string system becomes one text
// block, [{"type":"text","text":<the same JSON string bytes>,
// "cache_control":{"type":"ephemeral"}}], which the API reads as the same
// prompt. With no system (absent, null, blank or []), it goes on the last
// tool definition. The messages are left alone: they change from call to
// call.
//
// Nothing is marked when the body already has a cache_control anywhere
// (the caller chose its own breakpoints, or asked for automatic caching
// with a top-level one; the API allows four at most), when the last system
// block is not a non-blank text block, when there is neither system nor
// tool to mark, or when the prefix counts fewer than minTokens tokens (see
// PrefixText for what is counted).
//
// Anthropic does not cache a prefix shorter than the model's minimum, and
// then charges the call as if it had no mark (no error, no write premium).
// Its prompt-caching page
// (https://docs.anthropic.com/en/docs/build-with-claude/prompt-caching,
// "Cache limitations"; as relayed by gateways' documentation in 2026, not
// read on Anthropic's own site from here) gives 1,024 tokens for Claude
// Sonnet 4.5, Opus 4.1, Opus 4, Sonnet 4 and Sonnet 3.7; 2,048 for Sonnet
// 4.6, Haiku 3.5 and Haiku 3; 4,096 for Opus 4.6, Opus 4.5 and Haiku 4.5.
// Older pages say 1,024 for Sonnet/Opus and 2,048 for Haiku. The policy
// sets MinPrefixTokens per model; these figures change with new models.
func promptCache(b Body, body []byte, t *top, minTokens int64) ([]splice, error) {
	if has, err := hasName(body, "cache_control"); err != nil || has {
		return nil, err
	}
	tools, system, err := prefix(body, t)
	if err != nil {
		return nil, err
	}
	var sp splice
	switch {
	case system.mark != nil:
		sp = *system.mark
	case system.none && tools.mark != nil:
		sp = *tools.mark
	default:
		return nil, nil
	}
	if minTokens > 0 {
		n := b.CountTokens(tools.text)
		for _, s := range system.texts {
			n += b.CountTokens(s)
		}
		if n < minTokens {
			return nil, nil
		}
	}
	return []splice{sp}, nil
}

// PrefixText returns the stable prefix of an Anthropic Messages body as
// PromptCache counts it: tools is the compact JSON of the tool definitions
// ("" when there are none) and system the text of each system text block
// (a string system is one). The prefix's token count is the count of tools
// plus that of each system text; costing's Anthropic estimate counts them
// the same way. For a body of any other provider it returns nothing.
func PrefixText(b Body, body []byte) (tools string, system []string, err error) {
	if b.Provider != policy.ProviderAnthropic {
		return "", nil, nil
	}
	t, err := scanTop(body)
	if err != nil {
		return "", nil, err
	}
	tp, sp, err := prefix(body, &t)
	return tp.text, sp.texts, err
}

// toolsPart and systemPart are the parts of the prefix: their text, and
// where the cache mark would go (nil: nowhere).
type (
	toolsPart struct {
		text string
		mark *splice
	}
	systemPart struct {
		texts []string
		none  bool // no system to speak of: absent, null, blank or []
		mark  *splice
	}
)

func prefix(body []byte, t *top) (tp toolsPart, sp systemPart, err error) {
	if tp, err = toolsPrefix(body, t.tools); err != nil {
		return toolsPart{}, systemPart{}, err
	}
	sp, err = systemPrefix(body, t.system)
	return tp, sp, err
}

func toolsPrefix(body []byte, tools span) (toolsPart, error) {
	if tools.isNull(body) || tools.kind(body) != '[' {
		return toolsPart{}, nil
	}
	v := jsontext.Value(bytes.Clone(tools.raw(body)))
	if err := v.Compact(); err != nil {
		return toolsPart{}, readErr(err)
	}
	tp := toolsPart{text: string(v)}
	es, err := arrayElems(body, tools)
	if err != nil || len(es) == 0 {
		return toolsPart{}, err
	}
	if last := es[len(es)-1]; last.kind(body) == '{' {
		s := insertMember(body, last.start+1, []byte(cacheControl))
		tp.mark = &s
	}
	return tp, nil
}

func systemPrefix(body []byte, system span) (systemPart, error) {
	if system.isNull(body) {
		return systemPart{none: true}, nil
	}
	switch system.kind(body) {
	case '"':
		s, _ := stringValue(system.raw(body))
		if blank(s) {
			return systemPart{none: true}, nil
		}
		var repl []byte
		repl = append(repl, `[{"type":"text","text":`...)
		repl = append(repl, system.raw(body)...)
		repl = append(repl, ","+cacheControl+"}]"...)
		mark := replace(system, repl)
		return systemPart{texts: []string{s}, mark: &mark}, nil
	case '[':
	default:
		return systemPart{}, nil // not a shape the API takes
	}
	es, err := arrayElems(body, system)
	if err != nil || len(es) == 0 {
		return systemPart{none: true}, err
	}
	var sp systemPart
	for i, e := range es {
		if e.kind(body) != '{' {
			return systemPart{}, nil
		}
		ms, err := objectMembers(body, e)
		if err != nil {
			return systemPart{}, err
		}
		text, isText := stringValue(find(ms, "text").rawOr(body))
		if !stringIs(find(ms, "type").rawOr(body), "text") || !isText {
			return systemPart{}, nil
		}
		sp.texts = append(sp.texts, text)
		if i == len(es)-1 && !blank(text) {
			mark := insertMember(body, e.start+1, []byte(cacheControl))
			sp.mark = &mark
		}
	}
	return sp, nil
}

// rawOr is raw, or nil for an absent value.
func (s span) rawOr(body []byte) []byte {
	if !s.ok() {
		return nil
	}
	return s.raw(body)
}

// blank reports whether s is empty or only white space: the API refuses a
// cache mark on an empty text block.
func blank(s string) bool { return strings.TrimSpace(s) == "" }
