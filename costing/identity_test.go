package costing_test

import (
	"bytes"
	"encoding/json"
	"reflect"
	"strings"
	"testing"
	"unicode/utf8"

	"github.com/stretchr/testify/assert"

	"github.com/tollgate/tollgate/costing"
	"github.com/tollgate/tollgate/policy"
)

var (
	openaiRoute    = &policy.Route{Name: "openai", Provider: policy.ProviderOpenAI}
	anthropicRoute = &policy.Route{Name: "anthropic", Provider: policy.ProviderAnthropic}
	twilioRoute    = &policy.Route{Name: "sms", Provider: policy.ProviderTwilio}
)

func identify(route *policy.Route, method, path, body string) costing.Identity {
	return costing.Identify(route, method, path, costing.NewCall(path, "application/json", []byte(body), int64(len(body))))
}

// TestIdentifySameRequest: what a JSON body says, not how it is written,
// decides its hash.
func TestIdentifySameRequest(t *testing.T) {
	const chat = "/v1/chat/completions"
	base := identify(openaiRoute, "POST", chat, `{"model":"gpt-4o","temperature":0,"messages":[{"role":"user","content":"hi"}]}`)
	assert.Len(t, base.Hash, 64)
	assert.True(t, base.JSON && base.Whole && base.Pure && base.Deterministic)
	for name, body := range map[string]string{
		"keys reordered": `{"messages":[{"content":"hi","role":"user"}],"temperature":0,"model":"gpt-4o"}`,
		"white space":    " {\n  \"model\": \"gpt-4o\",\n  \"temperature\": 0,\n  \"messages\": [ {\"role\": \"user\", \"content\": \"hi\"} ]\n}\n",
		"escapes":        `{"model":"gpt-4o","temperature":0,"messages":[{"role":"user","content":"\u0068i"}]}`,
	} {
		assert.Equal(t, base.Hash, identify(openaiRoute, "POST", chat, body).Hash, name)
	}
	assert.Equal(t, base.Hash, identify(openaiRoute, "post", chat, `{"model":"gpt-4o","temperature":0,"messages":[{"role":"user","content":"hi"}]}`).Hash,
		"the method in any case")
}

// TestIdentifyDifferentRequests: anything the upstream reads differently
// hashes differently.
func TestIdentifyDifferentRequests(t *testing.T) {
	const chat, body = "/v1/chat/completions", `{"model":"gpt-4o","temperature":0,"messages":[{"role":"user","content":"hi"}]}`
	base := identify(openaiRoute, "POST", chat, body)
	for name, id := range map[string]costing.Identity{
		"another route":  identify(&policy.Route{Name: "openai-2", Provider: policy.ProviderOpenAI}, "POST", chat, body),
		"another method": identify(openaiRoute, "PUT", chat, body),
		"another path":   identify(openaiRoute, "POST", "/v1/completions", body),
		"another prompt": identify(openaiRoute, "POST", chat, `{"model":"gpt-4o","temperature":0,"messages":[{"role":"user","content":"hi!"}]}`),
		"number text":    identify(openaiRoute, "POST", chat, `{"model":"gpt-4o","temperature":0.0,"messages":[{"role":"user","content":"hi"}]}`),
		"array order":    identify(openaiRoute, "POST", chat, `{"model":"gpt-4o","temperature":0,"messages":[{"role":"user","content":"hi"},{"role":"user","content":"x"}]}`),
	} {
		assert.NotEqual(t, base.Hash, id.Hash, name)
	}
}

