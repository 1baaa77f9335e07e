package admission

import (
	"sync"
	"time"

	"github.com/tollgate/tollgate/policy"
)

// The last refusals, for the status page: who was refused, on what, and
// why. Only codes and names are kept, never a request body or header; a
// path the worker sent (an unmatched route) is cut to maxRefusalField
// bytes, so the ring's memory is bounded whatever workers send.

// refusalRing is how many refusals the status page shows.
const refusalRing = 50

// maxRefusalField bounds each text a refusal keeps.
const maxRefusalField = 160

// Refusal is one refused call.
type Refusal struct {
	At time.Time
	// Client is the client id the call named, "" when it named none or
	// an invalid one (ids are validated: letters, digits and ._:/-).
	Client string
	// Route is the policy's route name, or for a call no route matched the
	// host and path the worker sent (untrusted: render it escaped).
	Route   string
	Outcome Outcome
	Reason  string
}

// refusals is a fixed ring of the last refusalRing refusals. Safe for
// concurrent use; add takes one short lock and allocates nothing.
type refusals struct {
	mu   sync.Mutex
	ring [refusalRing]Refusal
	next int // where the next refusal goes
	n    int // how many the ring holds
}

func (r *refusals) add(f Refusal) {
	r.mu.Lock()
	r.ring[r.next] = f
	r.next = (r.next + 1) % len(r.ring)
	r.n = min(r.n+1, len(r.ring))
	r.mu.Unlock()
}

// list returns the refusals, newest first.
func (r *refusals) list() []Refusal {
	r.mu.Lock()
	defer r.mu.Unlock()
	out := make([]Refusal, r.n)
	for i := range r.n {
		out[i] = r.ring[(r.next-1-i+2*len(r.ring))%len(r.ring)]
	}
	return out
}

// refused reports whether v is a refusal the status page lists: the call
// did not go upstream and was not answered from the cache.
func refused(v *Verdict) bool {
	return !v.Allowed && v.Outcome != OutcomeCached
}

// refusalOf describes v, the answer to r, for the ring. A call refused
// before its client was looked at (no route) still names the client it
// asserted, when that is a well-formed id.
func refusalOf(r *Request, v *Verdict, at time.Time) Refusal {
	route := v.Route
	if route == "" && (v.Host != "" || v.Path != "") {
		route = clip(v.Host + v.Path)
	}
	client := v.Client
	if client == "" && r.Client != "" && v.Reason != ReasonInvalidClient && policy.ValidClientID(r.Client) == nil {
		client = r.Client
	}
	return Refusal{At: at, Client: clip(client), Route: route, Outcome: v.Outcome, Reason: v.Reason}
}

// clip cuts s to maxRefusalField bytes on a rune boundary.
func clip(s string) string {
	if len(s) <= maxRefusalField {
		return s
	}
	return cut(s, maxRefusalField) + "…"
}

// Refusals lists the last refused calls, newest first (at most 50).
func (s *Service) Refusals() []Refusal { return s.refusals.list() }
