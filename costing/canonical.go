package costing

import (
	"bytes"
	"encoding/json"
	"errors"
	"slices"
	"strings"
	"unicode/utf8"
)

// Canonical JSON for request identities: the same document however it is
// written. Objects' keys are sorted (by their decoded text) with no
// insignificant space; numbers keep their text; strings are written one
// way: the characters themselves, with only '"', '\\' and control
// characters escaped (\" \\ \u00XX), so a string written without escapes
// is copied as it is, and one written with them ("\u00e9", "\/") becomes
// the same bytes. The walk checks the grammar as it goes (RFC 8259: the
// numbers, literals, escapes and separators json.Valid accepts), so a body
// is read once.

// errNotCanonical says a body has no one canonical form: a key given
// twice (providers differ on which value counts), or nesting too deep.
var errNotCanonical = errors.New("costing: no canonical form")

// maxCanonicalDepth bounds the nesting canonicalJSON follows.
const maxCanonicalDepth = 512

// canonicalJSON re-encodes a JSON body canonically, and returns the
// top-level object's fields, each in canonical form. ok is false when the
// body is not valid UTF-8 JSON, repeats a key, nests deeper than
// maxCanonicalDepth, or escapes a UTF-16 surrogate (decoding may turn two
// different bodies into one): such a body is hashed as its bytes.
func canonicalJSON(body []byte) (out []byte, top map[string][]byte, ok bool) {
	if !utf8.Valid(body) || escapesSurrogate(body) {
		return nil, nil, false
	}
	c := canonicalizer{b: body, top: map[string][]byte{}}
	out, err := c.value(make([]byte, 0, len(body)), 0)
	if c.space(); err != nil || c.i != len(body) {
		return nil, nil, false
	}
	return out, c.top, true
}

type canonicalizer struct {
	b   []byte
	i   int
	top map[string][]byte
}

func (c *canonicalizer) space() {
	for c.i < len(c.b) {
		switch c.b[c.i] {
		case ' ', '\t', '\n', '\r':
			c.i++
		default:
			return
		}
	}
}

// value appends the canonical form of the value at c.i to out.
func (c *canonicalizer) value(out []byte, depth int) ([]byte, error) {
	if depth > maxCanonicalDepth {
		return nil, errNotCanonical
	}
	c.space()
	if c.i >= len(c.b) {
		return nil, errNotCanonical
	}
	switch ch := c.b[c.i]; ch {
	case '{':
		return c.object(out, depth)
	case '[':
		return c.array(out, depth)
	case '"':
		s, _, err := c.str(false)
		return append(out, s...), err
	case 't', 'f', 'n':
		for _, lit := range [...]string{"true", "false", "null"} {
			if strings.HasPrefix(string(c.b[c.i:min(c.i+5, len(c.b))]), lit) {
				c.i += len(lit)
				return append(out, lit...), nil
			}
		}
		return nil, errNotCanonical
	}
	start := c.i
	if !c.number() {
		return nil, errNotCanonical
	}
	return append(out, c.b[start:c.i]...), nil
}

// number reads -?(0|[1-9][0-9]*)(\.[0-9]+)?([eE][+-]?[0-9]+)? at c.i.
func (c *canonicalizer) number() bool {
	c.accept('-')
	switch {
	case c.accept('0'):
	case c.i < len(c.b) && c.b[c.i] >= '1' && c.b[c.i] <= '9':
		c.digits()
	default:
		return false
	}
	if c.accept('.') && !c.digits() {
		return false
	}
	if c.accept('e') || c.accept('E') {
		if !c.accept('+') {
			c.accept('-')
		}
		if !c.digits() {
			return false
		}
	}
	return true
}

func (c *canonicalizer) accept(ch byte) bool {
	if c.i < len(c.b) && c.b[c.i] == ch {
		c.i++
		return true
	}
	return false
}

// digits reads [0-9]+, reporting whether there was one.
func (c *canonicalizer) digits() bool {
	start := c.i
	for c.i < len(c.b) && c.b[c.i] >= '0' && c.b[c.i] <= '9' {
		c.i++
	}
	return c.i > start
}

type member struct {
	key      string // decoded, for order and repeats
	enc, val []byte
}