// TestIdentifyRawBodies: bodies with no one canonical form are hashed as
// their bytes, and are never pure.
func TestIdentifyRawBodies(t *testing.T) {
	tests := map[string]struct {
		route *policy.Route
		body  string
	}{
		"form":           {twilioRoute, "To=%2B15551234567&From=%2B15557654321&Body=hello"},
		"repeated key":   {openaiRoute, `{"model":"gpt-4o","temperature":0,"temperature":1,"messages":[]}`},
		"surrogate":      {openaiRoute, `{"model":"gpt-4o","temperature":0,"messages":[{"role":"user","content":"\ud800"}]}`},
		"invalid UTF-8":  {openaiRoute, "{\"model\":\"gpt-4o\",\"temperature\":0,\"x\":\"\xff\"}"},
		"trailing data":  {openaiRoute, `{"model":"gpt-4o","temperature":0} {}`},
		"not JSON":       {openaiRoute, `{"model":`},
		"deeply nested":  {openaiRoute, `{"model":"gpt-4o","temperature":0,"x":` + strings.Repeat("[", 600) + strings.Repeat("]", 600) + `}`},
		"a scalar again": {openaiRoute, `0 0`},
	}
	for name, tc := range tests {
		t.Run(name, func(t *testing.T) {
			id := identify(tc.route, "POST", "/v1/chat/completions", tc.body)
			assert.False(t, id.JSON)
			assert.False(t, id.Pure)
			assert.Len(t, id.Hash, 64)
			again := identify(tc.route, "POST", "/v1/chat/completions", tc.body)
			assert.Equal(t, id.Hash, again.Hash, "a pure function")
		})
	}
	// A body Envoy cut short is never whole, and keyed by its size too.
	body := `{"model":"gpt-4o","temperature":0,"messages":[`
	cut := costing.Identify(openaiRoute, "POST", "/v1/chat/completions", costing.NewCall("/v1/chat/completions", "", []byte(body), 1000))
	longer := costing.Identify(openaiRoute, "POST", "/v1/chat/completions", costing.NewCall("/v1/chat/completions", "", []byte(body), 2000))
	assert.False(t, cut.Whole || cut.Pure || cut.JSON)
	assert.NotEqual(t, cut.Hash, longer.Hash)
}

// TestIdentifyDeterministic: which calls the response cache may keep by
// default.
func TestIdentifyDeterministic(t *testing.T) {
	tests := map[string]struct {
		route               *policy.Route
		method, path, body  string
		pure, deterministic bool
	}{
		"chat at temperature 0":   {openaiRoute, "POST", "/v1/chat/completions", `{"model":"m","temperature":0,"messages":[]}`, true, true},
		"chat at temperature 0.0": {openaiRoute, "POST", "/v1/chat/completions", `{"model":"m","temperature":0.0,"messages":[]}`, true, true},
		"chat with a seed":        {openaiRoute, "POST", "/v1/chat/completions", `{"model":"m","seed":42,"temperature":0.7,"messages":[]}`, true, true},
		"chat at 0.7":             {openaiRoute, "POST", "/v1/chat/completions", `{"model":"m","temperature":0.7,"messages":[]}`, true, false},
		"chat by default":         {openaiRoute, "POST", "/v1/chat/completions", `{"model":"m","messages":[]}`, true, false},
		"chat with a null seed":   {openaiRoute, "POST", "/v1/chat/completions", `{"model":"m","seed":null,"messages":[]}`, true, false},
		"temperature as text":     {openaiRoute, "POST", "/v1/chat/completions", `{"model":"m","temperature":"0","messages":[]}`, true, false},
		"streamed chat":           {openaiRoute, "POST", "/v1/chat/completions", `{"model":"m","stream":true,"temperature":0,"messages":[]}`, true, true},
		"completions":             {openaiRoute, "POST", "/v1/completions", `{"model":"m","seed":1,"prompt":"x"}`, true, true},
		"embeddings":              {openaiRoute, "POST", "/v1/embeddings", `{"model":"m","input":"x"}`, true, true},
		"moderations":             {openaiRoute, "POST", "/v1/moderations", `{"input":"x"}`, true, true},
		"responses":               {openaiRoute, "POST", "/v1/responses", `{"model":"m","temperature":0,"input":"x"}`, true, true},
		"responses with state":    {openaiRoute, "POST", "/v1/responses", `{"model":"m","temperature":0,"previous_response_id":"r","input":"x"}`, false, false},
		"background responses":    {openaiRoute, "POST", "/v1/responses", `{"model":"m","temperature":0,"background":true,"input":"x"}`, false, false},
		"files":                   {openaiRoute, "POST", "/v1/files", `{"purpose":"batch"}`, false, false},
		"batches":                 {openaiRoute, "POST", "/v1/batches", `{"temperature":0}`, false, false},
		"a GET":                   {openaiRoute, "GET", "/v1/chat/completions", `{"model":"m","temperature":0}`, false, false},
		"anthropic at 0":          {anthropicRoute, "POST", "/v1/messages", `{"model":"c","temperature":0,"max_tokens":10,"messages":[]}`, true, true},
		"anthropic by default":    {anthropicRoute, "POST", "/v1/messages", `{"model":"c","max_tokens":10,"messages":[]}`, true, false},
		"anthropic seed":          {anthropicRoute, "POST", "/v1/messages", `{"model":"c","seed":1,"max_tokens":10,"messages":[]}`, true, false},
		"anthropic batches":       {anthropicRoute, "POST", "/v1/messages/batches", `{"requests":[]}`, false, false},
		"twilio":                  {twilioRoute, "POST", "/2010-04-01/Accounts/AC1/Messages.json", `{"temperature":0}`, false, false},
	}
	for name, tc := range tests {
		t.Run(name, func(t *testing.T) {
			id := identify(tc.route, tc.method, tc.path, tc.body)
			assert.Equal(t, tc.pure, id.Pure, "pure")
			assert.Equal(t, tc.deterministic, id.Deterministic, "deterministic")
		})
	}
}

