// Package authz is Tollgate's front door: the Envoy-facing gRPC services
// (ext_authz today) and the admin HTTP server, the admission pipeline they
// share (Decider), and the translation between Envoy's messages and
// Tollgate's plain types. Envoy types stay in the envoy_*.go files; nothing
// below this package sees them.
package authz

// Request is one outbound call as Tollgate sees it, free of any Envoy type.
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
