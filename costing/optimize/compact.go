package optimize

import (
	"bytes"

	"github.com/go-json-experiment/json/jsontext"
	"github.com/tollgate/tollgate/policy"
)

// compact is the opt-in compaction. It keeps the order of everything and,
// for a model reading the prompt, its meaning. Exactly this changes:
//
//   - In message text (OpenAI chat: a string content, and the "text" of
//     content parts of type "text"; Anthropic: a string content or system,
//     and the "text" of blocks of type "text" in messages and system):
//     spaces and tabs just before a line break (\n or \r\n) are removed,
//     and a run of more than two line breaks, with nothing but spaces and
//     tabs between them, is cut to two (the first two, as spelled).
//   - A message that is an exact duplicate of the message just before it
//     is dropped: both have only "role" and "content", the same role
//     (byte-identical), and byte-identical content after the trimming
//     above, a string or text-only parts with no other field. The last
//     message is never dropped, nor a message that carries anything else
//     (tool calls, tool results, ids, names, cache marks, images).
//
// And this does not: leading indentation and runs of spaces inside a line
// (code depends on them); spaces at the very end of a text (a prompt may
// end with one on purpose); a lone \r, and the spaces and tabs after one;
// Unicode spaces other than U+0020 and tab; the text of tool results and
// tool calls (OpenAI role "tool" and "function" messages, Anthropic
// tool_use and tool_result blocks), of thinking blocks (signed) and of
// anything outside messages and system.
// What can still change meaning: a Markdown hard line break (two trailing
// spaces), and text where trailing white space is data (a diff, a
// heredoc): hence opt-in.
//
// A changed string is re-encoded with jsontext's minimal escaping (RFC
// 8785); a string that does not change keeps its bytes.
func compact(b Body, body []byte, t *top) (sp []splice, dropped int, err error) {
	if b.Provider == policy.ProviderAnthropic {
		if sp, err = compactSystem(body, t.system, sp); err != nil {
			return nil, 0, err
		}
	}
	if t.messages.isNull(body) || t.messages.kind(body) != '[' {
		return sp, 0, nil
	}
	es, err := arrayElems(body, t.messages)
	if err != nil {
		return nil, 0, err
	}
	var prev message
	for i, e := range es {
		m, err := readMessage(body, e)
		if err != nil {
			return nil, 0, err
		}
		if i > 0 && i < len(es)-1 && m.duplicates(body, &prev) {
			// Drop from the end of the message before: its comma goes too.
			sp = append(sp, splice{start: es[i-1].end, end: e.end})
			dropped++
		} else {
			sp = append(sp, m.text...)
		}
		prev = m
	}
	return sp, dropped, nil
}

// message is what compact knows of one message.
type message struct {
	role, content span
	plain         bool     // only role and content, a string or text-only parts
	text          []splice // the compaction of its text
	final         []byte   // its content after text (set by finalContent)
}

func readMessage(body []byte, e span) (message, error) {
	if e.kind(body) != '{' {
		return message{}, nil
	}
	ms, err := objectMembers(body, e)
	if err != nil {
		return message{}, err
	}
	var m message
	m.plain = len(ms) == 2
	m.role, m.content = find(ms, "role"), find(ms, "content")
	role := m.role.rawOr(body)
	if !m.role.isString(body) || !m.content.ok() || stringIs(role, "tool") || stringIs(role, "function") {
		m.plain = false
		return m, nil
	}
	switch m.content.kind(body) {
	case '"':
		m.text, err = compactString(body, m.content, nil)
		return m, err
	case '[':
	default:
		m.plain = false
		return m, nil
	}
	parts, err := arrayElems(body, m.content)
	if err != nil {
		return message{}, err
	}
	for _, p := range parts {
		if p.kind(body) != '{' {
			m.plain = false
			continue
		}
		pm, err := objectMembers(body, p)
		if err != nil {
			return message{}, err
		}
		text := find(pm, "text")
		if !stringIs(find(pm, "type").rawOr(body), "text") || !text.isString(body) {
			m.plain = false
			continue
		}
		m.plain = m.plain && len(pm) == 2
		if m.text, err = compactString(body, text, m.text); err != nil {
			return message{}, err
		}
	}
	return m, nil
}

// duplicates reports whether m may be dropped as a duplicate of prev.
func (m *message) duplicates(body []byte, prev *message) bool {
	return m.plain && prev.plain &&
		bytes.Equal(m.role.raw(body), prev.role.raw(body)) &&
		bytes.Equal(m.finalContent(body), prev.finalContent(body))
}

// finalContent is the content's bytes once its text is compacted.
func (m *message) finalContent(body []byte) []byte {
	if m.final == nil {
		m.final = m.content.raw(body)
		if len(m.text) > 0 {
			sub := make([]splice, len(m.text))
			for i, s := range m.text {
				sub[i] = splice{start: s.start - m.content.start, end: s.end - m.content.start, repl: s.repl}
			}
			m.final = splices(m.final, sub)
		}
	}
	return m.final
}

// compactSystem compacts an Anthropic system: a string, or text blocks.
func compactSystem(body []byte, system span, sp []splice) ([]splice, error) {
	if system.isNull(body) {
		return sp, nil
	}
	switch system.kind(body) {
	case '"':
		return compactString(body, system, sp)
	case '[':
	default:
		return sp, nil
	}
	es, err := arrayElems(body, system)
	if err != nil {
		return nil, err
	}
	for _, e := range es {
		if e.kind(body) != '{' {
			continue
		}
		ms, err := objectMembers(body, e)
		if err != nil {
			return nil, err
		}
		if text := find(ms, "text"); stringIs(find(ms, "type").rawOr(body), "text") && text.isString(body) {
			if sp, err = compactString(body, text, sp); err != nil {
				return nil, err
			}
		}
	}
	return sp, nil
}

// compactString appends to sp the splice that compacts the JSON string at
// s, if it changes.
func compactString(body []byte, s span, sp []splice) ([]splice, error) {
	raw := s.raw(body)
	// A line break in a JSON string is escaped: \n, or \u000a.
	if !bytes.Contains(raw, []byte(`\n`)) && !bytes.Contains(raw, []byte(`\u`)) {
		return sp, nil
	}
	text, err := jsontext.AppendUnquote(nil, raw)
	if err != nil {
		return nil, readErr(err)
	}
	n := len(text)
	if text = compactText(text); len(text) == n {
		return sp, nil
	}
	repl, err := jsontext.AppendQuote(make([]byte, 0, len(raw)), text)
	if err != nil {
		return nil, readErr(err)
	}
	return append(sp, replace(s, repl)), nil
}

// compactText compacts text in place (see compact) and returns it; only
// bytes are removed, so it changed if it is shorter.
func compactText(text []byte) []byte {
	out := text[:0]
	breaks := 0 // line breaks since the last byte other than space, tab or a break
	for i := 0; i < len(text); i++ {
		c := text[i]
		n := 0 // length of a line break at i
		if c == '\n' {
			n = 1
		} else if c == '\r' && i+1 < len(text) && text[i+1] == '\n' {
			n = 2
		}
		if n == 0 {
			out = append(out, c)
			if c != ' ' && c != '\t' {
				breaks = 0
			}
			continue
		}
		// Trim the blanks before the break, but not those after a lone CR:
		// that would make a CRLF of it, a break the next pass trims before.
		if trimmed := bytes.TrimRight(out, " \t"); len(trimmed) == 0 || trimmed[len(trimmed)-1] != '\r' {
			out = trimmed
		}
		if breaks++; breaks <= 2 {
			out = append(out, text[i:i+n]...)
		}
		i += n - 1
	}
	return out
}
