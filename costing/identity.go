package costing

import (
	"crypto/sha256"
	"encoding/binary"
	"encoding/hex"
	"strconv"
	"strings"

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
