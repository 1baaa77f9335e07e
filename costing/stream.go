package costing

import (
	"bytes"
	"encoding/json"

	"github.com/tollgate/tollgate/policy"
)

// Limits of ResponseReader: what it keeps of a response, never more.
const (
	// MaxJSONResponse is the largest JSON response parsed whole; beyond it
	// only its head (for the model) and tail (where usage is) are kept.
	MaxJSONResponse = 1 << 20
	jsonHead        = 4 << 10
	jsonTail        = 64 << 10
	// MaxEvent is the largest server-sent event read; a stream with a
	// larger one is passed through unread (and settled at its estimate).
	MaxEvent = 1 << 20
)

// ResponseReader reads an upstream response as it streams past, chunk by
// chunk, for the call's usage: a JSON body (whole, or head and tail when
// large) or a server-sent event stream (OpenAI chat and Responses events,
// Anthropic's message_start and message_delta). It holds at most a few
// hundred KB whatever the response's size. With Strip set it also removes
// the usage-only chunk of an OpenAI chat stream (the one Tollgate asked for
// with stream_options.include_usage when the worker had not), holding back
// the bytes of an event until it is complete. Not safe for concurrent use.
type ResponseReader struct {
	provider policy.Provider
	sse      bool
	strip    bool

	// JSON
	head   []byte // the whole body while small; its first jsonHead bytes after
	tail   []byte // the last jsonTail bytes once the body outgrew MaxJSONResponse
	large  bool
	broken bool // an event outgrew MaxEvent: the rest is passed through unread

	// SSE
	line     []byte // the current line, not yet ended
	lastCR   bool   // the previous chunk ended in \r: a \n next ends nothing
	event    []byte // the event type of the event being read
	data     []byte // its data lines, joined by \n
	hasData  bool
	held     []byte // strip: raw bytes of the event being held
	dropping bool   // strip: the event being held is the usage-only chunk
	// strip: holding says the event being read is held (it follows a
	// chunk that finished the choice, so it can only be the usage chunk or
	// [DONE]); every other byte is forwarded at once. inEvent says a byte
	// of the current event was seen; evOut is where the current event
	// starts in this Write's output (-1: it began in an earlier chunk).
	holding bool
	inEvent bool
	evOut   int

	// Compressed (gzip, deflate): the raw bytes, inflated and read at the
	// end; nothing is stripped from a compressed stream.
	enc      Encoding
	raw      []byte
	rawLost  bool // the body outgrew MaxEncodedResponse
	inflated bool

	usage    Usage
	found    bool // a usage object was read
	complete bool // the stream said it ended (or the JSON body parsed whole)
}

// NewResponseReader returns a reader for a response from provider. sse says
// the response is an event stream (Content-Type text/event-stream).
func NewResponseReader(provider policy.Provider, sse, strip bool) *ResponseReader {
	return &ResponseReader{provider: provider, sse: sse, strip: strip && sse}
}

// SetEncoding tells the reader the response's Content-Encoding (see
// ParseEncoding); it must come before the first Write. A compressed
// response is forwarded untouched, even with Strip set: its bytes cannot
// be cut without re-encoding them.
func (r *ResponseReader) SetEncoding(e Encoding) {
	r.enc = e
	if e != EncodingIdentity {
		r.strip = false
	}
}

// Stripping reports whether Write may return other bytes than its chunk.
func (r *ResponseReader) Stripping() bool { return r.strip }

// Write reads the next chunk of the response. It returns the bytes to
// forward in its place: chunk itself, except with Strip set.
func (r *ResponseReader) Write(chunk []byte) []byte {
	if r.enc != EncodingIdentity {
		if r.enc != EncodingOther && !r.rawLost {
			if len(r.raw)+len(chunk) > MaxEncodedResponse {
				r.raw, r.rawLost = nil, true
			} else {
				r.raw = append(r.raw, chunk...)
			}
		}
		return chunk
	}
	if !r.sse {
		r.writeJSON(chunk)
		return chunk
	}
	if r.broken {
		return chunk
	}
	if !r.strip {
		r.scan(chunk, nil)
		return chunk
	}
	var out []byte
	r.evOut = -1
	if !r.inEvent {
		r.evOut = 0
	}
	r.scan(chunk, &out)
	return out
}

// Flush returns what Strip held back (at the end of the stream).
func (r *ResponseReader) Flush() []byte {
	out := r.held
	r.held = nil
	if r.dropping || !r.holding {
		return nil
	}
	return out
}

