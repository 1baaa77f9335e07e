package costing

import (
	"bytes"
	"encoding/json"
	"fmt"
	"strings"
)

// Kinds of OpenAI request, from the path's last segments.
const (
	KindChat        = "chat"        // POST /v1/chat/completions
	KindResponses   = "responses"   // POST /v1/responses
	KindEmbeddings  = "embeddings"  // POST /v1/embeddings
	KindCompletions = "completions" // POST /v1/completions (legacy)
)

// OpenAIRequest is what an OpenAI request body commits the caller to.
type OpenAIRequest struct {
	Model string
	Kind  string // KindChat, KindResponses, KindEmbeddings or KindCompletions
	// InputTokens is the prompt's token count: exact for the text of chat
	// messages under OpenAI's published rule, approximate for tool
	// definitions and schemas (see ParseOpenAI). Images, audio and files are
	// not in it: they are counted below, for the policy to price.
	InputTokens int64
	// MaxOutputTokens is the output allowance the body asked for, times the
	// choices generated for it (N, and for completions the prompts); 0 when
	// the body set none, for the caller to apply the policy's default.
	MaxOutputTokens int64
	// N is the number of choices generated per prompt (n, or best_of when
	// larger); 1 when the body set none.
	N          int64
	Images     int64 // image parts (image_url, input_image)
	AudioParts int64 // audio parts (input_audio), and earlier audio replies referenced by id
	Files      int64 // file parts (file, input_file), e.g. PDFs
	Stream     bool
	// IncludeUsage reports whether a streamed reply ends with a usage chunk:
	// chat and completions only with stream_options.include_usage, the
	// Responses API always (its response.completed event carries usage).
	// False when the reply is not streamed (it then always carries usage).
	IncludeUsage bool
	// Flex says the body asks for OpenAI's flex processing tier
	// (service_tier "flex", chat and responses), priced at the model's flex
	// prices.
	Flex bool
}

// isFlex reports whether a service_tier value is "flex".
func isFlex(raw json.RawMessage) bool { return string(bytes.TrimSpace(raw)) == `"flex"` }

// Token overheads of the chat format, from OpenAI's cookbook ("How to count
// tokens with tiktoken"): each message is wrapped as
// <|start|>{role/name}\n{content}<|end|>\n, and the reply is primed with
// <|start|>assistant<|message|>.
const (
	tokensPerMessage = 3
	tokensPerName    = 1
	tokensPerReply   = 3
)

// ParseOpenAI reads an OpenAI request body sent to path (query string
// allowed; Azure's /openai/deployments/{name}/... paths work too, with the
// model left empty when the body names none) and counts its input tokens
// with the model's encoding.
//
// Chat: tokens = Σ over messages (3 + tokens(role) + tokens(content) [+ 1 +
// tokens(name)]) + 3, which OpenAI publishes and which matches the API's
// prompt_tokens for string contents. Content arrays count the sum of their
// text parts; a message's tool calls count their function name and JSON
// arguments as content.
//
// Approximations, all upward-leaning: tool and function definitions
// (tools, functions) and JSON schemas (response_format, text.format) count
// the tokens of their compact JSON. OpenAI renders them into the prompt in a
// private format that costs less: for the cookbook's weather tool example
// this gives 119 where the API reports 105 (gpt-4) and 101 (gpt-4o); see
// TestParseOpenAIToolsApproximation. The Responses API publishes
// no rule, so its messages and items count like chat messages, and
// instructions like one more message; earlier turns pulled in by
// previous_response_id or conversation are invisible here and left for
// settlement.
//
// A body that is not a JSON object, has a field of the wrong type or a
// negative allowance gives ErrMalformedBody; an unknown path gives
// ErrUnknownEndpoint.
func ParseOpenAI(path string, body []byte, tok *Tokenizer) (OpenAIRequest, error) {
	return parseOpenAI(path, newParsedBody(body), tok)
}

