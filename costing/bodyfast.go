package costing

import (
	"bytes"
	"errors"
	"io"
	"strings"
	"sync"

	"github.com/go-json-experiment/json/jsontext"
)

// The fast path of the one decode. encoding/json validates a body in one
// pass and decodes it in another; jsontext (the tokenizer of the Go team's
// encoding/json/v2, vendored as github.com/go-json-experiment/json until Go
// 1.27 ships it) does both in one, and with a bytes.Buffer it reads the
// body in place, so every raw field is a sub-slice of the body, as with
// encoding/json. It takes only the common body: an object whose keys are
// spelled exactly as the fields are, whose messages are an array of objects
// or null, followed by nothing. Any other body (a key in another case,
// which encoding/json folds onto a field; malformed JSON; messages of
// another shape) goes to encoding/json, so that its fields and its errors
// are exactly what they always were. FuzzParseOnce holds the two paths to
// the same results.

// fastOptions read strings and keys as encoding/json does: invalid UTF-8
// and repeated keys are accepted (a repeated key is then noticed, as
// rawField notices it).
var fastOptions = []jsontext.Options{jsontext.AllowDuplicateNames(true), jsontext.AllowInvalidUTF8(true)}

var decoders = sync.Pool{New: func() any { return new(jsontext.Decoder) }}

// errNotFast says the body is not one the fast path takes.
var errNotFast = errors.New("costing: not a body for the fast path")

// decodeFast fills f from body and reports whether it could; when it could
// not, f is to be thrown away.
func decodeFast(body []byte, f *bodyFields) bool {
	d := decoders.Get().(*jsontext.Decoder)
	d.Reset(bytes.NewBuffer(body), fastOptions...)
	err := fastObject(d, body, f)
	d.Reset(bytes.NewBuffer(nil)) // drop the body
	decoders.Put(d)
	return err == nil
}

func fastObject(d *jsontext.Decoder, body []byte, f *bodyFields) error {
	switch d.PeekKind() {
	case 'n': // null: no fields, as encoding/json leaves them
		if _, err := d.ReadToken(); err != nil {
			return err
		}
		return fastEnd(d)
	case '{':
	default:
		return errNotFast
	}
	if _, err := d.ReadToken(); err != nil {
		return err
	}
	seenMessages := false
	for d.PeekKind() != '}' {
		tok, err := d.ReadToken()
		if err != nil {
			return err
		}
		name := tok.String()
		if name == "messages" {
			// A second messages merges into the first's elements under
			// encoding/json (it reuses them): leave that to it.
			if seenMessages {
				return errNotFast
			}
			seenMessages = true
			if err := fastMessages(d, body, f); err != nil {
				return err
			}
			continue
		}
		if err := fastField(d, body, f.field(name), name, topNames); err != nil {
			return err
		}
	}
	if _, err := d.ReadToken(); err != nil {
		return err
	}
	return fastEnd(d)
}

// fastEnd requires the body to end after its value.
func fastEnd(d *jsontext.Decoder) error {
	if _, err := d.ReadToken(); err != io.EOF {
		return errNotFast
	}
	return nil
}

// fastField reads the value of key name into r (nil: a key no field
// takes, skipped unless encoding/json would fold it onto one of names).
func fastField(d *jsontext.Decoder, body []byte, r *rawField, name string, names []string) error {
	if r == nil {
		for _, n := range names {
			if strings.EqualFold(n, name) {
				return errNotFast
			}
		}
		return d.SkipValue()
	}
	v, err := d.ReadValue()
	if err != nil {
		return err
	}
	end := d.InputOffset()
	raw := body[end-int64(len(v)) : end]
	if r.raw != nil {
		r.raw = repeatedKey
	} else {
		r.raw = raw
	}
	return nil
}

func fastMessages(d *jsontext.Decoder, body []byte, f *bodyFields) error {
	switch d.PeekKind() {
	case 'n':
		f.Messages = nil
		_, err := d.ReadToken()
		return err
	case '[':
	default:
		return errNotFast
	}
	if _, err := d.ReadToken(); err != nil {
		return err
	}
	f.Messages = f.Messages[:0]
	for d.PeekKind() != ']' {
		var m rawMessage
		switch d.PeekKind() {
		case 'n':
			if _, err := d.ReadToken(); err != nil {
				return err
			}
		case '{':
			if _, err := d.ReadToken(); err != nil {
				return err
			}
			for d.PeekKind() != '}' {
				tok, err := d.ReadToken()
				if err != nil {
					return err
				}
				name := tok.String()
				if err := fastField(d, body, m.field(name), name, messageNames); err != nil {
					return err
				}
			}
			if _, err := d.ReadToken(); err != nil {
				return err
			}
		default:
			return errNotFast
		}
		f.Messages = append(f.Messages, m)
	}
	_, err := d.ReadToken()
	return err
}

// topNames and messageNames are the keys the fields take.
var (
	topNames = []string{"model", "messages", "system", "tools", "functions", "response_format", "max_completion_tokens",
		"max_tokens", "max_output_tokens", "n", "best_of", "stream", "stream_options", "input", "instructions", "text", "prompt", "suffix"}
	messageNames = []string{"role", "content", "name", "refusal", "tool_calls", "function_call", "audio"}
)

// field is the field a top-level key fills, or nil.
func (f *bodyFields) field(name string) *rawField {
	switch name {
	case "model":
		return &f.Model
	case "system":
		return &f.System
	case "tools":
		return &f.Tools
	case "functions":
		return &f.Functions
	case "response_format":
		return &f.ResponseFormat
	case "max_completion_tokens":
		return &f.MaxCompletionTokens
	case "max_tokens":
		return &f.MaxTokens
	case "max_output_tokens":
		return &f.MaxOutputTokens
	case "n":
		return &f.N
	case "best_of":
		return &f.BestOf
	case "stream":
		return &f.Stream
	case "stream_options":
		return &f.StreamOptions
	case "input":
		return &f.Input
	case "instructions":
		return &f.Instructions
	case "text":
		return &f.Text
	case "prompt":
		return &f.Prompt
	case "suffix":
		return &f.Suffix
	case "service_tier":
		return &f.ServiceTier
	}
	return nil
}

// field is the field a message's key fills, or nil.
func (m *rawMessage) field(name string) *rawField {
	switch name {
	case "role":
		return &m.Role
	case "content":
		return &m.Content
	case "name":
		return &m.Name
	case "refusal":
		return &m.Refusal
	case "tool_calls":
		return &m.ToolCalls
	case "function_call":
		return &m.FunctionCall
	case "audio":
		return &m.Audio
	}
	return nil
}