func FuzzIdentify(f *testing.F) {
	f.Add(`{"model":"gpt-4o","temperature":0,"messages":[{"role":"user","content":"hi"}]}`)
	f.Add(`{"b":1,"a":[true,false,null,{"z":"\u00e9","y":-0.5e10}]}`)
	f.Add("To=%2B1&Body=hi")
	f.Fuzz(func(t *testing.T, body string) {
		a := identify(openaiRoute, "POST", "/v1/chat/completions", body)
		b := identify(openaiRoute, "POST", "/v1/chat/completions", body)
		if a != b || len(a.Hash) != 64 {
			t.Fatalf("not a pure function of the body: %+v %+v", a, b)
		}
	})
}

// TestCanonicalJSON: the canonical form of a few documents, exactly.
func TestCanonicalJSON(t *testing.T) {
	tests := map[string]struct{ in, want string }{
		"sorted, no space":   {` {"b": 1, "a": [ 2 , {"d":null, "c":true} ]} `, `{"a":[2,{"c":true,"d":null}],"b":1}`},
		"numbers as written": {`[0, 0.0, -0, 1e3, 1E3]`, `[0,0.0,-0,1e3,1E3]`},
		"escapes decoded":    {`["\u00e9", "\/", "a\"b", "\u003c", "\t"]`, `["é","/","a\"b","<","\u0009"]`},
		"literal kept":       {`["é<>&\u2028"]`, `["é<>&` + "\u2028" + `"]`},
		"empty":              {`{"a":{},"b":[]}`, `{"a":{},"b":[]}`},
		"a scalar":           {` "x" `, `"x"`},
	}
	for name, tc := range tests {
		t.Run(name, func(t *testing.T) {
			out, ok := costing.CanonicalJSON([]byte(tc.in))
			assert.True(t, ok)
			assert.Equal(t, tc.want, string(out))
		})
	}
	_, ok := costing.CanonicalJSON([]byte(`{"a":1,"\u0061":2}`))
	assert.False(t, ok, "a key given twice, however written")
}

