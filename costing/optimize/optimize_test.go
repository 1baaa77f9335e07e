package optimize_test

import (
	"os"
	"path/filepath"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/tollgate/tollgate/costing"
	"github.com/tollgate/tollgate/costing/optimize"
	"github.com/tollgate/tollgate/policy"
)

var (
	chat        = optimize.Body{Provider: policy.ProviderOpenAI, Kind: costing.KindChat}
	responses   = optimize.Body{Provider: policy.ProviderOpenAI, Kind: costing.KindResponses}
	completions = optimize.Body{Provider: policy.ProviderOpenAI, Kind: costing.KindCompletions}
	embeddings  = optimize.Body{Provider: policy.ProviderOpenAI, Kind: costing.KindEmbeddings}
	messages    = optimize.Body{Provider: policy.ProviderAnthropic, Kind: optimize.KindMessages}
)

// applyCase is one row of a strategy's table. want "" means the body must
// come back as it went in: the same slice, nothing applied.
type applyCase struct {
	body    optimize.Body
	in      string
	edits   []optimize.Edit
	want    string
	applied []optimize.Applied
	err     error // the error Apply must wrap; the body comes back as is
}

func runCases(t *testing.T, cases map[string]applyCase) {
	t.Helper()
	for name, tc := range cases {
		t.Run(name, func(t *testing.T) {
			in := []byte(tc.in)
			out, applied, err := optimize.Apply(tc.body, in, tc.edits)
			if tc.err != nil {
				require.ErrorIs(t, err, tc.err)
				assert.True(t, sameSlice(in, out), "a refused body comes back as the same slice")
				assert.Nil(t, applied)
				return
			}
			require.NoError(t, err)
			if tc.want == "" {
				assert.True(t, sameSlice(in, out), "no edit applies: the same slice, got %s", out)
				assert.Nil(t, applied)
				return
			}
			assert.Equal(t, tc.want, string(out))
			assert.Equal(t, tc.applied, applied)
			assert.Equal(t, tc.in, string(in), "Apply must not modify its input")
			assertValidObject(t, out)
			// Applying the same edits again changes nothing.
			again, applied2, err := optimize.Apply(tc.body, out, tc.edits)
			require.NoError(t, err)
			assert.True(t, sameSlice(out, again), "not idempotent: %s", again)
			assert.Nil(t, applied2)
		})
	}
}

// sameSlice reports whether a and b are the same slice (not a copy).
func sameSlice(a, b []byte) bool {
	return len(a) == len(b) && (len(a) == 0 || &a[0] == &b[0])
}

func readBody(t testing.TB, name string) []byte {
	t.Helper()
	b, err := os.ReadFile(filepath.Join("..", "..", "testdata", "bodies", name))
	require.NoError(t, err)
	return b
}

