package costing

import (
	"bytes"
	"encoding/json"
	"errors"
	"reflect"
	"strings"
	"sync"
	"sync/atomic"
	"unicode/utf8"
	"unsafe"
)

// A call's body is decoded once, whoever reads it: routing (its model), the
// provider's parser (ParseOpenAI, ParseAnthropic) and the size-based
// fallback all read the same parsedBody. The one whole-body decode keeps
// each top-level field the parsers know as its raw JSON (a sub-slice of the
// body, nothing copied), and walks into messages, which both chat and
// Anthropic read, keeping each message's fields raw as well. A parser then
// decodes only the fields it reads, into the same types it always has.
// encoding/json matches keys to fields the same way whichever struct holds
// them, so a field means the same here as in each parser's own struct, and
// a field fails to decode here exactly when it would have failed there.
//
// Two cases are decoded the old way instead, whole into each parser's
// struct, so that their results never depend on this file:
//   - a body that repeats a key (or gives it twice under two spellings that
//     encoding/json folds together): here only its last value is kept,
//     where decoding into a parser's struct also reports a type error in
//     the first;
//   - for the parsers that read messages, a body whose messages are not an
//     array of objects (or null): the error then names the parser's types.
type parsedBody struct {
	body []byte

	once   sync.Once
	fields bodyFields
	err    error // the body is not JSON, or neither an object nor null
	whole  bool  // a key repeats: decode the body whole into each parser's struct
	// badMessages: messages is not an array of objects; the parsers that
	// read it decode the body whole, to fail as they did.
	badMessages bool

	llmOnce sync.Once
	llm     LLMBody
	llmErr  error

	decodes atomic.Int32 // whole-body decodes, for the tests
}

func newParsedBody(body []byte) *parsedBody { return &parsedBody{body: body} }

// rawField is one field, undecoded. encoding/json calls UnmarshalJSON once
// for each occurrence of its key, with a sub-slice of the body given to
// json.Unmarshal; the body is never changed, so keeping the slice is safe
// and saves a copy. A key met twice leaves repeatedKey, and the body is
// decoded whole (see parsedBody).
type rawField struct{ raw []byte }

var repeatedKey = []byte("repeated")

func (f *rawField) UnmarshalJSON(b []byte) error {
	if f.raw != nil {
		f.raw = repeatedKey
		return nil
	}
	f.raw = b
	return nil
}

func (f *rawField) repeated() bool {
	return len(f.raw) == len(repeatedKey) && &f.raw[0] == &repeatedKey[0]
}

// bodyFields holds every top-level field that ParseLLMBody or one of the
// provider parsers reads. Keep it in step with llmFields, chatRequest,
// responsesRequest, embeddingsRequest, completionsRequest and
// anthropicRequest: TestBodyFieldsCoverParsers checks that it is.
type bodyFields struct {
	Model               rawField     `json:"model"`
	Messages            []rawMessage `json:"messages"`
	System              rawField     `json:"system"`
	Tools               rawField     `json:"tools"`
	Functions           rawField     `json:"functions"`
	ResponseFormat      rawField     `json:"response_format"`
	MaxCompletionTokens rawField     `json:"max_completion_tokens"`
	MaxTokens           rawField     `json:"max_tokens"`
	MaxOutputTokens     rawField     `json:"max_output_tokens"`
	N                   rawField     `json:"n"`
	BestOf              rawField     `json:"best_of"`
	Stream              rawField     `json:"stream"`
	StreamOptions       rawField     `json:"stream_options"`
	Input               rawField     `json:"input"`
	Instructions        rawField     `json:"instructions"`
	Text                rawField     `json:"text"`
	Prompt              rawField     `json:"prompt"`
	Suffix              rawField     `json:"suffix"`
	ServiceTier         rawField     `json:"service_tier"`
}

// rawMessage is one element of messages, with the fields of chatMessage and
// of Anthropic's messages.
type rawMessage struct {
	Role         rawField `json:"role"`
	Content      rawField `json:"content"`
	Name         rawField `json:"name"`
	Refusal      rawField `json:"refusal"`
	ToolCalls    rawField `json:"tool_calls"`
	FunctionCall rawField `json:"function_call"`
	Audio        rawField `json:"audio"`
}

func (f *bodyFields) repeated() bool {
	for i := range f.Messages {
		m := &f.Messages[i]
		for _, r := range [...]*rawField{&m.Role, &m.Content, &m.Name, &m.Refusal, &m.ToolCalls, &m.FunctionCall, &m.Audio} {
			if r.repeated() {
				return true
			}
		}
	}
	for _, r := range [...]*rawField{&f.Model, &f.System, &f.Tools, &f.Functions, &f.ResponseFormat,
		&f.MaxCompletionTokens, &f.MaxTokens, &f.MaxOutputTokens, &f.N, &f.BestOf, &f.Stream, &f.StreamOptions,
		&f.Input, &f.Instructions, &f.Text, &f.Prompt, &f.Suffix, &f.ServiceTier} {
		if r.repeated() {
			return true
		}
	}
	return false
}

