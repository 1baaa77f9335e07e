package costing_test

import (
	"math"
	"testing"

	"github.com/stretchr/testify/assert"

	"github.com/tollgate/tollgate/costing"
	"github.com/tollgate/tollgate/policy"
)

func TestUsageBounded(t *testing.T) {
	const maxT = costing.MaxUsageTokens
	tests := map[string]struct {
		in, want costing.Usage
		cut      bool
	}{
		"within bounds: unchanged": {
			in:   costing.Usage{InputTokens: 1000, CachedInputTokens: 500, OutputTokens: 20, ReasoningTokens: 10},
			want: costing.Usage{InputTokens: 1000, CachedInputTokens: 500, OutputTokens: 20, ReasoningTokens: 10},
		},
		"prompt_tokens 2^63-1, all cached": {
			in:   costing.Usage{InputTokens: math.MaxInt64, CachedInputTokens: math.MaxInt64, OutputTokens: 3},
			want: costing.Usage{InputTokens: maxT, CachedInputTokens: maxT, OutputTokens: 3}, cut: true,
		},
		"anthropic cache writes kept inside the input": {
			in:   costing.Usage{InputTokens: 3 * maxT, CachedInputTokens: maxT - 5, CacheWriteTokens: maxT},
			want: costing.Usage{InputTokens: maxT, CachedInputTokens: maxT - 5, CacheWriteTokens: 5}, cut: true,
		},
		"output and reasoning": {
			in:   costing.Usage{OutputTokens: maxT + 1, ReasoningTokens: maxT + 1},
			want: costing.Usage{OutputTokens: maxT, ReasoningTokens: maxT}, cut: true,
		},
		"twilio": {
			in:   costing.Usage{Segments: 1 << 40, Price: math.MaxInt64, HasPrice: true},
			want: costing.Usage{Segments: costing.MaxUsageSegments, Price: costing.MaxUsagePrice, HasPrice: true}, cut: true,
		},
		"twilio at the bounds": {
			in:   costing.Usage{Segments: costing.MaxUsageSegments, Price: 1000 * policy.NanosPerDollar, HasPrice: true},
			want: costing.Usage{Segments: costing.MaxUsageSegments, Price: 1000 * policy.NanosPerDollar, HasPrice: true},
		},
	}
	for name, tc := range tests {
		t.Run(name, func(t *testing.T) {
			got, cut := tc.in.Bounded()
			assert.Equal(t, tc.want, got)
			assert.Equal(t, tc.cut, cut)
		})
	}
}