func TestApplyRefuses(t *testing.T) {
	dg := []optimize.Edit{{Strategy: optimize.Downgrade, Model: "gpt-4o-mini"}}
	runCases(t, map[string]applyCase{
		"top-level key twice": {body: chat, in: `{"model":"gpt-4o","messages":[],"model":"gpt-4.1"}`,
			edits: dg, err: optimize.ErrDuplicateKey},
		"key twice, once escaped": {body: chat, in: `{"model":"gpt-4o","mod\u0065l":"gpt-4.1"}`,
			edits: dg, err: optimize.ErrDuplicateKey},
		"nested key twice": {body: chat, in: `{"model":"gpt-4o","messages":[{"role":"user","content":"a","content":"b"}]}`,
			edits: dg, err: optimize.ErrDuplicateKey},
		"array":                 {body: chat, in: `[{"model":"gpt-4o"}]`, edits: dg, err: optimize.ErrMalformedBody},
		"null":                  {body: chat, in: `null`, edits: dg, err: optimize.ErrMalformedBody},
		"string":                {body: chat, in: `"gpt-4o"`, edits: dg, err: optimize.ErrMalformedBody},
		"empty":                 {body: chat, in: ``, edits: dg, err: optimize.ErrMalformedBody},
		"blank":                 {body: chat, in: " \n", edits: dg, err: optimize.ErrMalformedBody},
		"truncated":             {body: chat, in: `{"model":"gpt-4o"`, edits: dg, err: optimize.ErrMalformedBody},
		"two objects":           {body: chat, in: `{"model":"gpt-4o"} {}`, edits: dg, err: optimize.ErrMalformedBody},
		"trailing garbage":      {body: chat, in: `{"model":"gpt-4o"}x`, edits: dg, err: optimize.ErrMalformedBody},
		"trailing comma":        {body: chat, in: `{"model":"gpt-4o",}`, edits: dg, err: optimize.ErrMalformedBody},
		"invalid UTF-8":         {body: chat, in: "{\"model\":\"gpt-4o\",\"user\":\"\xff\"}", edits: dg, err: optimize.ErrMalformedBody},
		"lone surrogate escape": {body: chat, in: `{"model":"gpt-4o","user":"\ud800"}`, edits: dg, err: optimize.ErrMalformedBody},
		"bad nested value":      {body: chat, in: `{"model":"gpt-4o","messages":[tru]}`, edits: dg, err: optimize.ErrMalformedBody},
		"no model to go to":     {body: chat, in: `{"model":"gpt-4o"}`, edits: []optimize.Edit{{Strategy: optimize.Downgrade}}, err: optimize.ErrInvalidEdit},
		"zero cap": {body: chat, in: `{"model":"gpt-4o"}`,
			edits: []optimize.Edit{{Strategy: optimize.TokenCap}}, err: optimize.ErrInvalidEdit},
		"negative cap": {body: chat, in: `{"model":"gpt-4o"}`,
			edits: []optimize.Edit{{Strategy: optimize.TokenCap, MaxTokens: -1}}, err: optimize.ErrInvalidEdit},
		"min prefix without a counter": {body: messages, in: `{"model":"claude-sonnet-4-5"}`,
			edits: []optimize.Edit{{Strategy: optimize.PromptCache, MinPrefixTokens: 1024}}, err: optimize.ErrInvalidEdit},
		"unknown strategy": {body: chat, in: `{"model":"gpt-4o"}`,
			edits: []optimize.Edit{{Strategy: "shrink"}}, err: optimize.ErrInvalidEdit},
		"invalid edit, even where nothing applies": {body: embeddings, in: `not json`,
			edits: []optimize.Edit{{Strategy: optimize.TokenCap}}, err: optimize.ErrInvalidEdit},
		// A refusal is all or nothing: the valid edit before it does not apply.
		"a bad edit after a good one": {body: chat, in: `{"model":"gpt-4o"}`,
			edits: append(dg, optimize.Edit{Strategy: optimize.TokenCap}), err: optimize.ErrInvalidEdit},
	})
}

func TestApplyNothingToDo(t *testing.T) {
	body := readBody(t, "openai/chat-4kb.json")
	for name, tc := range map[string]struct {
		body  optimize.Body
		in    []byte
		edits []optimize.Edit
	}{
		"no edits":                        {chat, body, nil},
		"same model, a cap above 700":     {chat, body, []optimize.Edit{{Strategy: optimize.Downgrade, Model: "gpt-4o"}, {Strategy: optimize.TokenCap, MaxTokens: 4096}}},
		"flex on Anthropic":               {messages, body, []optimize.Edit{{Strategy: optimize.Flex}}},
		"prompt cache on OpenAI":          {chat, body, []optimize.Edit{{Strategy: optimize.PromptCache}}},
		"generic provider":                {optimize.Body{Provider: policy.ProviderGeneric, Kind: costing.KindChat}, body, []optimize.Edit{{Strategy: optimize.Downgrade, Model: "x"}}},
		"unknown OpenAI kind":             {optimize.Body{Provider: policy.ProviderOpenAI}, body, []optimize.Edit{{Strategy: optimize.Downgrade, Model: "x"}}},
		"Anthropic, another kind":         {optimize.Body{Provider: policy.ProviderAnthropic, Kind: "count_tokens"}, body, []optimize.Edit{{Strategy: optimize.Downgrade, Model: "x"}}},
		"compact on completions":          {completions, body, []optimize.Edit{{Strategy: optimize.Compact}}},
		"not read when nothing can apply": {embeddings, []byte(`not json`), []optimize.Edit{{Strategy: optimize.Flex}, {Strategy: optimize.TokenCap, MaxTokens: 1}}},
	} {
		t.Run(name, func(t *testing.T) {
			out, applied, err := optimize.Apply(tc.body, tc.in, tc.edits)
			require.NoError(t, err)
			assert.True(t, sameSlice(tc.in, out))
			assert.Nil(t, applied)
		})
	}
}