func parseOpenAI(path string, p *parsedBody, tok *Tokenizer) (OpenAIRequest, error) {
	kind, ok := openAIKind(path)
	if !ok {
		return OpenAIRequest{}, fmt.Errorf("%w: %.100q", ErrUnknownEndpoint, path)
	}
	if tok == nil {
		return OpenAIRequest{}, ErrNilTokenizer
	}
	if !isObject(p.body) {
		return OpenAIRequest{}, malformed("%s: not a JSON object", kind)
	}
	var (
		r   OpenAIRequest
		err error
	)
	switch kind {
	case KindChat:
		r, err = parseChat(p, tok)
	case KindResponses:
		r, err = parseResponses(p, tok)
	case KindEmbeddings:
		r, err = parseEmbeddings(p, tok)
	default:
		r, err = parseCompletions(p, tok)
	}
	if err != nil {
		return OpenAIRequest{}, fmt.Errorf("openai %s: %w", kind, err)
	}
	r.Kind = kind
	return r, nil
}

// OpenAIKind is the kind of an OpenAI call to path (KindChat, ...), or ""
// for a path that is none of them.
func OpenAIKind(path string) string {
	k, _ := openAIKind(path)
	return k
}

// openAIKind maps a request path to its kind by its last segments.
func openAIKind(path string) (string, bool) {
	if i := strings.IndexAny(path, "?#"); i >= 0 {
		path = path[:i]
	}
	path = strings.TrimRight(path, "/")
	switch {
	case strings.HasSuffix(path, "/chat/completions"):
		return KindChat, true
	case strings.HasSuffix(path, "/responses"):
		return KindResponses, true
	case strings.HasSuffix(path, "/embeddings"):
		return KindEmbeddings, true
	case strings.HasSuffix(path, "/completions"):
		return KindCompletions, true
	}
	return "", false
}

// tally counts the tokens and the non-text parts of one request.
type tally struct {
	tok                  *Tokenizer
	enc                  string
	tokens               int64
	images, audio, files int64
	compact              bytes.Buffer
}

func (t *tally) text(s string) { t.tokens += t.tok.Count(t.enc, s) }

// json counts the tokens of a raw JSON value in compact form (the
// approximation for tool definitions and schemas); null counts nothing.
func (t *tally) json(raw json.RawMessage) {
	if isNull(raw) {
		return
	}
	t.tokens += t.tok.countJSON(t.enc, raw, &t.compact)
}

// message adds one message's wrapping: 3 tokens plus its role, plus 1 and
// its name when it has one. Its content is counted by the caller.
func (t *tally) message(role, name string) {
	t.tokens += tokensPerMessage
	t.text(role)
	if name != "" {
		t.tokens += tokensPerName
		t.text(name)
	}
}

// contentPart is one element of a content array, in Chat Completions or
// Responses form.
type contentPart struct {
	Type    string `json:"type"`
	Text    string `json:"text"`
	Refusal string `json:"refusal"`
}

// content counts a content value: a string, an array of parts, or null.
func (t *tally) content(field string, raw json.RawMessage) error {
	if isNull(raw) {
		return nil
	}
	switch raw[0] {
	case '"':
		// Counted and dropped: a view of the body's bytes, not a copy.
		s, ok := plainStringView(raw)
		if !ok {
			if err := json.Unmarshal(raw, &s); err != nil {
				return malformed("%s: %v", field, err)
			}
		}
		t.text(s)
		return nil
	case '[':
		var parts []contentPart
		if err := json.Unmarshal(raw, &parts); err != nil {
			return malformed("%s: %v", field, err)
		}
		for _, p := range parts {
			t.part(p)
		}
		return nil
	}
	return malformed("%s: want a string or an array of parts", field)
}

func (t *tally) part(p contentPart) {
	switch p.Type {
	case "image_url", "input_image", "image":
		t.images++
	case "input_audio", "audio":
		t.audio++
	case "file", "input_file":
		t.files++
	case "refusal":
		t.text(p.Refusal)
	default: // text, input_text, output_text, and any future text-bearing part
		t.text(p.Text)
	}
}