// Usage reports what the response said the call consumed. found is false
// when it named no usage; complete is false when the response ended early
// (a cut stream, a body too large or unreadable), when the usage, if any,
// may be partial.
func (r *ResponseReader) Usage() (u Usage, found, complete bool) {
	if r.enc != EncodingIdentity {
		return r.inflatedUsage()
	}
	if !r.sse && !r.complete {
		r.finishJSON()
	}
	return r.usage, r.found, r.complete
}

func (r *ResponseReader) writeJSON(chunk []byte) {
	if !r.large && len(r.head)+len(chunk) <= MaxJSONResponse {
		r.head = append(r.head, chunk...)
		return
	}
	if !r.large {
		r.large = true
		r.tail = append(r.tail, r.head...)
		r.head = r.head[:min(len(r.head), jsonHead)]
	}
	r.tail = append(r.tail, chunk...)
	if len(r.tail) > 2*jsonTail {
		r.tail = append(r.tail[:0], r.tail[len(r.tail)-jsonTail:]...)
	}
}

func (r *ResponseReader) finishJSON() {
	if !r.large && len(bytes.TrimSpace(r.head)) == 0 {
		r.complete = true // an answer with no body (SendGrid's 202) says nothing of usage, and is whole
		return
	}
	if !r.large {
		u, found, err := ParseUsage(r.provider, r.head)
		if err == nil {
			r.usage, r.found, r.complete = u, found, true
		}
		return
	}
	// Too large to parse whole (an embeddings batch, say): the model is near
	// the start and the usage object, top level, near the end.
	if len(r.tail) > jsonTail {
		r.tail = r.tail[len(r.tail)-jsonTail:]
	}
	var m struct {
		Model string `json:"model"`
	}
	if i := bytes.Index(r.head, []byte(`"model"`)); i >= 0 {
		m.Model = stringAfterKey(r.head[i+len(`"model"`):])
	}
	i := bytes.LastIndex(r.tail, []byte(`"usage"`))
	if i < 0 {
		return
	}
	rest := bytes.TrimLeft(r.tail[i+len(`"usage"`):], " \t\r\n")
	if len(rest) == 0 || rest[0] != ':' {
		return
	}
	var doc usageDoc
	if err := json.NewDecoder(bytes.NewReader(rest[1:])).Decode(&doc); err != nil {
		return
	}
	r.usage.Model = m.Model
	doc.apply(r.provider, &r.usage)
	r.found, r.complete = true, true
}

// stringAfterKey decodes the JSON string that follows `: ` in b, or "".
func stringAfterKey(b []byte) string {
	b = bytes.TrimLeft(b, " \t\r\n")
	if len(b) == 0 || b[0] != ':' {
		return ""
	}
	var s string
	if json.NewDecoder(bytes.NewReader(b[1:])).Decode(&s) != nil {
		return ""
	}
	return s
}

// scan splits chunk into lines (\n, \r\n or \r end one) and dispatches each
// event at its blank line. With out set, raw bytes are held per event and
// appended to *out when the event is complete and not dropped.
func (r *ResponseReader) scan(chunk []byte, out *[]byte) {
	for len(chunk) > 0 {
		if r.lastCR && chunk[0] == '\n' { // the \n of a \r\n split across chunks
			r.lastCR = false
			r.hold(chunk[:1], out)
			chunk = chunk[1:]
			continue
		}
		r.lastCR = false
		i := bytes.IndexAny(chunk, "\r\n")
		if i < 0 {
			r.hold(chunk, out)
			r.line = append(r.line, chunk...)
			if len(r.line) > MaxEvent {
				r.breakOff(out)
			}
			return
		}
		end := i + 1
		if chunk[i] == '\r' {
			if end < len(chunk) {
				if chunk[end] == '\n' {
					end++
				}
			} else {
				r.lastCR = true
			}
		}
		r.hold(chunk[:end], out)
		r.line = append(r.line, chunk[:i]...)
		chunk = chunk[end:]
		r.endLine(out)
		if r.broken {
			if out != nil {
				*out = append(*out, chunk...)
			}
			return
		}
	}
}

// hold passes b on: held while the event may be the usage chunk, else
// forwarded at once, so that a lost ext_proc stream (Envoy then passes the
// rest of the response straight on) never loses bytes the worker needs.
func (r *ResponseReader) hold(b []byte, out *[]byte) {
	if out == nil {
		return
	}
	r.inEvent = true
	if r.holding {
		r.held = append(r.held, b...)
	} else {
		*out = append(*out, b...)
	}
}

// breakOff gives up on an event that outgrew MaxEvent: what was held is
// forwarded and the rest of the stream passes through unread.
func (r *ResponseReader) breakOff(out *[]byte) {
	r.broken = true
	if out != nil {
		*out = append(*out, r.held...)
	}
	r.held, r.line, r.data, r.event = nil, nil, nil, nil
}

