package admission

// Request is one outbound call as Tollgate sees it, free of any Envoy type:
// the transport (authz) builds it from an ext_authz check or the JSON API.
type Request struct {
	// ID identifies the call in logs (Envoy's x-request-id when present).
	ID     string
	Client string
	Method string
	Host   string
	// Path is the request path without its query string.
	Path    string
	Headers map[string]string // lower-case names
	Body    []byte
	// BodySize is the body's full length: larger than len(Body) when Envoy
	// sent only the first bytes of a large body.
	BodySize int64
	// Invalid, when not empty, says why the request could not be read; the
	// policy decides whether such a call passes.
	Invalid string
}
