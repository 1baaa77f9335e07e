package fakeapi

import (
	"encoding/json"
	"io"
	"net/http"
	"strconv"
	"strings"
	"time"
)

// openAIChatRequest is what the fake reads of a chat completion.
type openAIChatRequest struct {
	Model         string         `json:"model"`
	Messages      []chatMessage  `json:"messages"`
	MaxTokens     int64          `json:"max_tokens"`
	MaxCompletion int64          `json:"max_completion_tokens"`
	Stream        bool           `json:"stream"`
	StreamOptions *streamOptions `json:"stream_options"`
}

type streamOptions struct {
	IncludeUsage bool `json:"include_usage"`
}

type chatMessage struct {
	Role    string          `json:"role"`
	Content json.RawMessage `json:"content"`
}

// TextLen is the number of bytes of text in a message content: a string,
// or an array of parts whose "text" fields count.
func TextLen(content json.RawMessage) int {
	var s string
	if json.Unmarshal(content, &s) == nil {
		return len(s)
	}
	var parts []struct {
		Text string `json:"text"`
	}
	if json.Unmarshal(content, &parts) == nil {
		n := 0
		for _, p := range parts {
			n += len(p.Text)
		}
		return n
	}
	return 0
}

// OpenAIUsage is the usage object of OpenAI's chat completions.
type OpenAIUsage struct {
	PromptTokens        int64 `json:"prompt_tokens"`
	CompletionTokens    int64 `json:"completion_tokens"`
	TotalTokens         int64 `json:"total_tokens"`
	PromptTokensDetails struct {
		CachedTokens int64 `json:"cached_tokens"`
	} `json:"prompt_tokens_details"`
	CompletionTokensDetails struct {
		ReasoningTokens int64 `json:"reasoning_tokens"`
	} `json:"completion_tokens_details"`
}

// openAIUsage is the usage of a chat call: prompt_tokens is the number of
// bytes of text in its messages; completion_tokens is
// min(max_tokens, len(Reply)); under ScenarioCached half the prompt
// (rounded down) is cached.
func openAIUsage(req openAIChatRequest, sc scenario) (OpenAIUsage, int) {
	var u OpenAIUsage
	for _, m := range req.Messages {
		u.PromptTokens += int64(TextLen(m.Content))
	}
	maxTok := req.MaxCompletion
	if maxTok == 0 {
		maxTok = req.MaxTokens
	}
	n := replyTokens(maxTok)
	u.CompletionTokens = int64(n)
	u.TotalTokens = u.PromptTokens + u.CompletionTokens
	if sc[ScenarioCached] {
		u.PromptTokensDetails.CachedTokens = u.PromptTokens / 2
	}
	return u, n
}

func openAIRateLimitHeaders(h http.Header) {
	h.Set("x-ratelimit-limit-requests", "10000")
	h.Set("x-ratelimit-remaining-requests", "9999")
	h.Set("x-ratelimit-reset-requests", "6ms")
	h.Set("x-ratelimit-limit-tokens", "2000000")
	h.Set("x-ratelimit-remaining-tokens", "1999000")
	h.Set("x-ratelimit-reset-tokens", "30ms")
}

func (s *Server) openAI429(w http.ResponseWriter) {
	h := w.Header()
	openAIRateLimitHeaders(h)
	h.Set("x-ratelimit-remaining-requests", "0")
	h.Set("x-ratelimit-reset-requests", s.cfg.RetryAfter.String())
	h.Set("retry-after", s.retryAfter())
	h.Set("x-request-id", "req_fake_429")
	writeJSON(w, http.StatusTooManyRequests, map[string]any{"error": map[string]any{
		"message": "Rate limit reached for requests (fakeapi).", "type": "requests", "param": nil, "code": "rate_limit_exceeded"}})
}

func openAIBadRequest(w http.ResponseWriter, msg string) {
	writeJSON(w, http.StatusBadRequest, map[string]any{"error": map[string]any{
		"message": msg, "type": "invalid_request_error", "param": nil, "code": nil}})
}

