package costing_test

import (
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/tollgate/tollgate/costing"
	"github.com/tollgate/tollgate/policy"
)

// routedPolicy has routes told apart by model, so routing reads the body.
const routedPolicy = `
pools:
  tpm: {unit: token, capacity: 1000000, refill_per_second: 1000, price: "0.03/1K"}
  rpm: {unit: request, capacity: 100, refill_per_second: 1}
models:
  gpt-4o: {input: "2.50/1M", output: "10/1M", max_output_tokens: 500}
routes:
  mini:      {host: api.openai.com, path_prefix: /v1/, provider: openai, models: ["gpt-4o-mini*"], pools: [tpm]}
  openai:    {host: api.openai.com, path_prefix: /v1/, provider: openai, pools: [tpm, rpm], default_max_tokens: 100}
  claude:    {host: api.anthropic.com, path_prefix: /v1/, provider: anthropic, models: ["claude-*"], pools: [tpm]}
  anthropic: {host: api.anthropic.com, path_prefix: /v1/, provider: anthropic, pools: [rpm]}
`

func routedSet(tb testing.TB) *policy.Set {
	tb.Helper()
	set, err := policy.Compile(policy.Source{Name: "routed.yaml", Data: []byte(routedPolicy)})
	require.NoError(tb, err)
	return set
}

// routeCall is what authz's matchRoute does with a Call: read the model
// only when some route tells models apart.
func routeCall(set *policy.Set, host string, c *costing.Call) *policy.Route {
	var model string
	if set.RouteWantsModel(host, c.Path) {
		model = c.Model()
	}
	return set.MatchRoute(host, c.Path, model)
}

func TestCallDecodesOnce(t *testing.T) {
	set := routedSet(t)
	chat, err := os.ReadFile(filepath.Join(bodiesDir, "openai-chat-1k.json"))
	require.NoError(t, err)
	claude := bodies(t, "anthropic")["messages-tools.json"]
	tok := tokenizer(t)
	tests := map[string]struct {
		host, path string
		body       []byte
		size       int64 // 0: len(body)
		tok        *costing.Tokenizer
		route      string
		exact      bool
		decodes    int
	}{
		"chat, counted exactly":          {"api.openai.com", "/v1/chat/completions", chat, 0, tok, "openai", true, 1},
		"chat, no tokenizer: by size":    {"api.openai.com", "/v1/chat/completions", chat, 0, nil, "openai", false, 1},
		"chat, truncated: by size":       {"api.openai.com", "/v1/chat/completions", chat[:600], int64(len(chat)), tok, "openai", false, 1},
		"anthropic, counted":             {"api.anthropic.com", "/v1/messages", claude, 0, tok, "claude", true, 1},
		"anthropic, no tokenizer":        {"api.anthropic.com", "/v1/messages", claude, 0, nil, "claude", false, 1},
		"a repeated key: decoded whole":  {"api.openai.com", "/v1/chat/completions", []byte(`{"model":"gpt-4o-mini","model":"gpt-4o-mini","messages":[]}`), 0, tok, "mini", true, 3},
		"not JSON: one failed decode":    {"api.openai.com", "/v1/chat/completions", []byte(`{"model":`), 0, tok, "openai", false, 1},
		"bad messages: decoded whole":    {"api.openai.com", "/v1/chat/completions", []byte(`{"model":"gpt-4o","messages":[5]}`), 0, tok, "openai", false, 2},
		"unrouted path: decoded for est": {"api.openai.com", "/v1/embeddings", []byte(`{"model":"gpt-4o","input":"hi"}`), 0, tok, "openai", true, 1},
	}
	for name, tc := range tests {
		t.Run(name, func(t *testing.T) {
			size := tc.size
			if size == 0 {
				size = int64(len(tc.body))
			}
			est := costing.Estimator{Tok: tc.tok}
			c := costing.NewCall(tc.path, "application/json", tc.body, size)
			r := routeCall(set, tc.host, &c)
			require.NotNil(t, r)
			assert.Equal(t, tc.route, r.Name)
			got := est.Estimate(set, r, c)
			assert.Equal(t, tc.exact, got.Exact)
			assert.Equal(t, tc.decodes, costing.WholeDecodes(&c), "whole-body decodes")

			// The same as routing by ParseLLMBody and estimating a Call
			// literal, the way callers did before NewCall.
			old, _ := costing.ParseLLMBody(tc.body)
			assert.Equal(t, set.MatchRoute(tc.host, tc.path, old.Model), r)
			assert.Equal(t, est.Estimate(set, r, costing.Call{Path: tc.path, ContentType: "application/json", Body: tc.body, BodySize: size}), got)
		})
	}
}

