package costing

import (
	"bytes"
	"crypto/sha256"
	"encoding/binary"
	"encoding/hex"
	"encoding/json"
	"errors"
	"io"
	"slices"
	"strconv"
	"strings"
	"unicode/utf8"

	"github.com/tollgate/tollgate/policy"
)

// Identity is what the response cache and idempotency know a request by:
// a hash of what the upstream is asked, and whether the answer depends on
// that alone.
type Identity struct {
	// Hash is the hex SHA-256 of the route's name, the method, the path and
	// the body: JSON decoded and encoded again with its object keys sorted
	// (numbers and strings as written), or the bytes as they are when the
	// body is not JSON (a form, a body cut short, a key repeated). Headers
	// (authorization, the client's own) never count.
	Hash string
	// Whole says the whole body was seen (Envoy may send only its start).
	Whole bool
	// JSON says the body was hashed in its canonical form.
	JSON bool
	// Pure says the call reads and writes nothing the provider keeps: an
	// OpenAI chat, completions, responses (without previous_response_id,
	// conversation or background), embeddings or moderations call, or an
	// Anthropic messages call, sent with POST. Nothing else is.
	Pure bool
	// Deterministic says a pure call's answer is decided by its request:
	// temperature 0 or a seed (OpenAI chat, completions, responses;
	// Anthropic messages, which have no seed, at temperature 0), and
	// embeddings and moderations always.
	Deterministic bool
}

// identityVersion names this hashing; a change to it changes every hash.
const identityVersion = "tollgate-request-v1"

// Identify computes the identity of a call of route, with method and
// (canonical) path, and c's body. It is a pure function of its arguments.
func Identify(route *policy.Route, method, path string, c Call) Identity {
	id := Identity{Whole: c.BodySize <= int64(len(c.Body))}
	method = strings.ToUpper(method)
	body := c.Body
	var top map[string][]byte
	if id.Whole {
		if cb, fields, ok := canonicalJSON(c.Body); ok {
			body, top, id.JSON = cb, fields, true
		}
	}
	h := sha256.New()
	part := func(b []byte) {
		var n [binary.MaxVarintLen64]byte
		h.Write(n[:binary.PutUvarint(n[:], uint64(len(b)))])
		h.Write(b)
	}
	part([]byte(identityVersion))
	part([]byte(route.Name))
	part([]byte(method))
	part([]byte(path))
	if id.JSON {
		part([]byte("json"))
	} else {
		part([]byte("raw"))
	}
	part(body)
	if !id.Whole {
		part([]byte("partial:" + strconv.FormatInt(c.BodySize, 10)))
	}
	id.Hash = hex.EncodeToString(h.Sum(nil))
	if id.JSON && method == "POST" {
		id.Pure, id.Deterministic = pure(route.Provider, path, top)
	}
	return id
}

// pure classifies a JSON call by its endpoint and top-level fields.
func pure(p policy.Provider, path string, top map[string][]byte) (isPure, deterministic bool) {
	fixed := isZero(top["temperature"]) || present(top["seed"])
	switch p {
	case policy.ProviderOpenAI:
		if strings.HasSuffix(strings.TrimRight(path, "/"), "/moderations") {
			return true, true
		}
		switch kind, _ := openAIKind(path); kind {
		case KindEmbeddings:
			return true, true
		case KindChat, KindCompletions:
			return true, fixed
		case KindResponses:
			if present(top["previous_response_id"]) || present(top["conversation"]) || string(top["background"]) == "true" {
				return false, false // the answer depends on state the provider keeps
			}
			return true, fixed
		}
	case policy.ProviderAnthropic:
		if strings.HasSuffix(strings.TrimRight(path, "/"), "/v1/messages") {
			return true, isZero(top["temperature"])
		}
	}
	return false, false
}

// present reports a field given with a value other than null.
func present(raw []byte) bool { return len(raw) > 0 && string(raw) != "null" }

// isZero reports a JSON number equal to zero (0, 0.0, -0, 0e3).
func isZero(raw []byte) bool {
	if len(raw) == 0 || (raw[0] != '-' && (raw[0] < '0' || raw[0] > '9')) {
		return false
	}
	f, err := strconv.ParseFloat(string(raw), 64)
	return err == nil && f == 0
}