func TestApplyInOrder(t *testing.T) {
	edits := []optimize.Edit{
		{Strategy: optimize.Downgrade, Model: "gpt-4o-mini"},
		{Strategy: optimize.Flex},
		{Strategy: optimize.TokenCap, MaxTokens: 256},
		{Strategy: optimize.Compact},
		{Strategy: optimize.PromptCache}, // not for OpenAI: skipped
	}
	runCases(t, map[string]applyCase{
		"all of them": {body: chat, edits: edits,
			in: `{"model": "gpt-4o", "messages": [{"role": "user", "content": "hi  \n\n\n\nthere"}], "max_tokens": 700}`,
			want: `{"service_tier":"flex","model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hi\n\nthere"}], ` +
				`"max_tokens": 256}`,
			applied: []optimize.Applied{
				{Edit: edits[0], FromModel: "gpt-4o"},
				{Edit: edits[1]},
				{Edit: edits[2], FromMaxTokens: 700},
				{Edit: edits[3], RemovedBytes: 6},
			}},
		"later edits see earlier ones": {body: chat,
			edits: []optimize.Edit{{Strategy: optimize.Downgrade, Model: "gpt-4.1"}, {Strategy: optimize.Downgrade, Model: "gpt-4.1"}},
			in:    `{"model":"gpt-4o"}`, want: `{"model":"gpt-4.1"}`,
			applied: []optimize.Applied{{Edit: optimize.Edit{Strategy: optimize.Downgrade, Model: "gpt-4.1"}, FromModel: "gpt-4o"}}},
	})
}

