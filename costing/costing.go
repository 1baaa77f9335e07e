// Package costing estimates what a call will cost before it goes out: units
// per pool (LLM tokens, SMS segments, e-mails) and money in nano-dollars.
// Everything here is a pure function over the request and the policy.
package costing

import (
	"encoding/json"
	"math"
	"sync"

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
//
// A caller that also estimates the call should build it with NewCall and
// read its Model instead: the body is then decoded once for both.
func ParseLLMBody(body []byte) (LLMBody, error) {
	var f llmFields
	if err := json.Unmarshal(body, &f); err != nil {
		return LLMBody{}, err
	}
	return f.body(), nil
}

func (f *llmFields) body() LLMBody {
	out := LLMBody{Model: f.Model}
	for _, v := range []*int64{f.MaxCompletionTokens, f.MaxTokens, f.MaxOutputTokens} {
		if v != nil && *v > 0 {
			out.MaxTokens = *v
			break
		}
	}
	return out
}

// PoolCost is one pool's share of an estimate: the units its bucket is
// charged.
type PoolCost struct {
	Pool  *policy.Pool
	Units int64
}

// Call is the part of a request an estimate reads.
//
// Build it with NewCall to have its body decoded at most once: Model, for
// routing, and every Estimate of the call (copies included) then share one
// decode. A Call written as a literal works too; its first Model call (on
// an addressable Call) attaches the decode, else each Estimate decodes the
// body anew. Body must not change once read: a Body replaced by another
// slice is decoded afresh, but bytes changed in place are not noticed.
// After NewCall, Model and Estimate are safe for concurrent use.
type Call struct {
	Path        string
	ContentType string
	Body        []byte
	// BodySize is the body's full length: larger than len(Body) when Envoy
	// sent only its first bytes, which cannot be parsed; such a call is
	// estimated from its size.
	BodySize int64

	parsed *parsedBody // shared by copies of the Call
}

// NewCall returns the call to path with body, of which size bytes were sent
// in all (size may exceed len(body) when body is only their beginning), set
// up to decode its body at most once.
func NewCall(path, contentType string, body []byte, size int64) Call {
	return Call{Path: path, ContentType: contentType, Body: body, BodySize: size, parsed: newParsedBody(body)}
}

// Model returns the body's "model" field, as ParseLLMBody reads it: "" when
// the body has none or cannot be read (not JSON, truncated, a field of the
// wrong type). Routing by model calls it before the route is known; the
// decode it makes is the one Estimate uses.
func (c *Call) Model() string {
	b, _ := c.body().llmBody()
	return b.Model
}

// body returns the Call's decode, attaching one if it has none for Body.
func (c *Call) body() *parsedBody {
	if c.parsed == nil || !sameSlice(c.parsed.body, c.Body) {
		c.parsed = newParsedBody(c.Body)
	}
	return c.parsed
}

// sameSlice reports whether a and b are the same bytes of memory.
func sameSlice(a, b []byte) bool {
	return len(a) == len(b) && (len(a) == 0 || &a[0] == &b[0])
}

// Estimate is the expected cost of one call.
type Estimate struct {
	Pools []PoolCost // one per route pool, in the route's order
	// Cost is the expected spend; Reserve is what the policy's reservation
	// strategy holds against budgets for it (Cost × ReservePercent / 100,
	// rounded up: 120% by default).
	Cost           policy.Money
	Reserve        policy.Money
	Strategy       policy.Strategy
	ReservePercent int64
	// InputCost, OutputCost and ImageCost break an LLM call's Cost down
	// when its model is priced (they add up to Cost for a route of token
	// pools); UnitCost is what pools charged by their unit price.
	InputCost, OutputCost, ImageCost, AudioCost, UnitCost policy.Money
	// Model is the body's model; PriceEntry the policy's models: entry that
	// priced it ("" for none); ModelKnown is false when that was the "*"
	// entry or none (a miss worth counting).
	Model      string
	PriceEntry string
	ModelKnown bool
	// InputTokens and OutputTokens are an LLM call's estimate; Exact says
	// they were counted by the provider's rules (false: from body size).
	InputTokens, OutputTokens int64
	Exact                     bool
	// Images and AudioParts are the request's image and audio parts,
	// priced by the model's image and audio prices.
	Images, AudioParts int64
	// N is the choices each prompt asks for: an allowance the body does not
	// state is assumed for each of them.
	N int64
	// Kind is an OpenAI endpoint (KindChat, ...) or "" for other calls.
	// Stream says the response is an event stream; IncludeUsage that it
	// ends with the call's usage on its own.
	Kind         string
	Stream       bool
	IncludeUsage bool
	// Flex says the call asks for OpenAI's flex tier; it is priced at its
	// model's flex prices when the model has them.
	Flex bool
	// Segments and Recipients are what a Twilio or SendGrid call was
	// charged per pool unit.
	Segments, Recipients int64
}

// Estimator prices calls. It is safe for concurrent use.
type Estimator struct {
	// Tok counts tokens; nil means the size-based estimate for LLM calls.
	Tok *Tokenizer
	// Learner feeds the adaptive strategy; nil makes adaptive reserve like
	// conservative.
	Learner *Learner
}

// Estimate prices call c on route r under policy set, reading c's body
// through the decode c carries (see NewCall). Token pools are charged
// input plus output tokens: counted with the model's tokenizer and
// the provider's message rules, the output being the body's allowance
// (times n) or else the model's or route's default; when the body cannot be
// read (truncated, not JSON) one token per BytesPerToken bytes stands in for
// the input. Segment pools are charged SMS segments times recipients,
// e-mail pools recipients, and request pools one per call. Money comes from
// the model's prices for LLM calls (input, output and images apart), else
// from each pool's unit price; a route with pricing: pool is priced by its
// pools' unit prices alone, its body never read as a prompt for money.
func (e Estimator) Estimate(set *policy.Set, r *policy.Route, c Call) Estimate {
	est := Estimate{Pools: make([]PoolCost, len(r.Pools)), Segments: 1, Recipients: 1, N: 1}
	size := max(c.BodySize, int64(len(c.Body)))
	whole := size <= int64(len(c.Body))
	llm := r.LLM()
	p := c.body()
	if whole {
		switch r.Provider {
		case policy.ProviderOpenAI:
			if q, err := parseOpenAI(c.Path, p, e.Tok); err == nil && e.Tok != nil {
				est.Model, est.InputTokens, est.OutputTokens, est.Images, est.Exact = q.Model, q.InputTokens, q.MaxOutputTokens, q.Images, true
				est.Kind, est.Stream, est.IncludeUsage, est.AudioParts, est.N = q.Kind, q.Stream, q.IncludeUsage, q.AudioParts, max(q.N, 1)
				est.Flex = q.Flex
			}
		case policy.ProviderAnthropic:
			if q, err := parseAnthropic(p, e.Tok); err == nil && e.Tok != nil {
				est.Model, est.InputTokens, est.OutputTokens, est.Images, est.Exact = q.Model, q.InputTokens, q.MaxOutputTokens, q.Images, true
				est.Stream, est.IncludeUsage = q.Stream, q.Stream // message_start and message_delta carry usage
			}
		case policy.ProviderTwilio:
			if m, err := ParseTwilioMessage(c.ContentType, c.Body); err == nil {
				est.Recipients = max(m.Recipients, 1)
				est.Segments = max(m.Segments, 1) * est.Recipients
			}
		case policy.ProviderSendGrid:
			if m, err := ParseSendGrid(c.Body); err == nil {
				est.Recipients = max(m.Recipients, 1)
			}
		}
	}
	byModel := r.Pricing != policy.PricingPool
	if !llm && byModel && (r.Provider == policy.ProviderOpenAI || r.Provider == policy.ProviderAnthropic) {
		// A route whose pools count requests still pays for tokens: its
		// money comes from models: whenever the call's model is priced.
		name := est.Model
		if !est.Exact {
			b, _ := p.llmBody()
			name = b.Model
		}
		m, _ := set.Model(name)
		llm = m != nil
	}
	var model *policy.Model
	if llm {
		if !est.Exact {
			b, _ := p.llmBody() // a body that is not JSON is estimated by its size
			est.Model, est.OutputTokens = b.Model, b.MaxTokens
			est.InputTokens = ceilDiv(size, BytesPerToken)
		}
		if byModel {
			model, est.ModelKnown = set.Model(est.Model)
			if model != nil {
				est.PriceEntry = model.Name
			}
		}
		if est.OutputTokens <= 0 && est.Kind != KindEmbeddings { // embeddings produce no tokens
			est.OutputTokens = r.DefaultMaxTokens
			if model != nil && model.MaxOutputTokens > 0 {
				est.OutputTokens = model.MaxOutputTokens
			}
			est.OutputTokens = satMul(est.OutputTokens, est.N)
		}
	}
	var tokenMoney policy.Money
	for i, p := range r.Pools {
		units := int64(1)
		switch p.Unit {
		case policy.UnitToken:
			units = satAdd(est.InputTokens, est.OutputTokens)
			tokenMoney = max(tokenMoney, p.Price.Cost(units))
		case policy.UnitSegment:
			units = est.Segments
			est.UnitCost = addMoney(est.UnitCost, p.Price.Cost(units))
		case policy.UnitEmail:
			units = est.Recipients
			est.UnitCost = addMoney(est.UnitCost, p.Price.Cost(units))
		default:
			est.UnitCost = addMoney(est.UnitCost, p.Price.Cost(units))
		}
		est.Pools[i] = PoolCost{Pool: p, Units: units}
	}
	if model != nil {
		// The model's own prices, charged once however many token pools
		// the call counts against.
		in, out := ModelPrices(model, est.Flex)
		est.InputCost = in.Input.Cost(est.InputTokens)
		est.OutputCost = out.Cost(est.OutputTokens)
		est.ImageCost = model.Image.Cost(est.Images)
		est.AudioCost = model.Audio.Cost(est.AudioParts)
		tokenMoney = addMoney(addMoney(addMoney(est.InputCost, est.OutputCost), est.ImageCost), est.AudioCost)
	} else {
		est.UnitCost = addMoney(est.UnitCost, tokenMoney)
		tokenMoney = 0
	}
	est.Cost = addMoney(est.UnitCost, tokenMoney)
	est.Strategy = set.Defaults.Reservation
	est.ReservePercent = est.Strategy.Percent()
	if est.Strategy == policy.Adaptive && e.Learner != nil {
		if pct, ok := e.Learner.Percent(LearnKey(r, est.PriceEntry), set.Defaults.Adaptive); ok {
			est.ReservePercent = pct
		}
	}
	est.Reserve = ApplyStrategy(est.Cost, est.ReservePercent)
	return est
}

// addMoney adds two non-negative amounts, saturating.
func addMoney(a, b policy.Money) policy.Money { return policy.Money(satAdd(int64(a), int64(b))) }

// ApplyStrategy scales cost by percent, rounding up.
func ApplyStrategy(cost policy.Money, percent int64) policy.Money {
	if cost <= 0 {
		return 0
	}
	if int64(cost) > math.MaxInt64/percent {
		return math.MaxInt64
	}
	return policy.Money(ceilDiv(int64(cost)*percent, 100))
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

var (
	sharedOnce sync.Once
	shared     *Tokenizer
	sharedErr  error
)

// SharedTokenizer returns one Tokenizer for the process, loaded on first
// call. Its tables are immutable once loaded (tens of MB per encoding), so
// every Decider shares them rather than loading its own.
func SharedTokenizer() (*Tokenizer, error) {
	sharedOnce.Do(func() { shared, sharedErr = NewTokenizer() })
	return shared, sharedErr
}