// errNotCanonical says a body has no one canonical form: a key repeated
// (providers differ on which value counts), or data after the value.
var errNotCanonical = errors.New("costing: no canonical form")

// maxCanonicalDepth bounds the nesting canonicalJSON follows.
const maxCanonicalDepth = 512

// canonicalJSON re-encodes a JSON body with every object's keys sorted and
// no insignificant space; numbers and strings keep their text (strings
// are escaped one way). It also returns the top-level object's fields, in
// canonical form. ok is false when the body is not valid UTF-8 JSON, has
// a repeated key, or escapes a UTF-16 surrogate (decoding could make two
// different bodies one): such a body is hashed as its bytes.
func canonicalJSON(body []byte) (out []byte, top map[string][]byte, ok bool) {
	if !utf8.Valid(body) || escapesSurrogate(body) {
		return nil, nil, false
	}
	dec := json.NewDecoder(bytes.NewReader(body))
	dec.UseNumber()
	cz := canonicalizer{dec: dec, top: map[string][]byte{}}
	out, err := cz.value(0)
	if err != nil {
		return nil, nil, false
	}
	if _, err := dec.Token(); !errors.Is(err, io.EOF) {
		return nil, nil, false
	}
	return out, cz.top, true
}

type canonicalizer struct {
	dec *json.Decoder
	top map[string][]byte
}

func (c *canonicalizer) value(depth int) ([]byte, error) {
	if depth > maxCanonicalDepth {
		return nil, errNotCanonical
	}
	tok, err := c.dec.Token()
	if err != nil {
		return nil, err
	}
	switch v := tok.(type) {
	case json.Delim:
		switch v {
		case '{':
			return c.object(depth)
		case '[':
			return c.array(depth)
		}
		return nil, errNotCanonical
	case string:
		return json.Marshal(v)
	case json.Number:
		return []byte(v), nil
	case bool:
		return strconv.AppendBool(nil, v), nil
	case nil:
		return []byte("null"), nil
	}
	return nil, errNotCanonical
}

type member struct {
	key string
	val []byte
}

func (c *canonicalizer) object(depth int) ([]byte, error) {
	var ms []member
	for c.dec.More() {
		tok, err := c.dec.Token()
		if err != nil {
			return nil, err
		}
		key, ok := tok.(string)
		if !ok {
			return nil, errNotCanonical
		}
		val, err := c.value(depth + 1)
		if err != nil {
			return nil, err
		}
		ms = append(ms, member{key, val})
	}
	if _, err := c.dec.Token(); err != nil { // '}'
		return nil, err
	}
	slices.SortFunc(ms, func(a, b member) int { return strings.Compare(a.key, b.key) })
	out := []byte{'{'}
	for i, m := range ms {
		if i > 0 {
			if ms[i-1].key == m.key {
				return nil, errNotCanonical
			}
			out = append(out, ',')
		}
		k, err := json.Marshal(m.key)
		if err != nil {
			return nil, err
		}
		out = append(append(append(out, k...), ':'), m.val...)
		if depth == 0 {
			c.top[m.key] = m.val
		}
	}
	return append(out, '}'), nil
}

func (c *canonicalizer) array(depth int) ([]byte, error) {
	out := []byte{'['}
	for n := 0; c.dec.More(); n++ {
		v, err := c.value(depth + 1)
		if err != nil {
			return nil, err
		}
		if n > 0 {
			out = append(out, ',')
		}
		out = append(out, v...)
	}
	if _, err := c.dec.Token(); err != nil { // ']'
		return nil, err
	}
	return append(out, ']'), nil
}

// escapesSurrogate reports a \uD800–\uDFFF escape anywhere in body.
func escapesSurrogate(body []byte) bool {
	for i := 0; i+5 < len(body); i++ {
		if body[i] == '\\' && body[i+1] == 'u' && (body[i+2]|0x20) == 'd' {
			if c := body[i+3] | 0x20; c == '8' || c == '9' || (c >= 'a' && c <= 'f') {
				return true
			}
		}
	}
	return false
}