func (r *ResponseReader) endLine(out *[]byte) {
	line := r.line
	r.line = r.line[:0]
	if len(line) == 0 { // blank line: dispatch
		finished := false
		if r.hasData {
			r.dispatch()
			finished = r.strip && finishesChoice(r.data)
		}
		if out != nil {
			switch {
			case r.holding:
				if !r.dropping {
					*out = append(*out, dropNullUsage(r.held)...)
				}
				r.held = r.held[:0]
			case r.evOut >= 0 && r.evOut < len(*out):
				// The whole event came in this chunk and is still in hand:
				// it loses the "usage":null the worker did not ask for. An
				// event split across chunks went on as it came.
				ev := (*out)[r.evOut:]
				if nv := dropNullUsage(ev); len(nv) != len(ev) {
					*out = append((*out)[:r.evOut], nv...)
				}
			}
			r.holding, r.inEvent, r.evOut = finished, false, len(*out)
		}
		r.event, r.data, r.hasData, r.dropping = r.event[:0], r.data[:0], false, false
		return
	}
	field, value := line, []byte(nil)
	if i := bytes.IndexByte(line, ':'); i >= 0 {
		field, value = line[:i], line[i+1:]
		if len(value) > 0 && value[0] == ' ' {
			value = value[1:]
		}
	}
	switch string(field) {
	case "event":
		r.event = append(r.event[:0], value...)
	case "data":
		if r.hasData {
			r.data = append(r.data, '\n')
		}
		r.data = append(r.data, value...)
		r.hasData = true
		if len(r.data) > MaxEvent {
			r.breakOff(out)
			return
		}
		if r.strip && r.holding && r.isUsageOnlyChunk() {
			r.dropping = true
		}
	}
}

// isUsageOnlyChunk reports whether the data read so far is OpenAI's final
// usage chunk: empty choices, and a usage object.
func (r *ResponseReader) isUsageOnlyChunk() bool {
	if !usageNotNull(r.data) {
		return false
	}
	var c struct {
		Choices []json.RawMessage `json:"choices"`
		Usage   *json.RawMessage  `json:"usage"`
	}
	return json.Unmarshal(r.data, &c) == nil && c.Usage != nil && len(c.Choices) == 0
}

// usageNotNull is a cheap test that data holds "usage" with a value other
// than null, so that most chunks are never decoded.
func usageNotNull(data []byte) bool {
	i := bytes.Index(data, []byte(`"usage"`))
	if i < 0 {
		return false
	}
	rest := bytes.TrimLeft(data[i+len(`"usage"`):], " \t\r\n")
	if len(rest) == 0 || rest[0] != ':' {
		return false
	}
	rest = bytes.TrimLeft(rest[1:], " \t\r\n")
	return len(rest) > 0 && rest[0] == '{'
}

// dispatch reads one complete event.
func (r *ResponseReader) dispatch() {
	data := r.data
	if r.provider == policy.ProviderOpenAI && bytes.Equal(bytes.TrimSpace(data), []byte("[DONE]")) {
		r.complete = r.complete || r.found
		return
	}
	switch r.provider {
	case policy.ProviderOpenAI:
		r.openAIEvent(data)
	case policy.ProviderAnthropic:
		r.anthropicEvent(data)
	}
}

func (r *ResponseReader) openAIEvent(data []byte) {
	if !bytes.Contains(data, []byte(`"usage"`)) && !bytes.Contains(data, []byte(`"model"`)) {
		return
	}
	var ev struct {
		Type     string    `json:"type"`
		Model    string    `json:"model"`
		Usage    *usageDoc `json:"usage"`
		Response *struct {
			Model string    `json:"model"`
			Usage *usageDoc `json:"usage"`
		} `json:"response"`
	}
	if json.Unmarshal(data, &ev) != nil {
		return
	}
	if ev.Model != "" && r.usage.Model == "" {
		r.usage.Model = ev.Model
	}
	switch {
	case ev.Usage != nil: // chat and completions: the usage chunk, sent last
		ev.Usage.apply(policy.ProviderOpenAI, &r.usage)
		r.found, r.complete = true, true
	case ev.Response != nil: // Responses API: response.created ... response.completed
		if ev.Response.Model != "" {
			r.usage.Model = ev.Response.Model
		}
		if ev.Response.Usage != nil {
			ev.Response.Usage.apply(policy.ProviderOpenAI, &r.usage)
			r.found = true
		}
		switch ev.Type {
		case "response.completed", "response.incomplete", "response.failed":
			r.complete = r.found
		}
	}
}