func TestDowngrade(t *testing.T) {
	mini := []optimize.Edit{{Strategy: optimize.Downgrade, Model: "gpt-4o-mini"}}
	haiku := []optimize.Edit{{Strategy: optimize.Downgrade, Model: "claude-haiku-4-5"}}
	runCases(t, map[string]applyCase{
		"chat": {body: chat, edits: mini,
			in:      `{"model":"gpt-4o","messages":[{"role":"user","content":"hi"}]}`,
			want:    `{"model":"gpt-4o-mini","messages":[{"role":"user","content":"hi"}]}`,
			applied: []optimize.Applied{{Edit: mini[0], FromModel: "gpt-4o"}}},
		"chat, every other byte kept": {body: chat, edits: mini,
			in:      "{\n  \"temperature\" : 1.0E0,\n  \"model\" :\t\"gpt-4o\" ,\n  \"x-unknown\": {\"a\": [1, 2.50]}\n}\n",
			want:    "{\n  \"temperature\" : 1.0E0,\n  \"model\" :\t\"gpt-4o-mini\" ,\n  \"x-unknown\": {\"a\": [1, 2.50]}\n}\n",
			applied: []optimize.Applied{{Edit: mini[0], FromModel: "gpt-4o"}}},
		"responses": {body: responses, edits: mini,
			in:      `{"model":"gpt-4.1","input":"hi"}`,
			want:    `{"model":"gpt-4o-mini","input":"hi"}`,
			applied: []optimize.Applied{{Edit: mini[0], FromModel: "gpt-4.1"}}},
		"completions": {body: completions, edits: []optimize.Edit{{Strategy: optimize.Downgrade, Model: "babbage-002"}},
			in:      `{"model":"gpt-3.5-turbo-instruct","prompt":"hi","max_tokens":8}`,
			want:    `{"model":"babbage-002","prompt":"hi","max_tokens":8}`,
			applied: []optimize.Applied{{Edit: optimize.Edit{Strategy: optimize.Downgrade, Model: "babbage-002"}, FromModel: "gpt-3.5-turbo-instruct"}}},
		"embeddings": {body: embeddings, edits: []optimize.Edit{{Strategy: optimize.Downgrade, Model: "text-embedding-3-small"}},
			in:      `{"input":"hi","model":"text-embedding-3-large"}`,
			want:    `{"input":"hi","model":"text-embedding-3-small"}`,
			applied: []optimize.Applied{{Edit: optimize.Edit{Strategy: optimize.Downgrade, Model: "text-embedding-3-small"}, FromModel: "text-embedding-3-large"}}},
		"anthropic": {body: messages, edits: haiku,
			in:      `{"model": "claude-sonnet-4-5", "max_tokens": 1024, "messages": []}`,
			want:    `{"model": "claude-haiku-4-5", "max_tokens": 1024, "messages": []}`,
			applied: []optimize.Applied{{Edit: haiku[0], FromModel: "claude-sonnet-4-5"}}},
		"anthropic, kind not given": {body: optimize.Body{Provider: policy.ProviderAnthropic}, edits: haiku,
			in:      `{"model":"claude-opus-4-1"}`,
			want:    `{"model":"claude-haiku-4-5"}`,
			applied: []optimize.Applied{{Edit: haiku[0], FromModel: "claude-opus-4-1"}}},
		"escaped model name": {body: chat, edits: mini,
			in:      `{"model":"gpt\u002d4o"}`,
			want:    `{"model":"gpt-4o-mini"}`,
			applied: []optimize.Applied{{Edit: mini[0], FromModel: "gpt-4o"}}},
		"target needs escaping": {body: chat, edits: []optimize.Edit{{Strategy: optimize.Downgrade, Model: "a\"b\\c\n"}},
			in:      `{"model":"gpt-4o"}`,
			want:    `{"model":"a\"b\\c\n"}`,
			applied: []optimize.Applied{{Edit: optimize.Edit{Strategy: optimize.Downgrade, Model: "a\"b\\c\n"}, FromModel: "gpt-4o"}}},
		"already the target":          {body: chat, edits: mini, in: `{"model":"gpt-4o-mini"}`},
		"already the target, escaped": {body: chat, edits: mini, in: `{"model":"gpt-4o-m\u0069ni"}`},
		"no model":                    {body: chat, edits: mini, in: `{"messages":[]}`},
		"null model":                  {body: chat, edits: mini, in: `{"model":null}`},
		"model not a string":          {body: chat, edits: mini, in: `{"model":4}`},
		"model only nested":           {body: chat, edits: mini, in: `{"metadata":{"model":"gpt-4o"}}`},
	})
}

func TestFlex(t *testing.T) {
	flex := []optimize.Edit{{Strategy: optimize.Flex}}
	applied := func(from string) []optimize.Applied { return []optimize.Applied{{Edit: flex[0], FromTier: from}} }
	runCases(t, map[string]applyCase{
		"chat, none: inserted first": {body: chat, edits: flex,
			in:      `{"model":"o3","messages":[]}`,
			want:    `{"service_tier":"flex","model":"o3","messages":[]}`,
			applied: applied("")},
		"chat, empty object": {body: chat, edits: flex, in: `{}`, want: `{"service_tier":"flex"}`, applied: applied("")},
		"chat, blank object": {body: chat, edits: flex, in: "{ \n}", want: "{\"service_tier\":\"flex\" \n}", applied: applied("")},
		"chat, leading blank": {body: chat, edits: flex,
			in:      "\n { \"model\": \"o3\" }",
			want:    "\n {\"service_tier\":\"flex\", \"model\": \"o3\" }",
			applied: applied("")},
		"chat, auto": {body: chat, edits: flex,
			in:      `{"model":"o3","service_tier": "auto","n":1}`,
			want:    `{"model":"o3","service_tier": "flex","n":1}`,
			applied: applied("auto")},
		"chat, default": {body: chat, edits: flex,
			in:      `{"service_tier":"default"}`,
			want:    `{"service_tier":"flex"}`,
			applied: applied("default")},
		"chat, null": {body: chat, edits: flex,
			in:      `{"service_tier":null}`,
			want:    `{"service_tier":"flex"}`,
			applied: applied("")},
		"responses": {body: responses, edits: flex,
			in:      `{"model":"o4-mini","input":"hi"}`,
			want:    `{"service_tier":"flex","model":"o4-mini","input":"hi"}`,
			applied: applied("")},
		"responses, auto": {body: responses, edits: flex,
			in:      `{"model":"o4-mini","service_tier":"auto"}`,
			want:    `{"model":"o4-mini","service_tier":"flex"}`,
			applied: applied("auto")},
		"already flex":          {body: chat, edits: flex, in: `{"service_tier":"flex"}`},
		"priority is kept":      {body: chat, edits: flex, in: `{"service_tier":"priority"}`},
		"scale is kept":         {body: responses, edits: flex, in: `{"service_tier":"scale"}`},
		"an unknown tier kept":  {body: chat, edits: flex, in: `{"service_tier":"turbo"}`},
		"tier not a string":     {body: chat, edits: flex, in: `{"service_tier":1}`},
		"completions: no flex":  {body: completions, edits: flex, in: `{"model":"gpt-3.5-turbo-instruct"}`},
		"embeddings: no flex":   {body: embeddings, edits: flex, in: `{"model":"text-embedding-3-small"}`},
		"anthropic: no flex":    {body: messages, edits: flex, in: `{"model":"claude-sonnet-4-5"}`},
		"nested tier untouched": {body: chat, edits: flex, in: `{"service_tier":"priority","metadata":{"service_tier":"auto"}}`},
	})
}

