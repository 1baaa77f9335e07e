package optimize_test

import (
	"testing"

	"github.com/tollgate/tollgate/costing/optimize"
)

func TestCompact(t *testing.T) {
	c := []optimize.Edit{{Strategy: optimize.Compact}}
	removed := func(bytes int64, msgs int) []optimize.Applied {
		return []optimize.Applied{{Edit: c[0], RemovedBytes: bytes, RemovedMessages: msgs}}
	}
	// msgs wraps OpenAI chat messages in a body.
	msgs := func(ms string) string { return `{"model":"gpt-4o","messages":[` + ms + `],"n":1}` }
	runCases(t, map[string]applyCase{
		"trailing spaces and tabs before line breaks": {body: chat, edits: c,
			in:      msgs(`{"role":"user","content":"a  \nb\t\nc \r\nd"}`),
			want:    msgs(`{"role":"user","content":"a\nb\nc\r\nd"}`),
			applied: removed(5, 0)},
		"runs of line breaks cut to two": {body: chat, edits: c,
			in:      msgs(`{"role":"user","content":"a\n\n\n\nb\r\n\r\n\r\nc\n \n\t\n d"}`),
			want:    msgs(`{"role":"user","content":"a\n\nb\r\n\r\nc\n\n d"}`),
			applied: removed(13, 0)},
		"indentation, inner runs and the end kept": {body: chat, edits: c,
			in:      msgs(`{"role":"user","content":"def f():  \n    x  =  1   # note\n\n\n\treturn x  "}`),
			want:    msgs(`{"role":"user","content":"def f():\n    x  =  1   # note\n\n\treturn x  "}`),
			applied: removed(4, 0)},
		// Trimming the blank after a lone CR would make a new CRLF, and
		// the next pass trim the blank before it.
		"a lone CR is text, the blank after it kept": {body: chat, edits: c,
			in: msgs(`{"role":"user","content":"a \r \nb\r\r\n"}`)},
		"an escaped line break": {body: chat, edits: c,
			in:      msgs(`{"role":"user","content":"\u00e9 \u000a\u000a\u000ab"}`),
			want:    msgs(`{"role":"user","content":"é\n\nb"}`),
			applied: removed(19, 0)},
		"text parts, other parts kept": {body: chat, edits: c,
			in: msgs(`{"role":"user","content":[{"type":"text","text":"look  \n"},` +
				`{"type":"image_url","image_url":{"url":"https://x/a.png  \n"}}]}`),
			want: msgs(`{"role":"user","content":[{"type":"text","text":"look\n"},` +
				`{"type":"image_url","image_url":{"url":"https://x/a.png  \n"}}]}`),
			applied: removed(2, 0)},
		"tool output kept": {body: chat, edits: c,
			in: msgs(`{"role":"assistant","content":null,"tool_calls":[{"id":"c1","type":"function","function":{"name":"f","arguments":"{}  \n"}}]},` +
				`{"role":"tool","tool_call_id":"c1","content":"diff  \n\n\n"},{"role":"user","content":"ok"}`)},
		"nothing to trim":  {body: chat, edits: c, in: string(readBody(t, "openai/chat-4kb.json"))},
		"unicode kept":     {body: chat, edits: c, in: string(readBody(t, "openai/chat-unicode.json"))},
		"not a chat shape": {body: chat, edits: c, in: `{"messages":{"role":"user","content":"a  \n"}}`},

		"a duplicate dropped": {body: chat, edits: c,
			in:      msgs(`{"role":"user","content":"hi"}, {"role":"user","content":"hi"}, {"role":"assistant","content":"yes?"}`),
			want:    msgs(`{"role":"user","content":"hi"}, {"role":"assistant","content":"yes?"}`),
			applied: removed(32, 1)},
		"three in a row": {body: chat, edits: c,
			in:      msgs(`{"role":"user","content":"x"},{"role":"user","content":"x"},{"role":"user","content":"x"},{"role":"user","content":"y"}`),
			want:    msgs(`{"role":"user","content":"x"},{"role":"user","content":"y"}`),
			applied: removed(60, 2)},
		"duplicates once trimmed": {body: chat, edits: c,
			in:      msgs(`{"role":"user","content":"a \nb"},{"role":"user","content":"a\nb"},{"role":"user","content":"c"}`),
			want:    msgs(`{"role":"user","content":"a\nb"},{"role":"user","content":"c"}`),
			applied: removed(34, 1)},
		"duplicate text parts": {body: chat, edits: c,
			in:      msgs(`{"role":"user","content":[{"type":"text","text":"a"}]},{"role":"user","content":[{"type":"text","text":"a"}]},{"role":"user","content":"b"}`),
			want:    msgs(`{"role":"user","content":[{"type":"text","text":"a"}]},{"role":"user","content":"b"}`),
			applied: removed(55, 1)},
		"never the last":              {body: chat, edits: c, in: msgs(`{"role":"user","content":"hi"},{"role":"user","content":"hi"}`)},
		"never the first":             {body: chat, edits: c, in: msgs(`{"role":"user","content":"hi"}`)},
		"another role":                {body: chat, edits: c, in: msgs(`{"role":"user","content":"hi"},{"role":"assistant","content":"hi"},{"role":"user","content":"x"}`)},
		"content spelled differently": {body: chat, edits: c, in: msgs(`{"role":"user","content":"hi"},{"role":"user","content":"h\u0069"},{"role":"user","content":"x"}`)},
		"not next to each other":      {body: chat, edits: c, in: msgs(`{"role":"user","content":"hi"},{"role":"user","content":"x"},{"role":"user","content":"hi"},{"role":"user","content":"x"}`)},
		"names differ":                {body: chat, edits: c, in: msgs(`{"role":"user","name":"a","content":"hi"},{"role":"user","name":"b","content":"hi"},{"role":"user","content":"x"}`)},
		"same names: still not plain": {body: chat, edits: c, in: msgs(`{"role":"user","name":"a","content":"hi"},{"role":"user","name":"a","content":"hi"},{"role":"user","content":"x"}`)},
		"tool results":                {body: chat, edits: c, in: msgs(`{"role":"tool","tool_call_id":"a","content":"1"},{"role":"tool","tool_call_id":"a","content":"1"},{"role":"user","content":"x"}`)},
		"tool role without ids":       {body: chat, edits: c, in: msgs(`{"role":"tool","content":"1"},{"role":"tool","content":"1"},{"role":"user","content":"x"}`)},
		"images":                      {body: chat, edits: c, in: msgs(`{"role":"user","content":[{"type":"image_url","image_url":{"url":"u"}}]},{"role":"user","content":[{"type":"image_url","image_url":{"url":"u"}}]},{"role":"user","content":"x"}`)},

		"anthropic system string and text blocks": {body: messages, edits: c,
			in:      `{"system":"rules  \n\n\n\nend","messages":[{"role":"user","content":[{"type":"text","text":"q  \n"}]}]}`,
			want:    `{"system":"rules\n\nend","messages":[{"role":"user","content":[{"type":"text","text":"q\n"}]}]}`,
			applied: removed(8, 0)},
		"anthropic system blocks": {body: messages, edits: c,
			in:      `{"system":[{"type":"text","text":"a  \nb","cache_control":{"type":"ephemeral"}}],"messages":[]}`,
			want:    `{"system":[{"type":"text","text":"a\nb","cache_control":{"type":"ephemeral"}}],"messages":[]}`,
			applied: removed(2, 0)},
		"anthropic duplicate": {body: messages, edits: c,
			in:      `{"messages":[{"role":"user","content":"go"},{"role":"user","content":"go"},{"role":"assistant","content":"ok"}]}`,
			want:    `{"messages":[{"role":"user","content":"go"},{"role":"assistant","content":"ok"}]}`,
			applied: removed(31, 1)},
		"anthropic tool blocks and thinking kept": {body: messages, edits: c,
			in: `{"messages":[{"role":"assistant","content":[{"type":"thinking","thinking":"hm  \n","signature":"s"},{"type":"tool_use","id":"t","name":"f","input":{"a":"b  \n"}}]},` +
				`{"role":"user","content":[{"type":"tool_result","tool_use_id":"t","content":[{"type":"text","text":"r  \n"}]}]},` +
				`{"role":"user","content":[{"type":"tool_result","tool_use_id":"t","content":[{"type":"text","text":"r  \n"}]}]},{"role":"user","content":"x"}]}`},
		"anthropic cache mark: no drop": {body: messages, edits: c,
			in: `{"messages":[{"role":"user","content":[{"type":"text","text":"a","cache_control":{"type":"ephemeral"}}]},` +
				`{"role":"user","content":[{"type":"text","text":"a","cache_control":{"type":"ephemeral"}}]},{"role":"user","content":"x"}]}`},
		"anthropic fixtures": {body: messages, edits: c, in: string(readBody(t, "anthropic/messages-tools.json"))},
	})
}