func (r *ResponseReader) anthropicEvent(data []byte) {
	var ev struct {
		Type    string `json:"type"`
		Message *struct {
			Model string    `json:"model"`
			Usage *usageDoc `json:"usage"`
		} `json:"message"`
		Usage *usageDoc `json:"usage"`
	}
	if json.Unmarshal(data, &ev) != nil {
		return
	}
	switch ev.Type {
	case "message_start":
		if ev.Message != nil {
			r.usage.Model = ev.Message.Model
			if ev.Message.Usage != nil {
				ev.Message.Usage.apply(policy.ProviderAnthropic, &r.usage)
				r.found = true
			}
		}
	case "message_delta": // cumulative
		if ev.Usage != nil {
			ev.Usage.apply(policy.ProviderAnthropic, &r.usage)
			r.found = true
		}
	case "message_stop":
		r.complete = r.found
	}
}

// inflatedUsage decodes a compressed response once and reads it as an
// identity one would have been read.
func (r *ResponseReader) inflatedUsage() (u Usage, found, complete bool) {
	if !r.inflated {
		r.inflated = true
		if r.enc == EncodingOther || r.rawLost {
			return r.usage, r.found, r.complete
		}
		body, whole := inflate(r.enc, r.raw)
		r.raw = nil
		inner := NewResponseReader(r.provider, r.sse, false)
		inner.Write(body)
		r.usage, r.found, r.complete = inner.Usage()
		r.complete = r.complete && whole
	}
	return r.usage, r.found, r.complete
}

// dropNullUsage removes a top-level "usage":null member from the JSON
// object of an event (one data line), with one comma next to it, and
// leaves every other byte as it was. Once a stream asks for its usage,
// OpenAI adds "usage":null to every chunk; a worker that did not ask
// should not see it. An event it cannot read is returned unchanged.
func dropNullUsage(ev []byte) []byte {
	i := bytes.IndexByte(ev, '{')
	if i < 0 || (string(ev[:i]) != "data:" && string(ev[:i]) != "data: ") {
		return ev
	}
	if j := bytes.IndexAny(ev[i:], "\r\n"); j >= 0 && len(bytes.Trim(ev[i+j:], "\r\n")) > 0 {
		return ev // more than one line
	}
	start, end := -1, -1
	depth, inStr, esc, keyNext := 0, false, false, false
	for j := i; j < len(ev) && start < 0; j++ {
		c := ev[j]
		if inStr {
			switch {
			case esc:
				esc = false
			case c == '\\':
				esc = true
			case c == '"':
				inStr = false
			}
			continue
		}
		switch c {
		case '"':
			if depth == 1 && keyNext && bytes.HasPrefix(ev[j:], []byte(`"usage"`)) {
				k := skipSpace(ev, j+len(`"usage"`))
				if k < len(ev) && ev[k] == ':' {
					k = skipSpace(ev, k+1)
					if bytes.HasPrefix(ev[k:], []byte("null")) {
						start, end = j, k+len("null")
						break
					}
				}
			}
			inStr, keyNext = true, false
		case '{', '[':
			depth++
			keyNext = depth == 1 && c == '{'
		case '}', ']':
			depth--
			if depth <= 0 {
				return ev
			}
		case ',':
			keyNext = depth == 1
		}
	}
	if start < 0 {
		return ev
	}
	if k := skipSpace(ev, end); k < len(ev) && ev[k] != ',' && ev[k] != '}' {
		return ev // "nullx": not a null
	}
	// One comma goes with the member: the one before it, else the one after.
	p := start - 1
	for p > i && isSpace(ev[p]) {
		p--
	}
	out := make([]byte, 0, len(ev))
	if ev[p] == ',' {
		out = append(append(out, ev[:p]...), ev[end:]...)
		return out
	}
	if k := skipSpace(ev, end); k < len(ev) && ev[k] == ',' {
		end = k + 1
	}
	return append(append(out, ev[:start]...), ev[end:]...)
}

func isSpace(c byte) bool { return c == ' ' || c == '\t' || c == '\r' || c == '\n' }

func skipSpace(b []byte, i int) int {
	for i < len(b) && isSpace(b[i]) {
		i++
	}
	return i
}

// finishesChoice is a cheap test that a chunk finishes a choice (a
// finish_reason other than null): OpenAI sends the usage chunk right after
// the last such chunk, so the next event is the only one Tollgate holds.
func finishesChoice(data []byte) bool {
	i := bytes.Index(data, []byte(`"finish_reason"`))
	if i < 0 {
		return false
	}
	rest := bytes.TrimLeft(data[i+len(`"finish_reason"`):], " \t")
	if len(rest) == 0 || rest[0] != ':' {
		return false
	}
	rest = bytes.TrimLeft(rest[1:], " \t")
	return len(rest) > 0 && rest[0] == '"'
}
