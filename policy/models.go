package policy

import "strings"

// Model prices one LLM model. Prices are per token (per image for Image).
type Model struct {
	Name        string // exact, "prefix*", or "*" for every other model
	Input       Price
	Output      Price
	CachedInput Price // defaults to Input when the policy states no discount
	// CacheWrite prices input tokens written to a prompt cache (Anthropic's
	// cache_creation_input_tokens); defaults to Input.
	CacheWrite Price
	// Image and Audio price each image and each audio part of a request,
	// on top of its tokens, in the estimate (the response's usage counts
	// them as tokens at settlement).
	Image Price
	Audio Price
	// Flex prices a call sent with OpenAI's service_tier "flex" (Batch API
	// prices); HasFlex is false for a model that does not offer it, and an
	// optimize rule's flex then leaves its calls alone.
	HasFlex                                bool
	FlexInput, FlexOutput, FlexCachedInput Price
	// MaxOutputTokens is the output allowance assumed when a request states
	// none; 0 leaves it to the route's default_max_tokens.
	MaxOutputTokens int64
}

// Strategy is how much an admission reserves beyond its estimate.
type Strategy string

// Reservation strategies.
const (
	// Conservative reserves 120% of the estimate (the default).
	Conservative Strategy = "conservative"
	// Optimistic reserves 105%.
	Optimistic Strategy = "optimistic"
	// Adaptive reserves the estimate times a ratio learned per model and
	// route from recent actual/estimate, bounded (see costing).
	Adaptive Strategy = "adaptive"
)

var strategies = []Strategy{Conservative, Optimistic, Adaptive}

// AdaptiveConfig tunes the adaptive strategy: an admission reserves its estimate
// times the Percentile-th of the last Window actual/estimate ratios seen for
// its route and model, bounded to [MinPercent, MaxPercent] of the estimate.
// Until MinSamples ratios are known it reserves as Conservative does.
type AdaptiveConfig struct {
	Percentile int64
	MinPercent int64
	MaxPercent int64
	Window     int64
	MinSamples int64
}

// DefaultAdaptive is the p95 of the last 200 ratios, within 50%–120% of the
// estimate, after 20 samples.
func DefaultAdaptive() AdaptiveConfig {
	return AdaptiveConfig{Percentile: 95, MinPercent: 50, MaxPercent: 120, Window: 200, MinSamples: 20}
}

// Percent is the fixed share of the estimate a strategy reserves; Adaptive
// starts from Conservative's until it has learned.
func (s Strategy) Percent() int64 {
	if s == Optimistic {
		return 105
	}
	return 120
}

// Model finds a model's prices: the exact name, else the longest matching
// "prefix*", else "*". known is false when only "*" (or nothing) matched,
// so callers can count the miss.
func (s *Set) Model(name string) (m *Model, known bool) {
	if m, ok := s.Models[name]; ok && name != "*" {
		return m, true
	}
	best := ""
	for pat := range s.Models {
		if p, ok := strings.CutSuffix(pat, "*"); ok && pat != "*" && strings.HasPrefix(name, p) && len(pat) > len(best) {
			best = pat
		}
	}
	if best != "" {
		return s.Models[best], true
	}
	return s.Models["*"], false
}