// decoded returns the body's fields, decoding the body on first use.
func (p *parsedBody) decoded() (*bodyFields, error) {
	p.once.Do(func() {
		p.decodes.Add(1)
		// encoding/json appends messages to the slice it finds: sized by
		// the roles in sight, it need not grow (a guess, not a bound).
		if n := bytes.Count(p.body, []byte(`"role"`)); n > 0 {
			p.fields.Messages = make([]rawMessage, 0, n)
		}
		if decodeFast(p.body, &p.fields) {
			p.whole = p.fields.repeated()
			return
		}
		p.fields = bodyFields{Messages: p.fields.Messages[:0]}
		p.err = json.Unmarshal(p.body, &p.fields)
		// Every field but messages takes any JSON value, so a type error
		// with a field named is messages' (the decode went on past it);
		// one with none is the body's own.
		var te *json.UnmarshalTypeError
		if errors.As(p.err, &te) && te.Field != "" {
			p.err, p.badMessages = nil, true
		}
		p.whole = p.err == nil && p.fields.repeated()
	})
	return &p.fields, p.err
}

// fromFields is a parser's request struct, filled field by field.
type fromFields interface {
	fromFields(f *bodyFields) error
}

// readsMessages is implemented by the request structs with a messages
// field.
type readsMessages interface{ readsMessages() }

func (*chatRequest) readsMessages()      {}
func (*anthropicRequest) readsMessages() {}

// decode fills v from the body's fields; as json.Unmarshal(body, v) would,
// but without decoding the body again.
func (p *parsedBody) decode(v fromFields) error {
	f, err := p.decoded()
	if err != nil {
		return err
	}
	if _, ok := v.(readsMessages); p.whole || ok && p.badMessages {
		p.decodes.Add(1)
		return json.Unmarshal(p.body, v)
	}
	return v.fromFields(f)
}

// llmBody is ParseLLMBody's answer for the body, computed once.
func (p *parsedBody) llmBody() (LLMBody, error) {
	p.llmOnce.Do(func() {
		var f llmFields
		if err := p.decode(&f); err != nil {
			// A body that is no object fails as it would have failed
			// to decode into llmFields.
			var te *json.UnmarshalTypeError
			if errors.As(err, &te) && te.Field == "" {
				named := *te
				named.Type = reflect.TypeFor[llmFields]()
				err = &named
			}
			p.llmErr = err
			return
		}
		p.llm = f.body()
	})
	return p.llm, p.llmErr
}

// fieldDecoder decodes the fields of one request struct, naming a field
// that fails as encoding/json would have named it in that struct.
type fieldDecoder struct {
	strct string // the struct's type name, as a type error names it
	err   error
}

// field decodes raw into dst, as decoding the whole body into the struct
// would have decoded that field; an absent field leaves dst alone. After a
// failure it does nothing: the first error stands.
func field[T any](d *fieldDecoder, name string, raw rawField, dst *T) {
	if d.err != nil || raw.raw == nil {
		return
	}
	switch p := any(dst).(type) {
	case *json.RawMessage: // what its UnmarshalJSON would keep, without the copy
		*p = raw.raw
		return
	case *string:
		if v, ok := plainString(raw.raw); ok {
			*p = v
			return
		}
	}
	err := json.Unmarshal(raw.raw, dst)
	var te *json.UnmarshalTypeError
	if errors.As(err, &te) {
		if te.Field == "" {
			te.Struct, te.Field = d.strct, name
		} else {
			te.Field = name + "." + te.Field
		}
	}
	d.err = err
}

// plainString returns the value of a JSON string that has no escapes, the
// common case, without encoding/json's reflection. A string with escapes or
// invalid UTF-8 (which encoding/json replaces) gives ok == false.
func plainString(raw []byte) (string, bool) {
	s, ok := plainStringView(raw)
	return strings.Clone(s), ok
}

// plainStringView is plainString without the copy: the string shares the
// body's bytes, so it is only for text that is counted and dropped while
// the body lives (a body is never changed once read).
func plainStringView(raw []byte) (string, bool) {
	if len(raw) < 2 || raw[0] != '"' || raw[len(raw)-1] != '"' {
		return "", false
	}
	in := raw[1 : len(raw)-1]
	if bytes.IndexByte(in, '\\') >= 0 || !utf8.Valid(in) {
		return "", false
	}
	if len(in) == 0 {
		return "", true
	}
	return unsafe.String(&in[0], len(in)), true // raw came from a valid document: no bare quote or control byte
}

