// Package costing estimates what a call will cost before it goes out: units
// per pool (LLM tokens, SMS segments, e-mails) and money in nano-dollars.
// Everything here is a pure function over the request and the policy.
package costing

import (
	"encoding/json"
	"math"

	"github.com/tollgate/tollgate/policy"
)

// BytesPerToken is the first estimate's exchange rate from request bytes to
// input tokens, until a real tokenizer replaces it.
const BytesPerToken = 4

// LLMBody holds the fields of an LLM request body that an estimate reads.
type LLMBody struct {
	Model string
	// MaxTokens is the output allowance the call asked for; zero when it
	// asked for none.
	MaxTokens int64
}

type llmFields struct {
	Model               string `json:"model"`
	MaxTokens           *int64 `json:"max_tokens"`
	MaxCompletionTokens *int64 `json:"max_completion_tokens"`
	MaxOutputTokens     *int64 `json:"max_output_tokens"`
}

// ParseLLMBody reads model and output allowance from a JSON request body
// (OpenAI chat/completions/responses, Anthropic messages). A body that is
// not a JSON object is an error; the caller may still estimate from its size.
func ParseLLMBody(body []byte) (LLMBody, error) {
	var f llmFields
	if err := json.Unmarshal(body, &f); err != nil {
		return LLMBody{}, err
	}
	out := LLMBody{Model: f.Model}
	for _, v := range []*int64{f.MaxCompletionTokens, f.MaxTokens, f.MaxOutputTokens} {
		if v != nil && *v > 0 {
			out.MaxTokens = *v
			break
		}
	}
	return out, nil
}

// PoolCost is one pool's share of an estimate.
type PoolCost struct {
	Pool  *policy.Pool
	Units int64
	Cost  policy.Money
}

// Estimate is the expected cost of one call.
type Estimate struct {
	Pools []PoolCost // one per route pool, in the route's order
	Cost  policy.Money
}

// Estimator computes estimates. Its zero value is ready to use.
type Estimator struct{}

// Estimate prices a call on route r. bodyLen is the full body's length
// (which may exceed len of the body Envoy sent when it was truncated).
// Token pools are charged the output allowance (the body's, else the
// route's default) plus one token per BytesPerToken bytes of body; every
// other pool is charged one unit per call.
func (Estimator) Estimate(r *policy.Route, llm LLMBody, bodyLen int64) Estimate {
	e := Estimate{Pools: make([]PoolCost, len(r.Pools))}
	for i, p := range r.Pools {
		units := int64(1)
		if p.Unit == policy.UnitToken {
			out := llm.MaxTokens
			if out <= 0 {
				out = r.DefaultMaxTokens
			}
			units = satAdd(out, ceilDiv(max(bodyLen, 0), BytesPerToken))
		}
		c := p.Price.Cost(units)
		e.Pools[i] = PoolCost{Pool: p, Units: units, Cost: c}
		e.Cost = policy.Money(satAdd(int64(e.Cost), int64(c)))
	}
	return e
}

// ceilDiv is a/b rounded up, for a >= 0 and b > 0, without overflow.
func ceilDiv(a, b int64) int64 {
	q := a / b
	if a%b != 0 {
		q++
	}
	return q
}

// satAdd adds two non-negative values, saturating at MaxInt64.
func satAdd(a, b int64) int64 {
	if a > math.MaxInt64-b {
		return math.MaxInt64
	}
	return a + b
}
