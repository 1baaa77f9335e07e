package optimize_test

import (
	"bytes"
	"encoding/json"
	"errors"
	"os"
	"path/filepath"
	"testing"

	"github.com/go-json-experiment/json/jsontext"
	"github.com/stretchr/testify/require"

	"github.com/tollgate/tollgate/costing/optimize"
)

// assertValidObject checks that b is one JSON object, valid for both
// decoders, with no key twice in any object.
func assertValidObject(t testing.TB, b []byte) {
	t.Helper()
	require.True(t, json.Valid(b), "encoding/json: invalid: %q", b)
	require.True(t, jsontext.Value(b).IsValid(), "jsontext: invalid or duplicate names: %q", b)
	require.Equal(t, byte('{'), bytes.TrimLeft(b, " \t\r\n")[0], "not an object: %q", b)
}

// topMembers returns the raw value of each top-level member, by decoded
// name.
func topMembers(t testing.TB, b []byte) map[string]string {
	t.Helper()
	d := jsontext.NewDecoder(bytes.NewReader(b))
	_, err := d.ReadToken()
	require.NoError(t, err)
	m := map[string]string{}
	for d.PeekKind() != '}' {
		tok, err := d.ReadToken()
		require.NoError(t, err)
		name := tok.String()
		v, err := d.ReadValue()
		require.NoError(t, err)
		m[name] = string(v)
	}
	return m
}

// touches lists the top-level members each strategy may change.
var touches = map[optimize.Strategy][]string{
	optimize.Downgrade:   {"model"},
	optimize.Flex:        {"service_tier"},
	optimize.TokenCap:    {"max_completion_tokens", "max_tokens", "max_output_tokens"},
	optimize.PromptCache: {"system", "tools"},
	optimize.Compact:     {"messages", "system"},
}

var fuzzBodies = []optimize.Body{chat, responses, completions, embeddings, messages}

// FuzzApply holds Apply to its contract on any body and any set of edits
// (at most one per strategy, so that applying them again must be a no-op):
// no panic; an error or no change gives the same slice back; a change gives
// one valid JSON object with no duplicate key, changes only the members
// its edits may touch (every other member keeps its bytes), and applying
// the same edits to it again changes nothing.
func FuzzApply(f *testing.F) {
	for _, dir := range []string{"openai", "anthropic"} {
		files, err := filepath.Glob(filepath.Join("..", "..", "testdata", "bodies", dir, "*.json"))
		require.NoError(f, err)
		for _, file := range files {
			b, err := os.ReadFile(file)
			require.NoError(f, err)
			for which := range uint8(len(fuzzBodies)) {
				f.Add(b, which, uint8(0x1f), "gpt-4o-mini", int64(256), int64(3))
			}
		}
	}
	for _, s := range []string{
		`{}`, `{ }`, `[]`, `null`, `{"model":"gpt-4o","model":"x"}`, `{"a":{"b":1,"b":2}}`,
		`{"model":"gpt\u002d4o","service_tier":"auto","max_tokens":1e3,"max_completion_tokens":null}`,
		`{"service_tier":"priority","max_output_tokens":99999999999999999999}`,
		`{"messages":[{"role":"user","content":"a  \n\n\n\nb"},{"role":"user","content":"a  \n\n\n\nb"},{"role":"user","content":"c"}]}`,
		`{"system":"s  \r\n\r\n\r\n","tools":[{"name":"a"}],"messages":[{"role":"user","content":[{"type":"text","text":"x \n"}]}]}`,
		`{"system":[{"type":"text","text":"a"}],"cache_control":{"type":"ephemeral"}}`,
		"{\"user\":\"\xff\"}",
	} {
		for which := range uint8(len(fuzzBodies)) {
			f.Add([]byte(s), which, uint8(0x1f), "claude-haiku-4-5", int64(8), int64(0))
		}
	}
	f.Fuzz(func(t *testing.T, body []byte, which, strategies uint8, model string, maxTokens, minPrefix int64) {
		b := fuzzBodies[int(which)%len(fuzzBodies)]
		b.CountTokens = func(text string) int64 { return int64(len(text) / 4) }
		var edits []optimize.Edit
		for i, s := range []optimize.Strategy{optimize.Downgrade, optimize.Flex, optimize.TokenCap, optimize.PromptCache, optimize.Compact} {
			if strategies&(1<<i) != 0 {
				edits = append(edits, optimize.Edit{Strategy: s, Model: model, MaxTokens: maxTokens, MinPrefixTokens: minPrefix})
			}
		}
		if strategies&0x80 != 0 { // reverse the order
			for i, j := 0, len(edits)-1; i < j; i, j = i+1, j-1 {
				edits[i], edits[j] = edits[j], edits[i]
			}
		}
		in := bytes.Clone(body)
		out, applied, err := optimize.Apply(b, body, edits)
		require.Equal(t, in, body, "Apply modified its input")
		if err != nil {
			require.True(t, errors.Is(err, optimize.ErrMalformedBody) || errors.Is(err, optimize.ErrDuplicateKey) ||
				errors.Is(err, optimize.ErrInvalidEdit), "unexpected error: %v", err)
			require.True(t, sameSlice(body, out), "an error must give the body back")
			require.Nil(t, applied)
			return
		}
		if len(applied) == 0 {
			require.True(t, sameSlice(body, out), "no change must give the same slice back")
			require.Nil(t, applied)
			return
		}
		assertValidObject(t, out)
		may := map[string]bool{}
		for _, a := range applied {
			for _, name := range touches[a.Strategy] {
				may[name] = true
			}
		}
		before, after := topMembers(t, body), topMembers(t, out)
		for name, v := range before {
			if !may[name] {
				require.Equal(t, v, after[name], "member %q changed", name)
			}
		}
		for name := range after {
			_, had := before[name]
			require.True(t, had || may[name], "member %q added", name)
		}
		for _, a := range applied {
			switch a.Strategy {
			case optimize.Downgrade:
				var m string
				require.NoError(t, json.Unmarshal([]byte(after["model"]), &m))
				require.Equal(t, model, m)
			case optimize.Flex:
				require.Equal(t, `"flex"`, after["service_tier"])
			case optimize.Compact:
				if len(applied) == 1 {
					require.Equal(t, int64(len(body)-len(out)), a.RemovedBytes)
				}
				require.True(t, a.RemovedBytes > 0 || a.RemovedMessages > 0)
			}
		}

		again, applied2, err := optimize.Apply(b, out, edits)
		require.NoError(t, err)
		require.Nil(t, applied2, "not idempotent")
		require.True(t, sameSlice(out, again))
	})
}