func (l *llmFields) fromFields(f *bodyFields) error {
	d := fieldDecoder{strct: "llmFields"}
	field(&d, "model", f.Model, &l.Model)
	field(&d, "max_tokens", f.MaxTokens, &l.MaxTokens)
	field(&d, "max_completion_tokens", f.MaxCompletionTokens, &l.MaxCompletionTokens)
	field(&d, "max_output_tokens", f.MaxOutputTokens, &l.MaxOutputTokens)
	return d.err
}

func (b *chatRequest) fromFields(f *bodyFields) error {
	d := fieldDecoder{strct: "chatRequest"}
	field(&d, "model", f.Model, &b.Model)
	if f.Messages != nil {
		b.Messages = make([]chatMessage, len(f.Messages))
	}
	md := fieldDecoder{strct: "chatMessage"}
	for i := range f.Messages {
		m, to := &f.Messages[i], &b.Messages[i]
		field(&md, "messages.role", m.Role, &to.Role)
		field(&md, "messages.content", m.Content, &to.Content)
		field(&md, "messages.name", m.Name, &to.Name)
		field(&md, "messages.refusal", m.Refusal, &to.Refusal)
		field(&md, "messages.tool_calls", m.ToolCalls, &to.ToolCalls)
		field(&md, "messages.function_call", m.FunctionCall, &to.FunctionCall)
		field(&md, "messages.audio", m.Audio, &to.Audio)
	}
	if d.err == nil {
		d.err = md.err
	}
	field(&d, "tools", f.Tools, &b.Tools)
	field(&d, "functions", f.Functions, &b.Functions)
	field(&d, "response_format", f.ResponseFormat, &b.ResponseFormat)
	field(&d, "max_completion_tokens", f.MaxCompletionTokens, &b.MaxCompletionTokens)
	field(&d, "max_tokens", f.MaxTokens, &b.MaxTokens)
	field(&d, "n", f.N, &b.N)
	field(&d, "stream", f.Stream, &b.Stream)
	field(&d, "stream_options", f.StreamOptions, &b.StreamOptions)
	field(&d, "service_tier", f.ServiceTier, &b.ServiceTier)
	return d.err
}

func (b *responsesRequest) fromFields(f *bodyFields) error {
	d := fieldDecoder{strct: "responsesRequest"}
	field(&d, "model", f.Model, &b.Model)
	field(&d, "input", f.Input, &b.Input)
	field(&d, "instructions", f.Instructions, &b.Instructions)
	field(&d, "tools", f.Tools, &b.Tools)
	field(&d, "text", f.Text, &b.Text)
	field(&d, "max_output_tokens", f.MaxOutputTokens, &b.MaxOutputTokens)
	field(&d, "stream", f.Stream, &b.Stream)
	field(&d, "service_tier", f.ServiceTier, &b.ServiceTier)
	return d.err
}

func (b *embeddingsRequest) fromFields(f *bodyFields) error {
	d := fieldDecoder{strct: "embeddingsRequest"}
	field(&d, "model", f.Model, &b.Model)
	field(&d, "input", f.Input, &b.Input)
	return d.err
}

func (b *completionsRequest) fromFields(f *bodyFields) error {
	d := fieldDecoder{strct: "completionsRequest"}
	field(&d, "model", f.Model, &b.Model)
	field(&d, "prompt", f.Prompt, &b.Prompt)
	field(&d, "suffix", f.Suffix, &b.Suffix)
	field(&d, "max_tokens", f.MaxTokens, &b.MaxTokens)
	field(&d, "n", f.N, &b.N)
	field(&d, "best_of", f.BestOf, &b.BestOf)
	field(&d, "stream", f.Stream, &b.Stream)
	field(&d, "stream_options", f.StreamOptions, &b.StreamOptions)
	return d.err
}

func (b *anthropicRequest) fromFields(f *bodyFields) error {
	d := fieldDecoder{strct: "anthropicRequest"}
	field(&d, "model", f.Model, &b.Model)
	field(&d, "system", f.System, &b.System)
	if f.Messages != nil {
		b.Messages = make([]anthropicMessage, len(f.Messages))
	}
	md := fieldDecoder{strct: "anthropicMessage"}
	for i := range f.Messages {
		m, to := &f.Messages[i], &b.Messages[i]
		field(&md, "messages.role", m.Role, &to.Role)
		field(&md, "messages.content", m.Content, &to.Content)
	}
	if d.err == nil {
		d.err = md.err
	}
	field(&d, "tools", f.Tools, &b.Tools)
	field(&d, "max_tokens", f.MaxTokens, &b.MaxTokens)
	field(&d, "stream", f.Stream, &b.Stream)
	return d.err
}
