package e2e

import (
	"encoding/json"
	"strconv"
	"strings"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/tollgate/tollgate/internal/fakeapi"
)

// Prices of testdata/policy.yaml in nano-dollars per token.
const (
	nanoInput, nanoOutput, nanoCached       = 100, 400, 25    // gpt-4.1-nano
	claudeInput, claudeOutput, claudeCached = 1000, 5000, 100 // claude-haiku-4-5
	embedInput                              = 20              // text-embedding-3-small
)

// The fake provider's usage for chatMessages: prompt_tokens is the bytes
// of message text ("Be brief." 9 + "Say hello." 10), completion_tokens
// min(max_tokens, 6).
const promptTokens, replyTokens = 19, 6

var chatMessages = []map[string]string{{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Say hello."}}

const wholeReply = "Hello from the fake upstream."

func chatParams(model string) map[string]any {
	return map[string]any{"model": model, "messages": chatMessages, "max_tokens": 100}
}

func claudeParams() map[string]any {
	return map[string]any{"model": "claude-haiku-4-5", "max_tokens": 100, "system": "Be brief.",
		"messages": []map[string]string{{"role": "user", "content": "Say hello."}}}
}

// TestSDKs runs each admitted case through the whole path, one after the
// other, on one rig; each case has its own client, so its spend stands
// alone. Refusals are in refusals_test.go.
func TestSDKs(t *testing.T) {
	t.Parallel()
	r := newRig(t)

	t.Run("openai json", func(t *testing.T) {
		before := r.calls()
		res := run(t, sdkCall{SDK: "openai", Op: "chat", BaseURL: r.openai + "/v1", Client: "e2e-openai-json", Params: chatParams("gpt-4.1-nano")})
		require.True(t, res.OK, describe(res.Error))
		assert.Equal(t, wholeReply, res.Text)
		var got struct{ Usage fakeapi.OpenAIUsage }
		require.NoError(t, json.Unmarshal(res.Result, &got))
		assert.EqualValues(t, promptTokens, got.Usage.PromptTokens)
		assert.EqualValues(t, replyTokens, got.Usage.CompletionTokens)
		require.Len(t, res.Attempts, 1)
		assert.Equal(t, "0", res.Attempts[0].RetryCount)
		assert.Equal(t, before+1, r.calls())

		seen := r.last(t)
		assert.Equal(t, "api.openai.com", seen.Host, "the route's host rewrite")
		assert.Equal(t, "Bearer sk-e2e-test", seen.Headers["authorization"], "credentials reach the provider")
		assert.NotContains(t, seen.Headers, "x-tollgate-client", "the router strips Tollgate's headers")
		assert.NotContains(t, seen.Headers, "x-tollgate-reservation")
		t.Logf("the SDK's accept-encoding as the provider got it: %q", seen.Headers["accept-encoding"])

		assert.Equal(t, nanos(promptTokens, nanoInput, replyTokens, nanoOutput), r.settled(t, "e2e-openai-json"),
			"spend is the usage at the model's prices, to the nano-dollar")
	})

	t.Run("openai json with cached tokens", func(t *testing.T) {
		res := run(t, sdkCall{SDK: "openai", Op: "chat", BaseURL: r.openai + "/v1", Client: "e2e-openai-cached",
			Params: chatParams("gpt-4.1-nano"), Headers: map[string]string{fakeapi.ScenarioHeader: fakeapi.ScenarioCached}})
		require.True(t, res.OK, describe(res.Error))
		var got struct{ Usage fakeapi.OpenAIUsage }
		require.NoError(t, json.Unmarshal(res.Result, &got))
		cached := got.Usage.PromptTokensDetails.CachedTokens
		require.EqualValues(t, promptTokens/2, cached)
		// OpenAI's prompt_tokens includes the cached ones.
		assert.Equal(t, nanos(promptTokens-cached, nanoInput, cached, nanoCached, replyTokens, nanoOutput), r.settled(t, "e2e-openai-cached"))
	})

	t.Run("openai stream without include_usage", func(t *testing.T) {
		// Tollgate asks the provider for usage (include_usage) and must
		// hand the worker the stream it asked for.
		res := run(t, sdkCall{SDK: "openai", Op: "chat-stream", BaseURL: r.openai + "/v1", Client: "e2e-openai-stream",
			Params: chatParams("gpt-4.1-nano"), Headers: map[string]string{fakeapi.ScenarioHeader: fakeapi.ScenarioSlow}})
		require.True(t, res.OK, describe(res.Error))
		assert.Equal(t, wholeReply, res.Text)
		assert.Zero(t, res.TypicalCodeErrors, "no chunk without choices reaches the worker")
		require.Len(t, res.Chunks, 2+replyTokens, "role, six words, finish: the usage chunk Tollgate asked for is removed")
		usageFields := 0
		for i, c := range res.Chunks {
			var ch map[string]json.RawMessage
			require.NoError(t, json.Unmarshal(c.Data, &ch))
			assert.NotEqual(t, "[]", string(ch["choices"]), "chunk %d", i)
			if u, ok := ch["usage"]; ok {
				usageFields++
				assert.Equal(t, "null", string(u), "chunk %d", i)
			}
		}
		// The worker did not ask for include_usage, so no chunk should
		// carry a usage field; today each carries "usage": null.
		fixedNow(t, "#10 usage: null on every chunk", usageFields == 0,
			"%d of %d chunks carry \"usage\": null", usageFields, len(res.Chunks))
		// A stream stays a stream: the fake provider spaces its events by
		// 40 ms, and the SDK got them spaced, not all at once.
		spread := res.Chunks[len(res.Chunks)-1].At - res.Chunks[0].At
		assert.Greater(t, spread, 150.0, "chunks arrived over %.0f ms", spread)
		assert.Equal(t, nanos(promptTokens, nanoInput, replyTokens, nanoOutput), r.settled(t, "e2e-openai-stream"))
	})

	t.Run("openai stream with include_usage", func(t *testing.T) {
		p := chatParams("gpt-4.1-nano")
		p["stream_options"] = map[string]bool{"include_usage": true}
		res := run(t, sdkCall{SDK: "openai", Op: "chat-stream", BaseURL: r.openai + "/v1", Client: "e2e-openai-stream-usage", Params: p})
		require.True(t, res.OK, describe(res.Error))
		assert.Equal(t, wholeReply, res.Text)
		require.Len(t, res.Chunks, 3+replyTokens, "the worker asked for the usage chunk: it keeps it")
		var last struct {
			Choices []any
			Usage   fakeapi.OpenAIUsage
		}
		require.NoError(t, json.Unmarshal(res.Chunks[len(res.Chunks)-1].Data, &last))
		assert.Empty(t, last.Choices)
		assert.EqualValues(t, promptTokens, last.Usage.PromptTokens)
		assert.Equal(t, 1, res.TypicalCodeErrors, "the worker's own usage chunk has no choices, as with OpenAI")
		assert.Equal(t, nanos(promptTokens, nanoInput, replyTokens, nanoOutput), r.settled(t, "e2e-openai-stream-usage"))
	})

	t.Run("openai embeddings", func(t *testing.T) {
		res := run(t, sdkCall{SDK: "openai", Op: "embeddings", BaseURL: r.openai + "/v1", Client: "e2e-openai-embeddings",
			Params: map[string]any{"model": "text-embedding-3-small", "input": []string{"abc", "defg"}}})
		require.True(t, res.OK, describe(res.Error))
		assert.Equal(t, nanos(7, embedInput), r.settled(t, "e2e-openai-embeddings"))
	})

	t.Run("anthropic json", func(t *testing.T) {
		res := run(t, sdkCall{SDK: "anthropic", Op: "messages", BaseURL: r.anthropic, Client: "e2e-anthropic-json", Params: claudeParams()})
		require.True(t, res.OK, describe(res.Error))
		assert.Equal(t, wholeReply, res.Text)
		var got struct{ Usage fakeapi.AnthropicUsage }
		require.NoError(t, json.Unmarshal(res.Result, &got))
		assert.Equal(t, fakeapi.AnthropicUsage{InputTokens: promptTokens, OutputTokens: replyTokens}, got.Usage)
		seen := r.last(t)
		assert.Equal(t, "api.anthropic.com", seen.Host)
		// @anthropic-ai/sdk 1.x sends its API key as a bearer token, not
		// x-api-key; either must reach the provider.
		key := seen.Headers["x-api-key"]
		if key == "" {
			key = strings.TrimPrefix(seen.Headers["authorization"], "Bearer ")
		}
		assert.Equal(t, "sk-ant-e2e-test", key)
		assert.Equal(t, nanos(promptTokens, claudeInput, replyTokens, claudeOutput), r.settled(t, "e2e-anthropic-json"))
	})

	t.Run("anthropic json with cache reads", func(t *testing.T) {
		res := run(t, sdkCall{SDK: "anthropic", Op: "messages", BaseURL: r.anthropic, Client: "e2e-anthropic-cached",
			Params: claudeParams(), Headers: map[string]string{fakeapi.ScenarioHeader: fakeapi.ScenarioCached}})
		require.True(t, res.OK, describe(res.Error))
		var got struct{ Usage fakeapi.AnthropicUsage }
		require.NoError(t, json.Unmarshal(res.Result, &got))
		// Anthropic's input_tokens excludes the cache reads.
		require.Equal(t, fakeapi.AnthropicUsage{InputTokens: promptTokens - promptTokens/2, CacheReadInputTokens: promptTokens / 2,
			OutputTokens: replyTokens}, got.Usage)
		assert.Equal(t, nanos(got.Usage.InputTokens, claudeInput, got.Usage.CacheReadInputTokens, claudeCached, replyTokens, claudeOutput),
			r.settled(t, "e2e-anthropic-cached"))
	})

	t.Run("anthropic stream", func(t *testing.T) {
		res := run(t, sdkCall{SDK: "anthropic", Op: "messages-stream", BaseURL: r.anthropic, Client: "e2e-anthropic-stream",
			Params: claudeParams(), Headers: map[string]string{fakeapi.ScenarioHeader: fakeapi.ScenarioSlow}})
		require.True(t, res.OK, describe(res.Error))
		assert.Equal(t, wholeReply, res.Text)
		var types []string
		for _, c := range res.Chunks {
			var ev struct{ Type string }
			require.NoError(t, json.Unmarshal(c.Data, &ev))
			types = append(types, ev.Type)
		}
		// The provider's stream, event for event, less its ping (which the
		// SDK itself drops).
		assert.Equal(t, strings.Fields("message_start content_block_start content_block_delta content_block_delta content_block_delta "+
			"content_block_delta content_block_delta content_block_delta content_block_stop message_delta message_stop"), types)
		spread := res.Chunks[len(res.Chunks)-1].At - res.Chunks[0].At
		assert.Greater(t, spread, 150.0, "events arrived over %.0f ms", spread)
		assert.Equal(t, nanos(promptTokens, claudeInput, replyTokens, claudeOutput), r.settled(t, "e2e-anthropic-stream"))
	})
}

func deref(p *string) string {
	if p == nil {
		return "<null>"
	}
	return *p
}

func itoa(i int) string { return strconv.Itoa(i) }
