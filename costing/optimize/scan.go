package optimize

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"slices"
	"sync"

	"github.com/go-json-experiment/json/jsontext"
)

// Reading a body. jsontext tokenizes the body in place (a bytes.Buffer is
// read without a copy, and a value it returns is a sub-slice of the body),
// so the offset of every value is known and a rewrite is a splice. Its
// defaults are the strict ones we want: a duplicate name in any object and
// invalid UTF-8 are errors.

// scanner is a pooled decoder with the buffer it reads.
type scanner struct {
	d  jsontext.Decoder
	bb bytes.Buffer
}

var scanners = sync.Pool{New: func() any { return new(scanner) }}

func getScanner(b []byte) *scanner {
	s := scanners.Get().(*scanner)
	s.bb = *bytes.NewBuffer(b)
	s.d.Reset(&s.bb)
	return s
}

func putScanner(s *scanner) {
	s.bb = bytes.Buffer{}
	s.d.Reset(&s.bb) // drop the body
	scanners.Put(s)
}

// readErr classifies a tokenizer error.
func readErr(err error) error {
	if errors.Is(err, jsontext.ErrDuplicateName) {
		return fmt.Errorf("%w: %v", ErrDuplicateKey, err)
	}
	return fmt.Errorf("%w: %v", ErrMalformedBody, err)
}

// span is the position of a value in the body: body[start:end]. The zero
// span is an absent value (no value starts at 0 but the body itself).
type span struct{ start, end int }

func (s span) ok() bool                  { return s.end > 0 }
func (s span) raw(body []byte) []byte    { return body[s.start:s.end] }
func (s span) kind(body []byte) byte     { return body[s.start] }
func (s span) isNull(body []byte) bool   { return !s.ok() || body[s.start] == 'n' }
func (s span) isString(body []byte) bool { return s.ok() && body[s.start] == '"' }

// top is what the rewrites need of a body's top level.
type top struct {
	open int // offset just after the opening '{'
	model, serviceTier, maxCompletionTokens, maxTokens, maxOutputTokens,
	system, tools, messages span
}

func (t *top) field(name []byte) *span {
	switch string(name) {
	case "model":
		return &t.model
	case "service_tier":
		return &t.serviceTier
	case "max_completion_tokens":
		return &t.maxCompletionTokens
	case "max_tokens":
		return &t.maxTokens
	case "max_output_tokens":
		return &t.maxOutputTokens
	case "system":
		return &t.system
	case "tools":
		return &t.tools
	case "messages":
		return &t.messages
	}
	return nil
}

// scanTop reads the whole body, which must be one JSON object and nothing
// else, validating every value in it, and notes where the members the
// rewrites touch are.
func scanTop(body []byte) (t top, err error) {
	s := getScanner(body)
	defer putScanner(s)
	d := &s.d
	if k := d.PeekKind(); k != '{' {
		if k != 0 {
			return top{}, fmt.Errorf("%w: not a JSON object", ErrMalformedBody)
		}
		_, err := d.ReadToken()
		if err == nil || err == io.EOF {
			return top{}, fmt.Errorf("%w: empty", ErrMalformedBody)
		}
		return top{}, readErr(err)
	}
	if _, err := d.ReadToken(); err != nil {
		return top{}, readErr(err)
	}
	t.open = int(d.InputOffset())
	var buf [32]byte
	for d.PeekKind() != '}' {
		name, err := d.ReadValue()
		if err != nil {
			return top{}, readErr(err)
		}
		n := unquoteName(name, buf[:0])
		v, err := d.ReadValue()
		if err != nil {
			return top{}, readErr(err)
		}
		if f := t.field(n); f != nil {
			end := int(d.InputOffset())
			*f = span{end - len(v), end}
		}
	}
	if _, err := d.ReadToken(); err != nil {
		return top{}, readErr(err)
	}
	if _, err := d.ReadToken(); err != io.EOF {
		if err == nil {
			return top{}, fmt.Errorf("%w: more than one JSON value", ErrMalformedBody)
		}
		return top{}, readErr(err)
	}
	return t, nil
}

// unquoteName returns the name a quoted JSON string spells: a sub-slice of
// raw when it has no escape, else decoded into buf.
func unquoteName(raw, buf []byte) []byte {
	if bytes.IndexByte(raw, '\\') < 0 {
		return raw[1 : len(raw)-1]
	}
	n, err := jsontext.AppendUnquote(buf, raw)
	if err != nil {
		return nil // not reached: the tokenizer validated raw
	}
	return n
}

