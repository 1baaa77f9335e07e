package optimize_test

import (
	"strings"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/tollgate/tollgate/costing/optimize"
)

// words is a stand-in token counter: one token per word.
func words(text string) int64 { return int64(len(strings.Fields(text))) }

func TestPromptCache(t *testing.T) {
	mark := []optimize.Edit{{Strategy: optimize.PromptCache}}
	marked := []optimize.Applied{{Edit: mark[0]}}
	const cc = `"cache_control":{"type":"ephemeral"}`
	counted := messages
	counted.CountTokens = words
	atLeast := func(n int64) []optimize.Edit {
		return []optimize.Edit{{Strategy: optimize.PromptCache, MinPrefixTokens: n}}
	}
	// Tools (compact JSON, 1 "word") and a system of 5 words: 6 tokens.
	long := `{"model":"claude-sonnet-4-5","tools":[{"name":"a","input_schema":{}}],"system":"one two three four five","messages":[]}`
	runCases(t, map[string]applyCase{
		"string system becomes one marked block, its bytes kept": {body: messages, edits: mark,
			in:      `{"model":"claude-sonnet-4-5","system": "Be brief.\n\u00e9","messages":[{"role":"user","content":"hi"}]}`,
			want:    `{"model":"claude-sonnet-4-5","system": [{"type":"text","text":"Be brief.\n\u00e9",` + cc + `}],"messages":[{"role":"user","content":"hi"}]}`,
			applied: marked},
		"last system block marked": {body: messages, edits: mark,
			in:      `{"system":[{"type":"text","text":"a"}, {"type": "text", "text": "b"}],"messages":[]}`,
			want:    `{"system":[{"type":"text","text":"a"}, {` + cc + `,"type": "text", "text": "b"}],"messages":[]}`,
			applied: marked},
		"system after tools: the system is marked, it ends the prefix": {body: messages, edits: mark,
			in:      `{"tools":[{"name":"t","input_schema":{"type":"object"}}],"system":"s"}`,
			want:    `{"tools":[{"name":"t","input_schema":{"type":"object"}}],"system":[{"type":"text","text":"s",` + cc + `}]}`,
			applied: marked},
		"no system: the last tool": {body: messages, edits: mark,
			in:      "{\"tools\": [\n {\"name\":\"a\"},\n {\"name\":\"b\",\"input_schema\":{}}\n],\"messages\":[]}",
			want:    "{\"tools\": [\n {\"name\":\"a\"},\n {" + cc + ",\"name\":\"b\",\"input_schema\":{}}\n],\"messages\":[]}",
			applied: marked},
		"blank system: the last tool": {body: messages, edits: mark,
			in:      `{"system":"  ","tools":[{"name":"a"}]}`,
			want:    `{"system":"  ","tools":[{` + cc + `,"name":"a"}]}`,
			applied: marked},
		"empty system list: the last tool": {body: messages, edits: mark,
			in:      `{"system":[],"tools":[{"name":"a"}]}`,
			want:    `{"system":[],"tools":[{` + cc + `,"name":"a"}]}`,
			applied: marked},
		"null system: the last tool": {body: messages, edits: mark,
			in:      `{"system":null,"tools":[{"name":"a"}]}`,
			want:    `{"system":null,"tools":[{` + cc + `,"name":"a"}]}`,
			applied: marked},
		"long enough": {body: counted, edits: atLeast(6), in: long,
			want: `{"model":"claude-sonnet-4-5","tools":[{"name":"a","input_schema":{}}],"system":[{"type":"text","text":"one two three four five",` +
				cc + `}],"messages":[]}`,
			applied: []optimize.Applied{{Edit: atLeast(6)[0]}}},
		"too short":                 {body: counted, edits: atLeast(7), in: long},
		"a mark already, in system": {body: messages, edits: mark, in: string(readBody(t, "anthropic/messages-system-blocks.json"))},
		"a mark already, in a message": {body: messages, edits: mark,
			in: `{"system":"s","messages":[{"role":"user","content":[{"type":"text","text":"x","cache_control":{"type":"ephemeral"}}]}]}`},
		"automatic caching asked for": {body: messages, edits: mark,
			in: `{"cache_control":{"type":"ephemeral"},"system":"s","messages":[]}`},
		"a mark, escaped": {body: messages, edits: mark,
			in: `{"system":"s","tools":[{"name":"a","cache\u005fcontrol":{"type":"ephemeral"}}]}`},
		"last system block not text": {body: messages, edits: mark,
			in: `{"system":[{"type":"text","text":"a"},{"type":"image"}],"tools":[{"name":"a"}]}`},
		"last system block blank": {body: messages, edits: mark,
			in: `{"system":[{"type":"text","text":"a"},{"type":"text","text":""}]}`},
		"system not a string or list":      {body: messages, edits: mark, in: `{"system":7,"tools":[{"name":"a"}]}`},
		"nothing to mark":                  {body: messages, edits: mark, in: string(readBody(t, "anthropic/messages-simple.json"))},
		"no tools":                         {body: messages, edits: mark, in: `{"tools":[],"messages":[]}`},
		"last tool not an object":          {body: messages, edits: mark, in: `{"tools":[{"name":"a"},null]}`},
		"openai: not a provider with this": {body: chat, edits: mark, in: `{"model":"gpt-4o","messages":[{"role":"system","content":"s"}]}`},
	})
}

func TestPrefixText(t *testing.T) {
	for name, tc := range map[string]struct {
		body   optimize.Body
		in     string
		tools  string
		system []string
	}{
		"string system and tools": {body: messages,
			in:    "{\"tools\": [ {\"name\": \"a\",\n \"input_schema\": {\"type\": \"object\"}} ], \"system\": \"be \\u0062rief\"}",
			tools: `[{"name":"a","input_schema":{"type":"object"}}]`, system: []string{"be brief"}},
		"system blocks": {body: messages,
			in:     `{"system":[{"type":"text","text":"a"},{"type":"text","text":"b","cache_control":{"type":"ephemeral"}}]}`,
			system: []string{"a", "b"}},
		"neither": {body: messages, in: `{"messages":[]}`},
		"openai":  {body: chat, in: `{"tools":[{"type":"function"}]}`},
	} {
		t.Run(name, func(t *testing.T) {
			tools, system, err := optimize.PrefixText(tc.body, []byte(tc.in))
			require.NoError(t, err)
			assert.Equal(t, tc.tools, tools)
			assert.Equal(t, tc.system, system)
		})
	}
	_, _, err := optimize.PrefixText(messages, []byte(`{"system":"a","system":"b"}`))
	require.ErrorIs(t, err, optimize.ErrDuplicateKey)
}