// prompts counts an input or prompt value: a string, an array of strings,
// an array of token ids, or an array of arrays of token ids. It returns how
// many prompts the value holds.
func (t *tally) prompts(field string, raw json.RawMessage) (int64, error) {
	if isNull(raw) {
		return 0, nil
	}
	switch raw[0] {
	case '"':
		return 1, t.content(field, raw)
	case '[':
	default:
		return 0, malformed("%s: want a string or an array", field)
	}
	var items []json.RawMessage
	if err := json.Unmarshal(raw, &items); err != nil {
		return 0, malformed("%s: %v", field, err)
	}
	if len(items) > 0 && isNumber(items[0]) { // one prompt of token ids
		if err := tokenIDs(field, items); err != nil {
			return 0, err
		}
		t.tokens += int64(len(items))
		return 1, nil
	}
	for _, it := range items {
		switch {
		case len(it) > 0 && it[0] == '"':
			if err := t.content(field, it); err != nil {
				return 0, err
			}
		case len(it) > 0 && it[0] == '[':
			var ids []json.RawMessage
			if err := json.Unmarshal(it, &ids); err != nil {
				return 0, malformed("%s: %v", field, err)
			}
			if err := tokenIDs(field, ids); err != nil {
				return 0, err
			}
			t.tokens += int64(len(ids))
		default:
			return 0, malformed("%s: want strings or arrays of token ids", field)
		}
	}
	return int64(len(items)), nil
}

func isNumber(raw json.RawMessage) bool {
	return len(raw) > 0 && (raw[0] == '-' || (raw[0] >= '0' && raw[0] <= '9'))
}

func tokenIDs(field string, ids []json.RawMessage) error {
	for _, id := range ids {
		if !isNumber(id) {
			return malformed("%s: want token ids", field)
		}
	}
	return nil
}

// streamOptions is Chat Completions' and Completions' stream_options.
type streamOptions struct {
	IncludeUsage bool `json:"include_usage"`
}

type chatRequest struct {
	Model               string          `json:"model"`
	Messages            []chatMessage   `json:"messages"`
	Tools               json.RawMessage `json:"tools"`
	Functions           json.RawMessage `json:"functions"`
	ResponseFormat      *schemaFormat   `json:"response_format"`
	MaxCompletionTokens json.RawMessage `json:"max_completion_tokens"`
	MaxTokens           json.RawMessage `json:"max_tokens"`
	N                   json.RawMessage `json:"n"`
	Stream              bool            `json:"stream"`
	StreamOptions       *streamOptions  `json:"stream_options"`
	ServiceTier         json.RawMessage `json:"service_tier"`
}

type chatMessage struct {
	Role         string          `json:"role"`
	Content      json.RawMessage `json:"content"`
	Name         string          `json:"name"`
	Refusal      string          `json:"refusal"`
	ToolCalls    []toolCall      `json:"tool_calls"`
	FunctionCall *functionCall   `json:"function_call"` // legacy
	Audio        json.RawMessage `json:"audio"`         // {"id": ...} of an earlier audio reply
}

type toolCall struct {
	Function *functionCall `json:"function"`
	Custom   *struct {
		Name  string `json:"name"`
		Input string `json:"input"`
	} `json:"custom"`
}

type functionCall struct {
	Name      string `json:"name"`
	Arguments string `json:"arguments"`
}

// schemaFormat is response_format (chat) or text.format (responses); only a
// JSON schema adds to the prompt.
type schemaFormat struct {
	Type       string          `json:"type"`
	JSONSchema json.RawMessage `json:"json_schema"` // chat: {name, schema, strict}
	Schema     json.RawMessage `json:"schema"`      // responses: the schema itself
}

func (t *tally) schema(f *schemaFormat) {
	if f == nil || f.Type != "json_schema" {
		return
	}
	t.json(f.JSONSchema)
	t.json(f.Schema)
}