// FuzzCanonicalJSON: a canonical form says what the body says, is its own
// canonical form, and is the same for the body written another way.
func FuzzCanonicalJSON(f *testing.F) {
	for _, s := range []string{`{"model":"gpt-4o","temperature":0,"messages":[{"role":"user","content":"hi"}]}`,
		`{"b":1,"a":[true,false,null,{"z":"\u00e9<","y":-0.5e10}]}`, `[1,[2,[3]]]`, `"\u0000\n"`, `{"a":{"a":{"a":1}}}`} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, body string) {
		out, ok := costing.CanonicalJSON([]byte(body))
		if !ok {
			if json.Valid([]byte(body)) && utf8.ValidString(body) && !strings.Contains(strings.ToLower(body), `\ud`) && plainDocument(t, body) {
				t.Fatalf("%q is valid JSON, no key repeated, not deep: it has a canonical form", body)
			}
			return
		}
		if !json.Valid([]byte(body)) {
			t.Fatalf("%q is not JSON, yet canonical as %q", body, out)
		}
		if !json.Valid(out) {
			t.Fatalf("not JSON: %q from %q", out, body)
		}
		var a, b any
		decode := func(s []byte, v *any) {
			d := json.NewDecoder(bytes.NewReader(s))
			d.UseNumber()
			if err := d.Decode(v); err != nil {
				t.Fatalf("decode %q: %v", s, err)
			}
		}
		decode([]byte(body), &a)
		decode(out, &b)
		if !reflect.DeepEqual(a, b) {
			t.Fatalf("%q says %#v, its canonical form %q says %#v", body, a, out, b)
		}
		again, ok := costing.CanonicalJSON(out)
		if !ok || !bytes.Equal(again, out) {
			t.Fatalf("not its own canonical form: %q → %q", out, again)
		}
		re, err := json.MarshalIndent(a, " ", "\t") // sorted keys, escaped <>&, other space
		if err != nil {
			t.Fatal(err)
		}
		if other, ok := costing.CanonicalJSON(re); ok && !bytes.Equal(other, out) {
			t.Fatalf("%q and %q, one document, have two forms: %q, %q", body, re, out, other)
		}
	})
}

// plainDocument reports whether a valid JSON document repeats no key in
// any object and nests at most 500 deep (encoding/json's tokens, the
// reference).
func plainDocument(t *testing.T, body string) bool {
	d := json.NewDecoder(strings.NewReader(body))
	type frame struct {
		object bool
		keys   map[string]bool
		key    bool // the next string is a key
	}
	var stack []*frame
	for {
		tok, err := d.Token()
		if err != nil {
			return len(stack) == 0
		}
		top := (*frame)(nil)
		if len(stack) > 0 {
			top = stack[len(stack)-1]
		}
		isKey := top != nil && top.object && top.key
		if top != nil && top.object {
			top.key = !top.key
		}
		switch v := tok.(type) {
		case json.Delim:
			switch v {
			case '{', '[':
				if len(stack) >= 500 {
					return false
				}
				stack = append(stack, &frame{object: v == '{', keys: map[string]bool{}, key: true})
			default:
				stack = stack[:len(stack)-1]
				if len(stack) > 0 && stack[len(stack)-1].object {
					stack[len(stack)-1].key = true
				}
			}
		case string:
			if isKey {
				if top.keys[v] {
					return false
				}
				top.keys[v] = true
			}
		}
	}
}

// BenchmarkIdentify: the identity of a 4 KB chat body (canonical JSON and
// its SHA-256).
func BenchmarkIdentify(b *testing.B) {
	body := []byte(`{"model":"gpt-4o","temperature":0,"max_tokens":256,"messages":[{"role":"system","content":"Be brief."},{"role":"user","content":"` +
		strings.Repeat("Summarise the quarterly report in three bullet points. ", 72) + `"}]}`)
	call := costing.NewCall("/v1/chat/completions", "application/json", body, int64(len(body)))
	b.ReportAllocs()
	b.SetBytes(int64(len(body)))
	for b.Loop() {
		costing.Identify(openaiRoute, "POST", "/v1/chat/completions", call)
	}
}
