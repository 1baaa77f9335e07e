package costing

import (
	"encoding/json"
	"fmt"
)

// AnthropicRequest is what an Anthropic Messages API body commits the
// caller to.
type AnthropicRequest struct {
	Model string
	// InputTokens is an approximation: see ParseAnthropic.
	InputTokens int64
	// MaxOutputTokens is max_tokens (which includes any thinking budget);
	// 0 when absent, for the caller to apply the policy's default.
	MaxOutputTokens int64
	Images          int64 // image blocks, at any depth (tool results too)
	Documents       int64 // document blocks (PDFs, text files)
	Stream          bool
}

// anthropicPerMessage is the per-message overhead the approximation adds.
const anthropicPerMessage = 3

// maxBlockDepth bounds tool_result nesting (the API allows one level).
const maxBlockDepth = 4

// ParseAnthropic reads an Anthropic Messages API body (POST /v1/messages).
//
// InputTokens is an APPROXIMATION: Anthropic's tokenizer is not public, so
// the text of system and of every message (text blocks, thinking, tool_use
// name and JSON input, tool_result content), and the compact JSON of the
// tool definitions, are counted with cl100k_base, plus 3 tokens per
// message. Claude's tokenizers generally cut the same text into more tokens
// than cl100k_base, and the API adds a hidden system prompt when tools are
// used, so expect this to run low; the exact figure comes from the
// response's usage (or the count_tokens endpoint, which costs a round trip)
// and settles the difference. Images and documents are counted, not
// tokenized, for the policy to price.
func ParseAnthropic(body []byte, tok *Tokenizer) (AnthropicRequest, error) {
	return parseAnthropic(newParsedBody(body), tok)
}

type anthropicRequest struct {
	Model     string             `json:"model"`
	System    json.RawMessage    `json:"system"`
	Messages  []anthropicMessage `json:"messages"`
	Tools     json.RawMessage    `json:"tools"`
	MaxTokens json.RawMessage    `json:"max_tokens"`
	Stream    bool               `json:"stream"`
}

type anthropicMessage struct {
	Role    string          `json:"role"`
	Content json.RawMessage `json:"content"`
}

func parseAnthropic(p *parsedBody, tok *Tokenizer) (AnthropicRequest, error) {
	if tok == nil {
		return AnthropicRequest{}, ErrNilTokenizer
	}
	if !isObject(p.body) {
		return AnthropicRequest{}, malformed("anthropic: not a JSON object")
	}
	var b anthropicRequest
	if err := p.decode(&b); err != nil {
		return AnthropicRequest{}, fmt.Errorf("anthropic: %w", malformed("%v", err))
	}
	t := tally{tok: tok, enc: EncodingCL100K}
	if err := t.blocks("system", b.System, 0); err != nil {
		return AnthropicRequest{}, fmt.Errorf("anthropic: %w", err)
	}
	for i, m := range b.Messages {
		t.tokens += anthropicPerMessage
		if err := t.blocks(fmt.Sprintf("messages[%d].content", i), m.Content, 0); err != nil {
			return AnthropicRequest{}, fmt.Errorf("anthropic: %w", err)
		}
	}
	t.json(b.Tools)
	maxTokens, _, err := intParam("max_tokens", b.MaxTokens)
	if err != nil {
		return AnthropicRequest{}, fmt.Errorf("anthropic: %w", err)
	}
	return AnthropicRequest{
		Model:           b.Model,
		InputTokens:     t.tokens,
		MaxOutputTokens: maxTokens,
		Images:          t.images,
		Documents:       t.files,
		Stream:          b.Stream,
	}, nil
}

// anthropicBlock is one content block.
type anthropicBlock struct {
	Type     string          `json:"type"`
	Text     string          `json:"text"`
	Thinking string          `json:"thinking"`
	Name     string          `json:"name"`
	Input    json.RawMessage `json:"input"`   // tool_use
	Content  json.RawMessage `json:"content"` // tool_result
}

// blocks counts a content value: a string, an array of blocks, or null.
func (t *tally) blocks(field string, raw json.RawMessage, depth int) error {
	if isNull(raw) {
		return nil
	}
	switch raw[0] {
	case '"':
		return t.content(field, raw)
	case '[':
	default:
		return malformed("%s: want a string or an array of blocks", field)
	}
	if depth >= maxBlockDepth {
		return malformed("%s: blocks nested too deep", field)
	}
	var bs []anthropicBlock
	if err := json.Unmarshal(raw, &bs); err != nil {
		return malformed("%s: %v", field, err)
	}
	for i, b := range bs {
		switch b.Type {
		case "image":
			t.images++
		case "document":
			t.files++
		case "tool_use", "server_tool_use":
			t.text(b.Name)
			t.json(b.Input)
		case "tool_result":
			if err := t.blocks(fmt.Sprintf("%s[%d].content", field, i), b.Content, depth+1); err != nil {
				return err
			}
		case "thinking":
			t.text(b.Thinking)
		case "redacted_thinking": // encrypted; its cost shows in usage
		default: // text, and any future text-bearing block
			t.text(b.Text)
		}
	}
	return nil
}
