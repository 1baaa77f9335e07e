package authz_test

import (
	"context"
	"net/http"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/tollgate/tollgate/admission"
	"github.com/tollgate/tollgate/authz"
	"github.com/tollgate/tollgate/limiter"
)

// TestHugeMaxTokens: a max_tokens no store can book is the caller's error:
// 429 exceeds_capacity with x-should-retry: false and a sentence naming
// max_tokens, even where the policy fails open on store failures; it is
// never a store_error nor admitted unmetered.
func TestHugeMaxTokens(t *testing.T) {
	for name, maxTokens := range map[string]string{
		"beyond int64": "99999999999999999999",
		"a float":      "1e300",
		"int64 max":    "9223372036854775807",
	} {
		for _, defaults := range []string{"", "  store_unavailable: allow"} {
			t.Run(name+defaults, func(t *testing.T) {
				d := newDecider(t, testPolicy(defaults, false))
				body := []byte(`{"model":"gpt-4","max_tokens":` + maxTokens + `,"messages":[{"role":"user","content":"hi"}]}`)
				v := d.Decide(context.Background(), openAIRequest("a", body))
				require.False(t, v.Allowed, v.Message)
				assert.Equal(t, admission.OutcomeDenied, v.Outcome)
				assert.Equal(t, string(limiter.ReasonExceedsCapacity), v.Reason)
				assert.Equal(t, http.StatusTooManyRequests, v.Status)
				assert.Contains(t, v.Message, "max_tokens")
				hs := headerMap(t, authz.ResponseHeaders(&v))
				assert.Equal(t, "false", hs["x-should-retry"])
				assert.NotContains(t, hs, "retry-after")
				assert.Zero(t, d.remaining(t, limiter.Key{Pool: "gpt-4"}, gpt4Limit)-gpt4Limit.Capacity, "nothing taken")
			})
		}
	}
}