func TestCallLiteral(t *testing.T) {
	body := []byte(`{"model":"gpt-4o","messages":[{"role":"user","content":"hi"}]}`)
	c := costing.Call{Path: "/v1/chat/completions", Body: body, BodySize: int64(len(body))}
	assert.Equal(t, "gpt-4o", c.Model(), "a literal attaches its decode on first use")
	assert.Equal(t, "gpt-4o", c.Model())
	assert.Equal(t, 1, costing.WholeDecodes(&c))

	c.Body = []byte(`{"model":"gpt-4.1"}`)
	assert.Equal(t, "gpt-4.1", c.Model(), "a new Body is decoded afresh")

	var zero costing.Call
	assert.Empty(t, zero.Model())
}

func TestBodyFieldsCoverParsers(t *testing.T) {
	for kept, parsers := range costing.ParserFields() {
		for name, fields := range parsers {
			assert.Subset(t, strings.Fields(kept), fields, "parsedBody does not keep every field of %s", name)
		}
	}
}

// parseCases are bodies that probe where decoding field by field could
// part from decoding whole: type errors, keys in other cases, repeated
// keys, escapes, invalid UTF-8, documents that are not objects.
var parseCases = map[string]string{
	"chat":                   `{"model":"gpt-4o","messages":[{"role":"user","content":"hi","name":"bob"}],"max_tokens":7,"n":2}`,
	"messages not an array":  `{"model":"gpt-4o","messages":5}`,
	"role not a string":      `{"model":"gpt-4o","messages":[{"role":5,"content":"x"}]}`,
	"name not a string":      `{"model":"claude-x","messages":[{"role":"user","name":5,"content":"x"}]}`,
	"model not a string":     `{"model":5,"messages":[]}`,
	"keys in other cases":    `{"MODEL":"gpt-4o","Messages":[{"ROLE":"user","Content":"hi"}],"Max_Tokens":3}`,
	"repeated, bad first":    `{"messages":5,"messages":[{"role":"user","content":"x"}]}`,
	"repeated under a fold":  `{"model":"a","Model":"gpt-4o"}`,
	"repeated in a message":  `{"messages":[{"role":5,"role":"user"}]}`,
	"messages given twice":   `{"messages":[{"role":"a","name":5}],"messages":[{"content":"x"}]}`,
	"a message not object":   `{"messages":[{"role":"user","content":"x"},5]}`,
	"a null message":         `{"messages":[null,{"role":"user","content":"x"}]}`,
	"tool_calls wrong":       `{"messages":[{"tool_calls":[{"function":{"name":5}}]}]}`,
	"function_call wrong":    `{"messages":[{"function_call":{"arguments":[]}}]}`,
	"messages an object":     `{"model":"claude-x","messages":{"role":"user"}}`,
	"escapes":                `{"model":"gpt-\u0034o","messages":[{"role":"us\u0065r","content":"a\nb\"c"}]}`,
	"invalid UTF-8":          "{\"model\":\"gpt-4o\xff\",\"messages\":[{\"role\":\"user\",\"content\":\"h\xffi\"}]}",
	"null":                   `null`,
	"array":                  `[]`,
	"string":                 `"x"`,
	"truncated":              `{"model":"gpt-4o","messages":[`,
	"trailing data":          `{"model":"gpt-4o"} x`,
	"blank before":           " \n\t{\"model\":\"gpt-4o\",\"input\":\"hi\"}",
	"max_tokens a string":    `{"model":"gpt-4o","max_tokens":"10"}`,
	"max_tokens a fraction":  `{"model":"gpt-4o","max_tokens":1.5}`,
	"max_tokens an exponent": `{"model":"gpt-4o","max_tokens":1e3,"max_output_tokens":2}`,
	"max_tokens null":        `{"model":"gpt-4o","max_tokens":null,"max_completion_tokens":-1,"max_output_tokens":4}`,
	"stream a string":        `{"model":"gpt-4o","stream":"true"}`,
	"stream options":         `{"stream":true,"stream_options":{"include_usage":true}}`,
	"text format schema":     `{"input":"x","text":{"format":{"type":"json_schema","schema":{"a":1}}}}`,
	"text not an object":     `{"input":"x","text":5}`,
	"prompts and ids":        `{"model":"davinci-002","prompt":["a",[1,2]],"suffix":"z","best_of":3}`,
	"instructions only":      `{"instructions":"be brief","input":[{"type":"message","role":"user","content":"x"}]}`,
	"tools and functions":    `{"tools":[{"type":"function","function":{"name":"f"}}],"functions":[{"name":"g"}],"response_format":{"type":"json_schema","json_schema":{"name":"s"}}}`,
	"anthropic blocks":       `{"model":"claude-x","system":[{"type":"text","text":"x"}],"messages":[{"role":"user","content":[{"type":"tool_result","content":"y"}]}],"max_tokens":9}`,
	"system not text":        `{"system":5,"messages":[]}`,
	"unknown fields":         `{"model":"gpt-4o","temperature":"hot","user":{"id":1}}`,
}