func (s *Server) openAIChat(w http.ResponseWriter, r *http.Request) {
	sc := s.scenario(r)
	if sc[Scenario429] {
		s.openAI429(w)
		return
	}
	var req openAIChatRequest
	if err := json.NewDecoder(r.Body).Decode(&req); err != nil {
		openAIBadRequest(w, "body: "+err.Error())
		return
	}
	usage, n := openAIUsage(req, sc)
	openAIRateLimitHeaders(w.Header())
	w.Header().Set("x-request-id", "req_fake_"+strconv.FormatInt(time.Now().UnixNano(), 36))
	id, created := "chatcmpl-fake", time.Now().Unix()
	if !req.Stream {
		body, _ := json.Marshal(map[string]any{
			"id": id, "object": "chat.completion", "created": created, "model": req.Model,
			"choices": []any{map[string]any{"index": 0, "finish_reason": finishReason(n),
				"message": map[string]any{"role": "assistant", "content": strings.Join(Reply[:n], ""), "refusal": nil}}},
			"usage": usage,
		})
		writeBody(w, r, sc, http.StatusOK, "application/json", body)
		return
	}
	// OpenAI's stream: with include_usage every chunk carries
	// "usage": null and a last chunk with empty choices carries the usage;
	// without it no chunk has a usage field.
	include := req.StreamOptions != nil && req.StreamOptions.IncludeUsage
	w.Header().Set("content-type", "text/event-stream; charset=utf-8")
	w.Header().Set("cache-control", "no-cache")
	out, flush, done := encoder(w, r, sc)
	w.WriteHeader(http.StatusOK)
	send := func(choices []any, usage any, withUsage bool) {
		ch := map[string]any{"id": id, "object": "chat.completion.chunk", "created": created, "model": req.Model,
			"system_fingerprint": "fp_fake", "choices": choices}
		if withUsage {
			ch["usage"] = usage
		}
		b, _ := json.Marshal(ch)
		s.writeEvent(out, flush, sc, append(append([]byte("data: "), b...), '\n', '\n'))
		if sc[ScenarioSlow] {
			time.Sleep(s.cfg.SlowDelay)
		}
	}
	delta := func(d map[string]any, finish any) []any {
		return []any{map[string]any{"index": 0, "delta": d, "logprobs": nil, "finish_reason": finish}}
	}
	send(delta(map[string]any{"role": "assistant", "content": "", "refusal": nil}, nil), nil, include)
	for _, p := range Reply[:n] {
		send(delta(map[string]any{"content": p}, nil), nil, include)
	}
	send(delta(map[string]any{}, finishReason(n)), nil, include)
	if include {
		send([]any{}, usage, true)
	}
	_, _ = out.Write([]byte("data: [DONE]\n\n"))
	done()
}

func finishReason(n int) string {
	if n < len(Reply) {
		return "length"
	}
	return "stop"
}

// openAIEmbeddings answers with prompt_tokens = the bytes of text in
// input (a string or an array of strings).
func (s *Server) openAIEmbeddings(w http.ResponseWriter, r *http.Request) {
	sc := s.scenario(r)
	if sc[Scenario429] {
		s.openAI429(w)
		return
	}
	var req struct {
		Model string          `json:"model"`
		Input json.RawMessage `json:"input"`
	}
	if err := json.NewDecoder(r.Body).Decode(&req); err != nil {
		openAIBadRequest(w, "body: "+err.Error())
		return
	}
	var inputs []string
	var one string
	if json.Unmarshal(req.Input, &one) == nil {
		inputs = []string{one}
	} else if err := json.Unmarshal(req.Input, &inputs); err != nil {
		openAIBadRequest(w, "input must be a string or an array of strings")
		return
	}
	var tokens int
	data := make([]any, len(inputs))
	for i, in := range inputs {
		tokens += len(in)
		data[i] = map[string]any{"object": "embedding", "index": i, "embedding": []float64{0.1, 0.2, 0.3}}
	}
	openAIRateLimitHeaders(w.Header())
	body, _ := json.Marshal(map[string]any{"object": "list", "data": data, "model": req.Model,
		"usage": map[string]any{"prompt_tokens": tokens, "total_tokens": tokens}})
	writeBody(w, r, sc, http.StatusOK, "application/json", body)
}

// writeEvent writes one server-sent event and flushes it; under
// ScenarioSplit in two halves, flushed SlowDelay/2 apart.
func (s *Server) writeEvent(out io.Writer, flush func(), sc scenario, ev []byte) {
	if sc[ScenarioSplit] {
		half := len(ev) / 2
		_, _ = out.Write(ev[:half])
		flush()
		time.Sleep(s.cfg.SlowDelay / 2)
		ev = ev[half:]
	}
	_, _ = out.Write(ev)
	flush()
}
