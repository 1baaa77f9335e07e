package costing_test

import (
	"bytes"
	"encoding/json"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/tollgate/tollgate/costing"
)

// TestDropNullUsage: only a top-level "usage":null member goes, with one
// comma; every other byte stays.
func TestDropNullUsage(t *testing.T) {
	tests := map[string]struct{ in, want string }{
		"last member":        {`data: {"id":"a","choices":[],"usage":null}` + "\n\n", `data: {"id":"a","choices":[]}` + "\n\n"},
		"first member":       {`data: {"usage":null,"id":"a"}` + "\r\n\r\n", `data: {"id":"a"}` + "\r\n\r\n"},
		"only member":        {`data: {"usage":null}` + "\n\n", `data: {}` + "\n\n"},
		"spaces":             {`data:{"id":"a" , "usage" : null }` + "\n\n", `data:{"id":"a"  }` + "\n\n"},
		"usage object kept":  {`data: {"id":"a","usage":{"total_tokens":3}}` + "\n\n", `data: {"id":"a","usage":{"total_tokens":3}}` + "\n\n"},
		"nested kept":        {`data: {"choices":[{"usage":null}],"x":{"usage":null}}` + "\n\n", `data: {"choices":[{"usage":null}],"x":{"usage":null}}` + "\n\n"},
		"in a string kept":   {`data: {"content":"\"usage\":null","usage":null}` + "\n\n", `data: {"content":"\"usage\":null"}` + "\n\n"},
		"a value kept":       {`data: {"a":"usage","b":"x"}` + "\n\n", `data: {"a":"usage","b":"x"}` + "\n\n"},
		"not null kept":      {`data: {"usage":nullx}` + "\n\n", `data: {"usage":nullx}` + "\n\n"},
		"two data lines":     {"data: {\"usage\":null,\ndata: \"a\":1}\n\n", "data: {\"usage\":null,\ndata: \"a\":1}\n\n"},
		"named event":        {"event: x\ndata: {\"usage\":null}\n\n", "event: x\ndata: {\"usage\":null}\n\n"},
		"done":               {"data: [DONE]\n\n", "data: [DONE]\n\n"},
		"unbalanced kept":    {`data: {"a":1}}, "usage":null}` + "\n\n", `data: {"a":1}}, "usage":null}` + "\n\n"},
		"escaped quote kept": {`data: {"a\"usage\":null":1}` + "\n\n", `data: {"a\"usage\":null":1}` + "\n\n"},
	}
	for name, tc := range tests {
		t.Run(name, func(t *testing.T) {
			assert.Equal(t, tc.want, string(costing.DropNullUsage([]byte(tc.in))))
		})
	}
}

// FuzzDropNullUsage: only bytes are removed; a JSON object stays valid
// JSON, with the same members but a null usage.
func FuzzDropNullUsage(f *testing.F) {
	for _, e := range bytes.SplitAfter(recordedResponses(f)["openai-chat-stream.sse"], []byte("\n\n")) {
		f.Add(e)
	}
	f.Add([]byte(`data: {"usage":null,"id":"a"}`))
	f.Fuzz(func(t *testing.T, ev []byte) {
		out := costing.DropNullUsage(ev)
		require.True(t, isSubsequence(out, ev))
		i := bytes.IndexByte(ev, '{')
		if i < 0 || !bytes.HasPrefix(ev, []byte("data: ")) || i != len("data: ") {
			return
		}
		var before map[string]json.RawMessage
		if json.Unmarshal(ev[i:], &before) != nil {
			return
		}
		var after map[string]json.RawMessage
		require.NoError(t, json.Unmarshal(out[i:], &after), "%s", out)
		if u, ok := before["usage"]; ok && string(bytes.TrimSpace(u)) == "null" && len(out) < len(ev) {
			delete(before, "usage")
		}
		require.Equal(t, len(before), len(after))
		for k := range before {
			require.Contains(t, after, k)
		}
	})
}