func parseChat(p *parsedBody, tok *Tokenizer) (OpenAIRequest, error) {
	var b chatRequest
	if err := p.decode(&b); err != nil {
		return OpenAIRequest{}, malformed("%v", err)
	}
	t := tally{tok: tok, enc: EncodingFor(b.Model)}
	for i, m := range b.Messages {
		t.message(m.Role, m.Name)
		if err := t.content(fmt.Sprintf("messages[%d].content", i), m.Content); err != nil {
			return OpenAIRequest{}, err
		}
		t.text(m.Refusal)
		for _, c := range m.ToolCalls {
			if c.Function != nil {
				t.text(c.Function.Name)
				t.text(c.Function.Arguments)
			}
			if c.Custom != nil {
				t.text(c.Custom.Name)
				t.text(c.Custom.Input)
			}
		}
		if m.FunctionCall != nil {
			t.text(m.FunctionCall.Name)
			t.text(m.FunctionCall.Arguments)
		}
		if !isNull(m.Audio) {
			t.audio++
		}
	}
	t.tokens += tokensPerReply
	t.json(b.Tools)
	t.json(b.Functions)
	t.schema(b.ResponseFormat)

	allowance, set, err := intParam("max_completion_tokens", b.MaxCompletionTokens)
	if err != nil {
		return OpenAIRequest{}, err
	}
	if !set {
		if allowance, _, err = intParam("max_tokens", b.MaxTokens); err != nil {
			return OpenAIRequest{}, err
		}
	}
	n, err := choices("n", b.N)
	if err != nil {
		return OpenAIRequest{}, err
	}
	return OpenAIRequest{
		Model:           b.Model,
		InputTokens:     t.tokens,
		MaxOutputTokens: satMul(allowance, n),
		N:               n,
		Images:          t.images,
		AudioParts:      t.audio,
		Files:           t.files,
		Stream:          b.Stream,
		IncludeUsage:    b.Stream && b.StreamOptions != nil && b.StreamOptions.IncludeUsage,
		Flex:            isFlex(b.ServiceTier),
	}, nil
}

// choices decodes n or best_of: 1 when absent, an error below 1.
func choices(name string, raw json.RawMessage) (int64, error) {
	n, set, err := intParam(name, raw)
	if err != nil {
		return 0, err
	}
	if !set {
		return 1, nil
	}
	if n < 1 {
		return 0, malformed("%s: below 1", name)
	}
	return n, nil
}

type responsesRequest struct {
	Model        string          `json:"model"`
	Input        json.RawMessage `json:"input"`
	Instructions json.RawMessage `json:"instructions"`
	Tools        json.RawMessage `json:"tools"`
	Text         *struct {
		Format *schemaFormat `json:"format"`
	} `json:"text"`
	MaxOutputTokens json.RawMessage `json:"max_output_tokens"`
	Stream          bool            `json:"stream"`
	ServiceTier     json.RawMessage `json:"service_tier"`
}

// responsesItem is one element of a Responses input array: a message (type
// "message" or none) or a tool call, tool output or reasoning item.
type responsesItem struct {
	Type      string          `json:"type"`
	Role      string          `json:"role"`
	Content   json.RawMessage `json:"content"`
	Name      string          `json:"name"`
	Arguments string          `json:"arguments"`
	Input     string          `json:"input"` // custom_tool_call
	Output    json.RawMessage `json:"output"`
	Summary   []struct {
		Text string `json:"text"`
	} `json:"summary"`
}

func parseResponses(p *parsedBody, tok *Tokenizer) (OpenAIRequest, error) {
	var b responsesRequest
	if err := p.decode(&b); err != nil {
		return OpenAIRequest{}, malformed("%v", err)
	}
	t := tally{tok: tok, enc: EncodingFor(b.Model)}
	if !isNull(b.Instructions) {
		t.message("developer", "")
		if err := t.content("instructions", b.Instructions); err != nil {
			return OpenAIRequest{}, err
		}
	}
	switch {
	case isNull(b.Input):
	case b.Input[0] == '"':
		t.message("user", "")
		if err := t.content("input", b.Input); err != nil {
			return OpenAIRequest{}, err
		}
	case b.Input[0] == '[':
		var items []responsesItem
		if err := json.Unmarshal(b.Input, &items); err != nil {
			return OpenAIRequest{}, malformed("input: %v", err)
		}
		for i, it := range items {
			if err := t.item(i, it); err != nil {
				return OpenAIRequest{}, err
			}
		}
	default:
		return OpenAIRequest{}, malformed("input: want a string or an array of items")
	}
	t.tokens += tokensPerReply
	t.json(b.Tools)
	if b.Text != nil {
		t.schema(b.Text.Format)
	}
	allowance, _, err := intParam("max_output_tokens", b.MaxOutputTokens)
	if err != nil {
		return OpenAIRequest{}, err
	}
	return OpenAIRequest{
		Model:           b.Model,
		InputTokens:     t.tokens,
		MaxOutputTokens: allowance,
		N:               1,
		Images:          t.images,
		AudioParts:      t.audio,
		Files:           t.files,
		Stream:          b.Stream,
		IncludeUsage:    b.Stream,
		Flex:            isFlex(b.ServiceTier),
	}, nil
}

