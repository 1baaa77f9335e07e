package fakeapi

import (
	"encoding/json"
	"net/http"
	"strings"
	"time"
)

// AnthropicUsage is the usage object of Anthropic's messages.
type AnthropicUsage struct {
	InputTokens              int64 `json:"input_tokens"`
	OutputTokens             int64 `json:"output_tokens"`
	CacheCreationInputTokens int64 `json:"cache_creation_input_tokens"`
	CacheReadInputTokens     int64 `json:"cache_read_input_tokens"`
}

func anthropicRateLimitHeaders(h http.Header) {
	reset := time.Now().Add(time.Minute).UTC().Format(time.RFC3339)
	for _, k := range []string{"requests", "tokens", "input-tokens", "output-tokens"} {
		h.Set("anthropic-ratelimit-"+k+"-limit", "4000")
		h.Set("anthropic-ratelimit-"+k+"-remaining", "3999")
		h.Set("anthropic-ratelimit-"+k+"-reset", reset)
	}
}

func anthropicError(w http.ResponseWriter, status int, typ, msg string) {
	w.Header().Set("request-id", "req_fake_error")
	writeJSON(w, status, map[string]any{"type": "error", "error": map[string]any{"type": typ, "message": msg}})
}

// anthropicMessages answers POST /v1/messages: input_tokens is the bytes
// of text in the messages and the system prompt, output_tokens
// min(max_tokens, len(Reply)); under ScenarioCached half the input
// (rounded down) is read from the cache and not counted in input_tokens.
func (s *Server) anthropicMessages(w http.ResponseWriter, r *http.Request) {
	sc := s.scenario(r)
	if sc[Scenario429] {
		anthropicRateLimitHeaders(w.Header())
		w.Header().Set("anthropic-ratelimit-requests-remaining", "0")
		w.Header().Set("retry-after", s.retryAfter())
		anthropicError(w, http.StatusTooManyRequests, "rate_limit_error", "Number of requests has exceeded your rate limit (fakeapi).")
		return
	}
	var req struct {
		Model     string          `json:"model"`
		MaxTokens int64           `json:"max_tokens"`
		System    json.RawMessage `json:"system"`
		Messages  []chatMessage   `json:"messages"`
		Stream    bool            `json:"stream"`
	}
	if err := json.NewDecoder(r.Body).Decode(&req); err != nil {
		anthropicError(w, http.StatusBadRequest, "invalid_request_error", "body: "+err.Error())
		return
	}
	var u AnthropicUsage
	if len(req.System) > 0 {
		u.InputTokens += int64(TextLen(req.System))
	}
	for _, m := range req.Messages {
		u.InputTokens += int64(TextLen(m.Content))
	}
	if sc[ScenarioCached] {
		u.CacheReadInputTokens = u.InputTokens / 2
		u.InputTokens -= u.CacheReadInputTokens
	}
	n := replyTokens(req.MaxTokens)
	u.OutputTokens = int64(n)
	stop := "end_turn"
	if n < len(Reply) {
		stop = "max_tokens"
	}
	anthropicRateLimitHeaders(w.Header())
	w.Header().Set("request-id", "req_fake_"+time.Now().Format("150405.000000"))
	id := "msg_fake"
	if !req.Stream {
		body, _ := json.Marshal(map[string]any{"id": id, "type": "message", "role": "assistant", "model": req.Model,
			"content":     []any{map[string]any{"type": "text", "text": strings.Join(Reply[:n], "")}},
			"stop_reason": stop, "stop_sequence": nil, "usage": u})
		writeBody(w, r, sc, http.StatusOK, "application/json", body)
		return
	}
	w.Header().Set("content-type", "text/event-stream; charset=utf-8")
	w.Header().Set("cache-control", "no-cache")
	out, flush, done := encoder(w, r, sc)
	w.WriteHeader(http.StatusOK)
	event := func(name string, v any) {
		b, _ := json.Marshal(v)
		s.writeEvent(out, flush, sc, []byte("event: "+name+"\ndata: "+string(b)+"\n\n"))
		if sc[ScenarioSlow] {
			time.Sleep(s.cfg.SlowDelay)
		}
	}
	start := u
	start.OutputTokens = 1
	event("message_start", map[string]any{"type": "message_start", "message": map[string]any{"id": id, "type": "message",
		"role": "assistant", "model": req.Model, "content": []any{}, "stop_reason": nil, "stop_sequence": nil, "usage": start}})
	event("content_block_start", map[string]any{"type": "content_block_start", "index": 0, "content_block": map[string]any{"type": "text", "text": ""}})
	event("ping", map[string]any{"type": "ping"})
	for _, p := range Reply[:n] {
		event("content_block_delta", map[string]any{"type": "content_block_delta", "index": 0, "delta": map[string]any{"type": "text_delta", "text": p}})
	}
	event("content_block_stop", map[string]any{"type": "content_block_stop", "index": 0})
	event("message_delta", map[string]any{"type": "message_delta", "delta": map[string]any{"stop_reason": stop, "stop_sequence": nil},
		"usage": map[string]any{"output_tokens": u.OutputTokens}})
	event("message_stop", map[string]any{"type": "message_stop"})
	done()
}
