package optimize

import (
	"math"
	"strconv"

	"github.com/go-json-experiment/json/jsontext"
	"github.com/tollgate/tollgate/costing"
	"github.com/tollgate/tollgate/policy"
)

// downgrade replaces the model string with model. A body with no model, a
// model that is not a string, or the target model already, is left alone.
func downgrade(body []byte, t *top, model string) (sp []splice, from string) {
	if !t.model.isString(body) {
		return nil, ""
	}
	if stringIs(t.model.raw(body), model) { // the common case: no allocation
		return nil, ""
	}
	from, _ = stringValue(t.model.raw(body))
	repl, err := jsontext.AppendQuote(nil, model)
	if err != nil {
		return nil, "" // not reached: validate checked model is valid UTF-8
	}
	return []splice{replace(t.model, repl)}, from
}

// flex asks for OpenAI's flex processing. It replaces a service_tier of
// "auto" or "default" (the standard tier), or null, and inserts one when
// there is none; "flex" is already done, and "priority", "scale" or any
// tier it does not know are the caller's explicit choice, left alone.
func flex(body []byte, t *top) (sp []splice, from string) {
	const value = `"flex"`
	st := t.serviceTier
	switch {
	case !st.ok():
		return []splice{insertMember(body, t.open, []byte(`"service_tier":`+value))}, ""
	case st.isNull(body):
		return []splice{replace(st, []byte(value))}, ""
	}
	tier, ok := stringValue(st.raw(body))
	if !ok || (tier != "auto" && tier != "default") {
		return nil, ""
	}
	return []splice{replace(st, []byte(value))}, tier
}

// completionsDefaultMaxTokens is the allowance of a legacy completions
// call that states none (OpenAI's documented default for max_tokens).
const completionsDefaultMaxTokens = 16

// tokenCap lowers the output allowance to at most limit, field by field:
//
//   - OpenAI chat: max_completion_tokens and max_tokens, each lowered when
//     it states more than limit; when neither states an allowance (absent
//     or null), max_completion_tokens is set to limit (not max_tokens,
//     which the o-series models refuse).
//   - OpenAI responses: max_output_tokens, lowered, or set when absent.
//   - OpenAI completions: max_tokens, lowered; set when absent only if limit
//     is below the endpoint's default of 16, since setting a larger one
//     would raise the allowance.
//   - Anthropic messages: max_tokens (which the API requires), lowered; a
//     body without one is left for the API to refuse.
//
// An allowance that is not a number is left alone; one that is not an
// integer (1e3, 700.5) is compared exactly and replaced by limit if larger.
// from is the largest allowance lowered (0 when one was set).
func tokenCap(b Body, body []byte, t *top, limit int64) (sp []splice, from int64) {
	var fields [2]span
	n, set := 0, ""
	switch {
	case b.Provider == policy.ProviderAnthropic:
		fields[0], n = t.maxTokens, 1
	case b.Kind == costing.KindChat:
		fields[0], fields[1], n, set = t.maxCompletionTokens, t.maxTokens, 2, "max_completion_tokens"
	case b.Kind == costing.KindResponses:
		fields[0], n, set = t.maxOutputTokens, 1, "max_output_tokens"
	case b.Kind == costing.KindCompletions:
		fields[0], n = t.maxTokens, 1
		if limit < completionsDefaultMaxTokens {
			set = "max_tokens"
		}
	}
	stated := false
	var value []byte
	for _, f := range fields[:n] {
		if f.isNull(body) {
			continue
		}
		stated = true
		v, above, ok := numberFloor(f.raw(body), limit)
		if !ok || !above {
			continue
		}
		if value == nil {
			value = strconv.AppendInt(nil, limit, 10)
		}
		sp = append(sp, replace(f, value))
		from = max(from, v)
	}
	if stated || set == "" {
		return sp, from
	}
	value = strconv.AppendInt(nil, limit, 10)
	if f := fields[0]; f.ok() { // present, null
		return []splice{replace(f, value)}, 0
	}
	m := append(strconv.AppendQuote(nil, set), ':')
	return []splice{insertMember(body, t.open, append(m, value...))}, 0
}

// numberFloor reads the JSON number raw exactly (no float), for comparing
// an allowance with a cap of at least 1: floor is the number rounded down
// to an integer (0 for a negative one, math.MaxInt64 past it), above
// reports whether the number is larger than limit, and ok is false when
// raw is not a number.
func numberFloor(raw []byte, limit int64) (floor int64, above, ok bool) {
	if len(raw) == 0 || (raw[0] != '-' && !isDigit(raw[0])) {
		return 0, false, false
	}
	if raw[0] == '-' {
		return 0, false, true
	}
	// raw is digits, maybe '.' digits, maybe [eE][+-]digits (the tokenizer
	// validated it). Its value is the digits of the integer and fraction
	// parts read as one run, d, with the decimal point after point digits.
	i := 0
	for i < len(raw) && isDigit(raw[i]) {
		i++
	}
	d := decimal{whole: raw[:i]}
	if i < len(raw) && raw[i] == '.' {
		j := i + 1
		for j < len(raw) && isDigit(raw[j]) {
			j++
		}
		d.frac, i = raw[i+1:j], j
	}
	exp := int64(0)
	if i < len(raw) && (raw[i] == 'e' || raw[i] == 'E') {
		i++
		neg := raw[i] == '-'
		if raw[i] == '-' || raw[i] == '+' {
			i++
		}
		for ; i < len(raw); i++ {
			if exp < 1<<40 { // saturate: the body is far shorter
				exp = exp*10 + int64(raw[i]-'0')
			}
		}
		if neg {
			exp = -exp
		}
	}
	// Drop leading zeros.
	lead := 0
	for lead < d.len() && d.at(lead) == '0' {
		lead++
	}
	if lead == d.len() {
		return 0, false, true // zero
	}
	point := int64(len(d.whole)) + exp - int64(lead)
	switch {
	case point > 19: // at least 10^19 > MaxInt64
		return math.MaxInt64, true, true
	case point <= 0: // below 1
		return 0, false, true
	}
	var u uint64 // at most 19 digits: fits
	for k := range int(point) {
		u = u*10 + uint64(d.at(lead+k)-'0')
	}
	fracNonZero := false
	for k := lead + int(point); k < d.len(); k++ {
		fracNonZero = fracNonZero || d.at(k) != '0'
	}
	floor = math.MaxInt64
	if u < math.MaxInt64 {
		floor = int64(u)
	}
	return floor, u > uint64(limit) || (u == uint64(limit) && fracNonZero), true
}

// decimal is the run of digits of a number's integer and fraction parts.
type decimal struct{ whole, frac []byte }

func (d decimal) len() int { return len(d.whole) + len(d.frac) }

// at is the k-th digit, '0' past the end.
func (d decimal) at(k int) byte {
	switch {
	case k < len(d.whole):
		return d.whole[k]
	case k < d.len():
		return d.frac[k-len(d.whole)]
	}
	return '0'
}

func isDigit(c byte) bool { return '0' <= c && c <= '9' }
