package costing

import (
	"bytes"
	"errors"
	"fmt"
	"math"
	"strconv"
)

// Errors of the request-body parsers. Each parser wraps one of these, so the
// caller can map them to a reason code with errors.Is.
var (
	// ErrMalformedBody: the body is not what the provider's API accepts
	// (not a JSON object, a field of the wrong type, a negative allowance).
	ErrMalformedBody = errors.New("costing: malformed request body")
	// ErrUnknownEndpoint: the path names no endpoint ParseOpenAI knows.
	ErrUnknownEndpoint = errors.New("costing: unknown endpoint")
	// ErrContentType: a form-encoded API got another content type.
	ErrContentType = errors.New("costing: unsupported content type")
	// ErrMessageTooLong: an SMS body over Twilio's 1,600-character limit.
	ErrMessageTooLong = errors.New("costing: message body over 1600 characters")
	// ErrNoRecipients: a mail with no personalizations or no addresses.
	ErrNoRecipients = errors.New("costing: no recipients")
	// ErrNilTokenizer: a parser that counts tokens was given none.
	ErrNilTokenizer = errors.New("costing: nil Tokenizer")
)

func malformed(format string, args ...any) error {
	return fmt.Errorf("%w: %s", ErrMalformedBody, fmt.Sprintf(format, args...))
}

// isObject reports whether body's first non-blank byte opens a JSON object;
// json.Unmarshal accepts "null" into a struct, the providers do not.
func isObject(body []byte) bool {
	b := bytes.TrimLeft(body, " \t\r\n")
	return len(b) > 0 && b[0] == '{'
}

// isNull reports whether a raw JSON value is absent or null.
func isNull(raw []byte) bool {
	return len(raw) == 0 || string(raw) == "null"
}

// intParam decodes an optional non-negative integer parameter such as
// max_tokens or n. Absent or null gives set == false. Integral floats
// ("100.0", "1e3") are accepted, as JSON does not tell them apart; strings,
// fractions and negatives are errors.
func intParam(name string, raw []byte) (v int64, set bool, err error) {
	if isNull(raw) {
		return 0, false, nil
	}
	s := string(raw)
	if v, err := strconv.ParseInt(s, 10, 64); err == nil {
		if v < 0 {
			return 0, false, malformed("%s: negative", name)
		}
		return v, true, nil
	}
	f, err := strconv.ParseFloat(s, 64)
	if err != nil || f != math.Trunc(f) {
		return 0, false, malformed("%s: want an integer, got %.40s", name, s)
	}
	if f < 0 {
		return 0, false, malformed("%s: negative", name)
	}
	if f >= math.MaxInt64 {
		return math.MaxInt64, true, nil
	}
	return int64(f), true, nil
}

// satMul multiplies two non-negative values, saturating at MaxInt64.
func satMul(a, b int64) int64 {
	if a == 0 || b == 0 {
		return 0
	}
	if a > math.MaxInt64/b {
		return math.MaxInt64
	}
	return a * b
}