func (t *tally) item(i int, it responsesItem) error {
	switch it.Type {
	case "", "message":
		t.message(it.Role, "")
		return t.content(fmt.Sprintf("input[%d].content", i), it.Content)
	case "function_call", "custom_tool_call":
		t.message("", "")
		t.text(it.Name)
		t.text(it.Arguments)
		t.text(it.Input)
	case "function_call_output", "custom_tool_call_output":
		t.message("", "")
		return t.content(fmt.Sprintf("input[%d].output", i), it.Output)
	case "reasoning":
		for _, s := range it.Summary {
			t.text(s.Text)
		}
	}
	// item_reference and hosted-tool items refer to stored state: settlement
	// sees their cost.
	return nil
}

type embeddingsRequest struct {
	Model string          `json:"model"`
	Input json.RawMessage `json:"input"`
}

func parseEmbeddings(p *parsedBody, tok *Tokenizer) (OpenAIRequest, error) {
	var b embeddingsRequest
	if err := p.decode(&b); err != nil {
		return OpenAIRequest{}, malformed("%v", err)
	}
	t := tally{tok: tok, enc: EncodingFor(b.Model)}
	if _, err := t.prompts("input", b.Input); err != nil {
		return OpenAIRequest{}, err
	}
	return OpenAIRequest{Model: b.Model, InputTokens: t.tokens, N: 1}, nil
}

type completionsRequest struct {
	Model         string          `json:"model"`
	Prompt        json.RawMessage `json:"prompt"`
	Suffix        string          `json:"suffix"`
	MaxTokens     json.RawMessage `json:"max_tokens"`
	N             json.RawMessage `json:"n"`
	BestOf        json.RawMessage `json:"best_of"`
	Stream        bool            `json:"stream"`
	StreamOptions *streamOptions  `json:"stream_options"`
}

// parseCompletions reads a legacy completions body. Each prompt of a batch
// gets max(n, best_of) completions of up to max_tokens each, all billed.
// The API's own default of 16 max_tokens is left to the policy, like every
// other absent allowance.
func parseCompletions(p *parsedBody, tok *Tokenizer) (OpenAIRequest, error) {
	var b completionsRequest
	if err := p.decode(&b); err != nil {
		return OpenAIRequest{}, malformed("%v", err)
	}
	t := tally{tok: tok, enc: EncodingFor(b.Model)}
	prompts, err := t.prompts("prompt", b.Prompt)
	if err != nil {
		return OpenAIRequest{}, err
	}
	t.text(b.Suffix)
	allowance, _, err := intParam("max_tokens", b.MaxTokens)
	if err != nil {
		return OpenAIRequest{}, err
	}
	n, err := choices("n", b.N)
	if err != nil {
		return OpenAIRequest{}, err
	}
	bestOf, err := choices("best_of", b.BestOf)
	if err != nil {
		return OpenAIRequest{}, err
	}
	n = max(n, bestOf)
	return OpenAIRequest{
		Model:           b.Model,
		InputTokens:     t.tokens,
		MaxOutputTokens: satMul(satMul(allowance, n), max(prompts, 1)),
		N:               n,
		Stream:          b.Stream,
		IncludeUsage:    b.Stream && b.StreamOptions != nil && b.StreamOptions.IncludeUsage,
	}, nil
}
