package costing

import (
	"bytes"
	"encoding/json"

	"github.com/tollgate/tollgate/policy"
)

// Actual is what a settled call really cost, priced like its Estimate.
type Actual struct {
	// Pools holds the units each pool of the estimate really used, in the
	// estimate's order; Measured says which were measured (the others keep
	// the estimate's units).
	Pools    []PoolCost
	Measured []bool
	Cost     policy.Money
	// InputCost and OutputCost break an LLM call's Cost down by the model's
	// prices (cached and cache-written input included in InputCost).
	InputCost, OutputCost policy.Money
}

// Price prices usage u of a call estimated as est on route r, under set:
// token pools by the model's prices (uncached, cached and cache-written
// input apart, output with its reasoning), or when the model is not priced
// by the pools' unit prices; a Twilio message at Twilio's own price when
// known, else its billed segments at the pool's price. What the response
// did not measure (e-mails, request counts) is priced as estimated.
func Price(set *policy.Set, r *policy.Route, est Estimate, u Usage) Actual {
	a := Actual{Pools: make([]PoolCost, len(est.Pools)), Measured: make([]bool, len(est.Pools))}
	copy(a.Pools, est.Pools)
	// A request-counting route with a priced model pays its tokens too; a
	// route priced by its pools never does.
	llm := (r.LLM() || est.PriceEntry != "") && r.Pricing != policy.PricingPool
	var tokenMoney, unitMoney policy.Money
	for i, pc := range est.Pools {
		p := pc.Pool
		switch p.Unit {
		case policy.UnitToken:
			a.Pools[i].Units, a.Measured[i] = u.Tokens(), true
			tokenMoney = max(tokenMoney, p.Price.Cost(u.Tokens()))
		case policy.UnitSegment:
			if u.Segments > 0 {
				a.Pools[i].Units, a.Measured[i] = u.Segments, true
			}
			if !u.HasPrice {
				unitMoney = addMoney(unitMoney, p.Price.Cost(a.Pools[i].Units))
			}
		default:
			unitMoney = addMoney(unitMoney, p.Price.Cost(pc.Units))
		}
	}
	if u.HasPrice {
		unitMoney = addMoney(unitMoney, u.Price)
	}
	if llm {
		model := est.PriceEntry
		if model == "" && u.Model != "" { // the request named no model (Azure deployments)
			if m, _ := set.Model(u.Model); m != nil {
				model = m.Name
			}
		}
		if m := set.Models[model]; m != nil {
			a.InputCost, a.OutputCost = TokenCost(m, est.Flex, u)
			tokenMoney = addMoney(a.InputCost, a.OutputCost)
		}
	}
	a.Cost = addMoney(unitMoney, tokenMoney)
	return a
}

// InputPrices are a model's input prices at one processing tier.
type InputPrices struct {
	Input, CachedInput, CacheWrite policy.Price
}

// ModelPrices returns m's input and output prices at the standard tier, or
// at the flex tier when flex is set and m has flex prices.
func ModelPrices(m *policy.Model, flex bool) (InputPrices, policy.Price) {
	if flex && m.HasFlex {
		return InputPrices{m.FlexInput, m.FlexCachedInput, m.CacheWrite}, m.FlexOutput
	}
	return InputPrices{m.Input, m.CachedInput, m.CacheWrite}, m.Output
}

// TokenCost prices usage u's tokens at model m (its flex prices when flex
// and it has them): uncached, cached and cache-written input apart, and
// output.
func TokenCost(m *policy.Model, flex bool, u Usage) (input, output policy.Money) {
	in, out := ModelPrices(m, flex)
	cached, written := min(u.CachedInputTokens, u.InputTokens), min(u.CacheWriteTokens, u.InputTokens)
	plain := max(u.InputTokens-cached-written, 0)
	input = addMoney(addMoney(in.Input.Cost(plain), in.CachedInput.Cost(cached)), in.CacheWrite.Cost(written))
	return input, out.Cost(u.OutputTokens)
}

// EnsureStreamUsage rewrites an OpenAI chat or completions request that
// streams without stream_options.include_usage so that it asks for it: the
// stream then ends with a chunk carrying the call's usage (otherwise it
// carries none, and the call can only be settled at its estimate). changed
// is false, and body returned as is, when there is nothing to do. The
// body's other bytes are kept as they are.
func EnsureStreamUsage(kind string, body []byte) (out []byte, changed bool, err error) {
	if kind != KindChat && kind != KindCompletions {
		return body, false, nil
	}
	if !isObject(body) {
		return body, false, malformed("%s: not a JSON object", kind)
	}
	var doc struct {
		Stream        json.RawMessage `json:"stream"`
		StreamOptions json.RawMessage `json:"stream_options"`
	}
	if err := json.Unmarshal(body, &doc); err != nil {
		return body, false, malformed("%s: %v", kind, err)
	}
	if string(bytes.TrimSpace(doc.Stream)) != "true" {
		return body, false, nil
	}
	if isNull(doc.StreamOptions) {
		// Insert the field first: no other byte of the body moves.
		i := bytes.IndexByte(body, '{') + 1
		rest := bytes.TrimLeft(body[i:], " \t\r\n")
		sep := ","
		if len(rest) > 0 && rest[0] == '}' {
			sep = ""
		}
		out = make([]byte, 0, len(body)+40)
		out = append(out, body[:i]...)
		out = append(out, `"stream_options":{"include_usage":true}`...)
		out = append(out, sep...)
		out = append(out, body[i:]...)
		return out, true, nil
	}
	var opts map[string]json.RawMessage
	if err := json.Unmarshal(doc.StreamOptions, &opts); err != nil {
		return body, false, malformed("%s: stream_options: %v", kind, err)
	}
	if string(bytes.TrimSpace(opts["include_usage"])) == "true" {
		return body, false, nil
	}
	// stream_options exists without include_usage: rebuild the top level
	// (key order is not preserved, values are).
	var top map[string]json.RawMessage
	if err := json.Unmarshal(body, &top); err != nil {
		return body, false, malformed("%s: %v", kind, err)
	}
	opts["include_usage"] = json.RawMessage("true")
	so, err := json.Marshal(opts)
	if err != nil {
		return body, false, err
	}
	top["stream_options"] = so
	out, err = json.Marshal(top)
	if err != nil {
		return body, false, err
	}
	return out, true, nil
}