func TestParseOnceMatchesWhole(t *testing.T) {
	tok := tokenizer(t)
	check := func(t *testing.T, body []byte) {
		for _, p := range append(openAIPaths, "/v1/unknown") {
			sameParse(t, tok, p, body, true)
		}
	}
	for name, body := range parseCases {
		t.Run(name, func(t *testing.T) { check(t, []byte(body)) })
	}
	for _, provider := range []string{"openai", "anthropic"} {
		for file, body := range bodies(t, provider) {
			t.Run(provider+"/"+file, func(t *testing.T) { check(t, body) })
		}
	}
}

// sameParse requires the one-decode parsers to answer as the whole-body
// ones do: the same result, and an error of the same kind; with sameText,
// the same error message too (a body with several wrong fields may name
// another first, so the fuzzer does not ask for it).
func sameParse(t *testing.T, tok *costing.Tokenizer, path string, body []byte, sameText bool) {
	t.Helper()
	o, oErr := costing.ParseOpenAI(path, body, tok)
	ow, owErr := costing.ParseOpenAIWhole(path, body, tok)
	require.Equal(t, ow, o, "%s %q", path, body)
	sameErr(t, owErr, oErr, body, sameText)

	a, aErr := costing.ParseAnthropic(body, tok)
	aw, awErr := costing.ParseAnthropicWhole(body, tok)
	require.Equal(t, aw, a, "%q", body)
	sameErr(t, awErr, aErr, body, sameText)

	l, lErr := costing.LLMBodyOnce(body)
	lw, lwErr := costing.ParseLLMBody(body)
	require.Equal(t, lw, l, "%q", body)
	require.Equal(t, lwErr == nil, lErr == nil, "%q: %v, want %v", body, lErr, lwErr)
	if sameText && lwErr != nil {
		require.EqualError(t, lErr, lwErr.Error(), "%q", body)
	}
}

func sameErr(t *testing.T, want, got error, body []byte, sameText bool) {
	t.Helper()
	require.Equal(t, want == nil, got == nil, "%q: %v, want %v", body, got, want)
	if sameText && want != nil {
		require.EqualError(t, got, want.Error(), "%q", body)
	}
	for _, kind := range []error{costing.ErrMalformedBody, costing.ErrUnknownEndpoint, costing.ErrNilTokenizer} {
		require.Equal(t, errors.Is(want, kind), errors.Is(got, kind), "%q: %v, want %v", body, got, want)
	}
}