func (c *canonicalizer) object(out []byte, depth int) ([]byte, error) {
	c.i++ // {
	var ms []member
	c.space()
	if !c.accept('}') {
		for {
			c.space()
			if c.i >= len(c.b) || c.b[c.i] != '"' {
				return nil, errNotCanonical
			}
			enc, key, err := c.str(true)
			if err != nil {
				return nil, err
			}
			if c.space(); !c.accept(':') {
				return nil, errNotCanonical
			}
			val, err := c.value(nil, depth+1)
			if err != nil {
				return nil, err
			}
			ms = append(ms, member{key: key, enc: enc, val: val})
			if c.space(); c.accept('}') {
				break
			}
			if !c.accept(',') {
				return nil, errNotCanonical
			}
		}
	}
	slices.SortFunc(ms, func(a, b member) int { return strings.Compare(a.key, b.key) })
	out = append(out, '{')
	for i, m := range ms {
		if i > 0 {
			if ms[i-1].key == m.key {
				return nil, errNotCanonical
			}
			out = append(out, ',')
		}
		out = append(append(append(out, m.enc...), ':'), m.val...)
		if depth == 0 {
			c.top[m.key] = m.val
		}
	}
	return append(out, '}'), nil
}

func (c *canonicalizer) array(out []byte, depth int) ([]byte, error) {
	c.i++ // [
	out = append(out, '[')
	c.space()
	if c.accept(']') {
		return append(out, ']'), nil
	}
	for {
		var err error
		if out, err = c.value(out, depth+1); err != nil {
			return nil, err
		}
		if c.space(); c.accept(']') {
			return append(out, ']'), nil
		}
		if !c.accept(',') {
			return nil, errNotCanonical
		}
		out = append(out, ',')
	}
}

// str reads the string at c.i: its canonical form and, when wanted (a
// key), its decoded text.
func (c *canonicalizer) str(wantText bool) (enc []byte, text string, err error) {
	start, escaped := c.i, false
	c.i++ // "
	for {
		// Most of a string is plain text: skip it in one tight loop.
		for c.i < len(c.b) {
			if ch := c.b[c.i]; ch < 0x20 || ch == '"' || ch == '\\' {
				break
			}
			c.i++
		}
		if c.i >= len(c.b) {
			return nil, "", errNotCanonical
		}
		switch ch := c.b[c.i]; {
		case ch < 0x20:
			return nil, "", errNotCanonical
		case ch == '\\':
			if c.i+1 >= len(c.b) {
				return nil, "", errNotCanonical
			}
			switch c.b[c.i+1] {
			case '"', '\\', '/', 'b', 'f', 'n', 'r', 't':
				c.i += 2
			case 'u':
				if c.i+6 > len(c.b) || !isHex(c.b[c.i+2:c.i+6]) {
					return nil, "", errNotCanonical
				}
				c.i += 6
			default:
				return nil, "", errNotCanonical
			}
			escaped = true
			continue
		case ch == '"':
			c.i++
			raw := c.b[start:c.i]
			if !escaped {
				if wantText {
					text = string(raw[1 : len(raw)-1])
				}
				return raw, text, nil
			}
			if err := json.Unmarshal(raw, &text); err != nil {
				return nil, "", err
			}
			return quote(text), text, nil
		}
		c.i++
	}
}

func isHex(b []byte) bool {
	for _, ch := range b {
		if (ch < '0' || ch > '9') && (ch|0x20 < 'a' || ch|0x20 > 'f') {
			return false
		}
	}
	return true
}

// quote writes s as a JSON string, escaping only '"', '\\' and control
// characters: what a string written without escapes already is.
func quote(s string) []byte {
	const hex = "0123456789abcdef"
	out := make([]byte, 0, len(s)+2)
	out = append(out, '"')
	for i := 0; i < len(s); i++ {
		switch ch := s[i]; {
		case ch == '"' || ch == '\\':
			out = append(out, '\\', ch)
		case ch < 0x20:
			out = append(out, '\\', 'u', '0', '0', hex[ch>>4], hex[ch&0xf])
		default:
			out = append(out, ch)
		}
	}
	return append(out, '"')
}

// escapesSurrogate reports a \uD800–\uDFFF escape anywhere in body.
func escapesSurrogate(body []byte) bool {
	for {
		i := bytes.Index(body, []byte(`\u`))
		if i < 0 || i+3 >= len(body) {
			return false
		}
		if body[i+2]|0x20 == 'd' {
			if c := body[i+3] | 0x20; c == '8' || c == '9' || (c >= 'a' && c <= 'f') {
				return true
			}
		}
		body = body[i+2:]
	}
}