func TestTokenCap(t *testing.T) {
	capAt := func(n int64) []optimize.Edit { return []optimize.Edit{{Strategy: optimize.TokenCap, MaxTokens: n}} }
	from := func(n, f int64) []optimize.Applied {
		return []optimize.Applied{{Edit: capAt(n)[0], FromMaxTokens: f}}
	}
	runCases(t, map[string]applyCase{
		"chat, max_completion_tokens lowered": {body: chat, edits: capAt(1000),
			in: `{"model":"gpt-4o","max_completion_tokens": 4096}`, want: `{"model":"gpt-4o","max_completion_tokens": 1000}`,
			applied: from(1000, 4096)},
		"chat, max_tokens lowered": {body: chat, edits: capAt(500),
			in: `{"max_tokens":700,"model":"gpt-4o"}`, want: `{"max_tokens":500,"model":"gpt-4o"}`,
			applied: from(500, 700)},
		"chat, both lowered": {body: chat, edits: capAt(1000),
			in: `{"max_tokens":2048,"max_completion_tokens":4096}`, want: `{"max_tokens":1000,"max_completion_tokens":1000}`,
			applied: from(1000, 4096)},
		"chat, only the larger lowered": {body: chat, edits: capAt(1000),
			in: `{"max_completion_tokens":500,"max_tokens":5000}`, want: `{"max_completion_tokens":500,"max_tokens":1000}`,
			applied: from(1000, 5000)},
		"chat, none: max_completion_tokens inserted": {body: chat, edits: capAt(256),
			in: `{"model":"gpt-4o","messages":[]}`, want: `{"max_completion_tokens":256,"model":"gpt-4o","messages":[]}`,
			applied: from(256, 0)},
		"chat, null: replaced in place": {body: chat, edits: capAt(256),
			in: `{"model":"gpt-4o","max_completion_tokens":null}`, want: `{"model":"gpt-4o","max_completion_tokens":256}`,
			applied: from(256, 0)},
		"chat, max_tokens null: inserted": {body: chat, edits: capAt(256),
			in: `{"max_tokens":null}`, want: `{"max_completion_tokens":256,"max_tokens":null}`,
			applied: from(256, 0)},
		"chat, exponent":         {body: chat, edits: capAt(999), in: `{"max_tokens":1E+3}`, want: `{"max_tokens":999}`, applied: from(999, 1000)},
		"chat, small exponent":   {body: chat, edits: capAt(4), in: `{"max_tokens":0.5e1}`, want: `{"max_tokens":4}`, applied: from(4, 5)},
		"chat, fraction above":   {body: chat, edits: capAt(1000), in: `{"max_tokens":1000.5}`, want: `{"max_tokens":1000}`, applied: from(1000, 1000)},
		"chat, negative exp":     {body: chat, edits: capAt(12), in: `{"max_tokens":123e-1}`, want: `{"max_tokens":12}`, applied: from(12, 12)},
		"chat, past int64":       {body: chat, edits: capAt(8), in: `{"max_tokens":99999999999999999999999}`, want: `{"max_tokens":8}`, applied: from(8, 9223372036854775807)},
		"chat, huge exponent":    {body: chat, edits: capAt(8), in: `{"max_tokens":1e999999999999999999}`, want: `{"max_tokens":8}`, applied: from(8, 9223372036854775807)},
		"chat, leading zeros":    {body: chat, edits: capAt(8), in: `{"max_tokens":0.00009e6}`, want: `{"max_tokens":8}`, applied: from(8, 90)},
		"chat, at the cap":       {body: chat, edits: capAt(700), in: `{"max_tokens":700}`},
		"chat, at the cap, 7e2":  {body: chat, edits: capAt(700), in: `{"max_tokens":7.00e2}`},
		"chat, below the cap":    {body: chat, edits: capAt(1000), in: `{"max_completion_tokens":512}`},
		"chat, tiny exponent":    {body: chat, edits: capAt(1), in: `{"max_tokens":5e-999999999999}`},
		"chat, zero":             {body: chat, edits: capAt(1), in: `{"max_tokens":0}`},
		"chat, negative":         {body: chat, edits: capAt(1), in: `{"max_tokens":-5000}`},
		"chat, a string":         {body: chat, edits: capAt(1), in: `{"max_tokens":"5000"}`},
		"chat, a bool":           {body: chat, edits: capAt(1), in: `{"max_completion_tokens":true}`},
		"chat, the 4 KB fixture": {body: chat, edits: capAt(700), in: string(readBody(t, "openai/chat-4kb.json"))},
		"responses, lowered": {body: responses, edits: capAt(512),
			in: `{"model":"o4-mini","max_output_tokens":2048,"stream":true}`, want: `{"model":"o4-mini","max_output_tokens":512,"stream":true}`,
			applied: from(512, 2048)},
		"responses, none: inserted": {body: responses, edits: capAt(512),
			in: `{"model":"o4-mini","input":"hi"}`, want: `{"max_output_tokens":512,"model":"o4-mini","input":"hi"}`,
			applied: from(512, 0)},
		"responses, max_tokens is not its field": {body: responses, edits: capAt(512),
			in: `{"max_tokens":4096,"max_output_tokens":100}`},
		"completions, lowered": {body: completions, edits: capAt(32),
			in: `{"model":"gpt-3.5-turbo-instruct","max_tokens":64}`, want: `{"model":"gpt-3.5-turbo-instruct","max_tokens":32}`,
			applied: from(32, 64)},
		"completions, none, a cap below the default of 16: inserted": {body: completions, edits: capAt(8),
			in: `{"model":"gpt-3.5-turbo-instruct","prompt":"hi"}`, want: `{"max_tokens":8,"model":"gpt-3.5-turbo-instruct","prompt":"hi"}`,
			applied: from(8, 0)},
		"completions, none, a cap above the default: would raise it": {body: completions, edits: capAt(1000),
			in: `{"model":"gpt-3.5-turbo-instruct","prompt":"hi"}`},
		"anthropic, lowered": {body: messages, edits: capAt(4096),
			in:      `{"model":"claude-sonnet-4-5","max_tokens":16000,"thinking":{"type":"enabled","budget_tokens":10000}}`,
			want:    `{"model":"claude-sonnet-4-5","max_tokens":4096,"thinking":{"type":"enabled","budget_tokens":10000}}`,
			applied: from(4096, 16000)},
		"anthropic, none: left for the API to refuse": {body: messages, edits: capAt(4096), in: `{"model":"claude-sonnet-4-5"}`},
		"anthropic, below":                            {body: messages, edits: capAt(4096), in: `{"max_tokens":1024}`},
		"embeddings: no output":                       {body: embeddings, edits: capAt(1), in: `{"model":"text-embedding-3-small","input":"hi"}`},
	})
}
