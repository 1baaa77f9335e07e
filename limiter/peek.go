package limiter

import "context"

// Peeker decides a Request as Reserve would at that moment, and changes
// nothing: no bucket is charged or advanced in the store, no hold is
// taken, no slot, no lapsed reservation committed. It answers "would this
// call pass now?" (the JSON API's check and availability) without ever
// leaving something behind to release. A hold's id is not checked for
// reuse (nothing is recorded under it), and a hold past its TTL that Reserve
// would first commit still shows as reserved rather than spent (the same
// total, so the same decision). Safe for concurrent use; blocks at
// most one round trip, honouring ctx.
type Peeker interface {
	Peek(ctx context.Context, req Request) (Decision, error)
}
