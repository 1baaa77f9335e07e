package decisionlog

import (
	"encoding/json"
	"fmt"
	"strings"

	"github.com/tollgate/tollgate/admission"
	"github.com/tollgate/tollgate/costing"
	"github.com/tollgate/tollgate/policy"
)

// The log keeps no request body, so a replay builds one that the
// estimator reads as the recorded call: the requested model, the output
// allowance, and a prompt of as many tokens as were counted. An OpenAI or
// Anthropic call is rebuilt that way (chat, responses or messages); any
// other call goes with no body (one request, the route's default units).

// request rebuilds e's call for set.
func request(e *Entry, set *policy.Set, est costing.Estimator) *admission.Request {
	r := &admission.Request{ID: fmt.Sprintf("line-%d", e.N), Client: e.Client, Method: e.Method, Host: e.Host, Path: e.Path,
		Headers: map[string]string{}}
	if e.Class != "" && set.Queue.PriorityHeader != "" {
		r.Headers[strings.ToLower(set.Queue.PriorityHeader)] = e.Class
	}
	if r.Method == "" {
		r.Method = "POST"
	}
	model := e.Requested
	if model == "" {
		model = e.Model
	}
	p := policy.Provider(e.Provider)
	if model == "" || (p != policy.ProviderOpenAI && p != policy.ProviderAnthropic) {
		return r
	}
	r.Headers["content-type"] = "application/json"
	words := max(e.InputTokens-7, 0) // the chat format's overhead, corrected below
	r.Body = body(p, e.Path, model, e.OutputTokens, words)
	// Count what the estimator makes of it and correct the prompt once.
	if route := set.Route(e.Route); route != nil && e.InputTokens > 0 {
		got := est.Estimate(set, route, costing.NewCall(e.Path, "application/json", r.Body, int64(len(r.Body)))).InputTokens
		if got != e.InputTokens && got > 0 {
			r.Body = body(p, e.Path, model, e.OutputTokens, max(words+e.InputTokens-got, 0))
		}
	}
	r.BodySize = int64(len(r.Body))
	return r
}

// body is a request of provider p to path asking model for out output
// tokens (none when 0) with a prompt of n one-token words.
func body(p policy.Provider, path, model string, out, n int64) []byte {
	prompt := strings.TrimPrefix(strings.Repeat(" a", int(n)), " ")
	m := map[string]any{"model": model}
	switch {
	case p == policy.ProviderOpenAI && strings.HasSuffix(path, "/responses"):
		m["input"] = prompt
		if out > 0 {
			m["max_output_tokens"] = out
		}
	default:
		m["messages"] = []map[string]string{{"role": "user", "content": prompt}}
		if out > 0 {
			m["max_tokens"] = out
		}
	}
	b, _ := json.Marshal(m) // maps of strings and numbers always marshal
	return b
}

// usageBody is a response of provider p that reports in and out tokens.
func usageBody(p policy.Provider, in, out int64) []byte {
	if p == policy.ProviderAnthropic {
		return fmt.Appendf(nil, `{"type":"message","usage":{"input_tokens":%d,"output_tokens":%d}}`, in, out)
	}
	return fmt.Appendf(nil, `{"object":"chat.completion","usage":{"prompt_tokens":%d,"completion_tokens":%d,"total_tokens":%d}}`, in, out, in+out)
}
