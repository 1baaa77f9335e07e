package costing_test

import (
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/tollgate/tollgate/costing"
)

func TestParseAnthropicRecorded(t *testing.T) {
	tok := tokenizer(t)
	recorded := bodies(t, "anthropic")
	tests := map[string]costing.AnthropicRequest{
		"messages-simple.json":        {Model: "claude-sonnet-4-5", MaxOutputTokens: 1024},
		"messages-system-blocks.json": {Model: "claude-3-5-haiku-20241022", MaxOutputTokens: 2048, Stream: true},
		"messages-image.json":         {Model: "claude-opus-4-1", MaxOutputTokens: 4096, Images: 2, Documents: 1},
		"messages-tools.json":         {Model: "claude-sonnet-4-5", MaxOutputTokens: 1024, Images: 1},
		"messages-thinking.json":      {Model: "claude-sonnet-4-5", MaxOutputTokens: 16000, Stream: true},
	}
	require.Len(t, tests, len(recorded), "every recorded Anthropic body needs a case")
	for file, want := range tests {
		t.Run(file, func(t *testing.T) {
			got, err := costing.ParseAnthropic(recorded[file], tok)
			require.NoError(t, err)
			assert.Positive(t, got.InputTokens)
			want.InputTokens = got.InputTokens
			assert.Equal(t, want, got)
		})
	}
}

func TestParseAnthropic(t *testing.T) {
	tok := tokenizer(t)
	// "hi" is one cl100k_base token; so are "x" and "{}".
	tests := map[string]struct {
		body string
		want costing.AnthropicRequest
	}{
		"string content": {
			`{"model":"claude-sonnet-4-5","max_tokens":100,"messages":[{"role":"user","content":"hi"}]}`,
			costing.AnthropicRequest{Model: "claude-sonnet-4-5", InputTokens: 3 + 1, MaxOutputTokens: 100},
		},
		"system string and block array": {
			`{"system":"hi","messages":[{"role":"user","content":[{"type":"text","text":"hi"},{"type":"text","text":"hi"}]}]}`,
			costing.AnthropicRequest{InputTokens: 1 + 3 + 2},
		},
		"system blocks": {
			`{"system":[{"type":"text","text":"hi","cache_control":{"type":"ephemeral"}}],"messages":[]}`,
			costing.AnthropicRequest{InputTokens: 1},
		},
		"tool_use counts name and JSON input": {
			`{"messages":[{"role":"assistant","content":[{"type":"tool_use","id":"t","name":"x","input":{}}]}]}`,
			costing.AnthropicRequest{InputTokens: 3 + 1 + 1},
		},
		"tool_result string and blocks": {
			`{"messages":[{"role":"user","content":[{"type":"tool_result","tool_use_id":"t","content":"hi"},{"type":"tool_result","tool_use_id":"u","content":[{"type":"text","text":"hi"},{"type":"image","source":{}}]}]}]}`,
			costing.AnthropicRequest{InputTokens: 3 + 2, Images: 1},
		},
		"thinking counted, redacted not": {
			`{"messages":[{"role":"assistant","content":[{"type":"thinking","thinking":"hi","signature":"s"},{"type":"redacted_thinking","data":"abc"}]}]}`,
			costing.AnthropicRequest{InputTokens: 3 + 1},
		},
		"images and documents": {
			`{"messages":[{"role":"user","content":[{"type":"image","source":{}},{"type":"image","source":{}},{"type":"document","source":{}}]}]}`,
			costing.AnthropicRequest{InputTokens: 3, Images: 2, Documents: 1},
		},
		"no max_tokens": {
			`{"model":"claude-3-haiku-20240307","messages":[]}`,
			costing.AnthropicRequest{Model: "claude-3-haiku-20240307"},
		},
	}
	for name, tc := range tests {
		t.Run(name, func(t *testing.T) {
			got, err := costing.ParseAnthropic([]byte(tc.body), tok)
			require.NoError(t, err)
			assert.Equal(t, tc.want, got)
		})
	}
}

func TestParseAnthropicErrors(t *testing.T) {
	tok := tokenizer(t)
	tests := map[string]string{
		"empty":                  ``,
		"null":                   `null`,
		"array":                  `[]`,
		"truncated":              `{"messages":[`,
		"messages object":        `{"messages":{}}`,
		"content number":         `{"messages":[{"role":"user","content":1}]}`,
		"system number":          `{"system":1,"messages":[]}`,
		"block not object":       `{"messages":[{"role":"user","content":["hi"]}]}`,
		"tool_result number":     `{"messages":[{"role":"user","content":[{"type":"tool_result","content":1}]}]}`,
		"max_tokens negative":    `{"max_tokens":-5,"messages":[]}`,
		"max_tokens string":      `{"max_tokens":"5","messages":[]}`,
		"tool_result too nested": `{"messages":[{"role":"user","content":[{"type":"tool_result","content":[{"type":"tool_result","content":[{"type":"tool_result","content":[{"type":"tool_result","content":[]}]}]}]}]}]}`,
	}
	for name, body := range tests {
		t.Run(name, func(t *testing.T) {
			_, err := costing.ParseAnthropic([]byte(body), tok)
			require.ErrorIs(t, err, costing.ErrMalformedBody)
		})
	}
	t.Run("nil tokenizer", func(t *testing.T) {
		_, err := costing.ParseAnthropic([]byte(`{}`), nil)
		require.ErrorIs(t, err, costing.ErrNilTokenizer)
	})
}