// stringIs reports whether the JSON string raw spells s.
func stringIs(raw []byte, s string) bool {
	if len(raw) == 0 || raw[0] != '"' {
		return false
	}
	var buf [32]byte
	return string(unquoteName(raw, buf[:0])) == s
}

// stringValue decodes the JSON string raw; ok is false for another kind.
func stringValue(raw []byte) (s string, ok bool) {
	if len(raw) == 0 || raw[0] != '"' {
		return "", false
	}
	var buf [64]byte
	return string(unquoteName(raw, buf[:0])), true
}

// member is one member of an object: its name (decoded) and value.
type member struct {
	name []byte
	val  span
}

// objectMembers returns the members of the object at sp, whose bytes the
// caller knows to be valid (scanTop read them).
func objectMembers(body []byte, sp span) ([]member, error) {
	s := getScanner(sp.raw(body))
	defer putScanner(s)
	d := &s.d
	if _, err := d.ReadToken(); err != nil {
		return nil, readErr(err)
	}
	var ms []member
	for d.PeekKind() != '}' {
		name, err := d.ReadValue()
		if err != nil {
			return nil, readErr(err)
		}
		n := unquoteName(name, nil)
		v, err := d.ReadValue()
		if err != nil {
			return nil, readErr(err)
		}
		end := sp.start + int(d.InputOffset())
		ms = append(ms, member{name: n, val: span{end - len(v), end}})
	}
	return ms, nil
}

// find returns the value of the member named name.
func find(ms []member, name string) span {
	for _, m := range ms {
		if string(m.name) == name {
			return m.val
		}
	}
	return span{}
}

// arrayElems returns the spans of the elements of the array at sp.
func arrayElems(body []byte, sp span) ([]span, error) {
	s := getScanner(sp.raw(body))
	defer putScanner(s)
	d := &s.d
	if _, err := d.ReadToken(); err != nil {
		return nil, readErr(err)
	}
	var es []span
	for d.PeekKind() != ']' {
		v, err := d.ReadValue()
		if err != nil {
			return nil, readErr(err)
		}
		end := sp.start + int(d.InputOffset())
		es = append(es, span{end - len(v), end})
	}
	return es, nil
}

// hasName reports whether any object in body, at any depth, has a member
// named name.
func hasName(body []byte, name string) (bool, error) {
	s := getScanner(body)
	defer putScanner(s)
	d := &s.d
	for {
		switch d.PeekKind() {
		case 0:
			if _, err := d.ReadToken(); err != io.EOF {
				return false, readErr(err)
			}
			return false, nil
		case '{', '[', '}', ']':
			if _, err := d.ReadToken(); err != nil {
				return false, readErr(err)
			}
		default:
			k, n := d.StackIndex(d.StackDepth())
			v, err := d.ReadValue()
			if err != nil {
				return false, readErr(err)
			}
			if k == '{' && n%2 == 0 && stringIs(v, name) {
				return true, nil
			}
		}
	}
}

// splice replaces body[start:end] with repl (an insertion when start ==
// end).
type splice struct {
	start, end int
	repl       []byte
}

// splices applies sp, which must not overlap, to a copy of body.
func splices(body []byte, sp []splice) []byte {
	slices.SortStableFunc(sp, func(a, b splice) int { return a.start - b.start })
	n := len(body)
	for _, s := range sp {
		n += len(s.repl) - (s.end - s.start)
	}
	out := make([]byte, 0, n)
	at := 0
	for _, s := range sp {
		out = append(out, body[at:s.start]...)
		out = append(out, s.repl...)
		at = s.end
	}
	return append(out, body[at:]...)
}

// insertMember is the splice that adds member (`"name":value`) as the first
// member of the object whose '{' ends just before open.
func insertMember(body []byte, open int, member []byte) splice {
	rest := bytes.TrimLeft(body[open:], " \t\r\n")
	if len(rest) == 0 || rest[0] != '}' {
		member = append(member, ',')
	}
	return splice{start: open, end: open, repl: member}
}

// replace is the splice that replaces the value at sp.
func replace(sp span, repl []byte) splice {
	return splice{start: sp.start, end: sp.end, repl: repl}
}
