// Package respcache keeps upstream answers so that a repeat or a retry is
// never paid twice: a response cache for calls the policy marks cacheable,
// idempotency records for retried calls, and the single flight that makes
// identical concurrent calls wait for the first. Two levels: L1, a
// bounded in-process LRU; L2, Redis, shared by a fleet. The service
// (admission) decides what is cacheable and keys it; this package only
// stores, finds, waits and forgets.
//
// Three Caches, one contract (the conformance suite in cachetest):
//
//   - Memory (NewMemory) is L1: an LRU bounded by estimated bytes (Size:
//     body, headers, key and a fixed overhead measured against the heap),
//     with a TTL per entry, a cap per entry, and flights of this process
//     (waiters block on a channel; a claim lapses after its lease).
//   - Redis (NewRedis) is L2: entries deflated under the limiter store's
//     hash tag ({P}:rc:…), written with SET PX; flights claimed with SET
//     NX PX (in begin.lua) and waited for by polling with backoff; indexes
//     per scope and route for Invalidate. A failing Redis degrades: Get
//     misses, Begin leads.
//   - Tiered (NewTiered) is L1 in front of L2: identical calls on one
//     member wait in L1 for the one that asks the fleet.
//
// Metrics (NewMetrics) are one set for all levels, passed in each config.
// Only TTLs and Stored follow a config's Clock; waits and leases are real
// time. docs/redis.md ("The response cache's storage") has the key
// layout and the costs.
package respcache

import (
	"context"
	"errors"
	"fmt"
	"strconv"
	"time"

	"github.com/tollgate/tollgate/policy"
)

// Entry is one recorded upstream answer, replayed as it came: status,
// headers (lower-case names, hop-by-hop and length headers left out by the
// caller) and the whole body (an event stream's bytes, for a stream).
type Entry struct {
	Status  int
	Headers map[string]string
	Body    []byte
	// Cost is what the original call settled at: a hit saves that much.
	Cost policy.Money
	// Stored is when the answer was recorded (its age on a hit).
	Stored time.Time
}

// Key names an entry: Scope is the client's cache scope (its own id, or the
// parent whose scope it shares by policy), Route the route, Hash the hash of
// the canonical request (and of the route's cache settings, so a reload that
// changes them misses the old entries). Kind separates the response cache
// from idempotency records.
type Key struct {
	Kind  Kind
	Scope string
	Route string
	Hash  string // hex, fixed length
}

// Kind is what an entry is for.
type Kind uint8

// Kinds of entries.
const (
	Response    Kind = iota // the response cache
	Idempotency             // a retried call's recorded answer
)

// String returns the kind's name, as the metrics' kind label shows it.
func (k Kind) String() string {
	switch k {
	case Response:
		return "response"
	case Idempotency:
		return "idempotency"
	}
	return "kind(" + strconv.Itoa(int(k)) + ")"
}

func (k Kind) valid() bool { return k <= Idempotency }

// Begin's outcomes.
type State uint8

const (
	// Found: an answer is recorded; Begin returns it.
	Found State = iota
	// Lead: nothing is recorded and nobody is fetching it: the caller
	// goes upstream and must Complete or Abandon the key.
	Lead
	// Busy: another call (here or on another member) is fetching it and
	// did not finish within the wait: the caller decides (go upstream
	// uncached, or refuse the retry).
	Busy
)

// String returns the state's name.
func (s State) String() string {
	switch s {
	case Found:
		return "found"
	case Lead:
		return "lead"
	case Busy:
		return "busy"
	}
	return "state(" + strconv.Itoa(int(s)) + ")"
}

// ErrTooLarge is returned by Complete for an entry over the size cap; it
// is not stored (and the flight ends, so waiters go upstream).
var ErrTooLarge = errors.New("respcache: entry too large")

// ErrNoScope is returned by Invalidate given neither a scope nor a route:
// dropping every entry of a kind is not offered (a policy reload that
// changes a route's cache settings already misses its old entries, since
// they are part of the hash).
var ErrNoScope = errors.New("respcache: invalidate needs a scope, a route or both")

// ErrClosed is returned by a cache used after Close.
var ErrClosed = errors.New("respcache: closed")

// ErrInvalidKey is returned for a key of an unknown kind or without a hash.
var ErrInvalidKey = errors.New("respcache: invalid key")

func (k Key) validate() error {
	if !k.Kind.valid() || k.Hash == "" {
		return fmt.Errorf("%w: kind %v, hash %q", ErrInvalidKey, k.Kind, k.Hash)
	}
	return nil
}

// Clock tells the time of entries' expiry and of Stored. Waits and leases
// are real time (they bound how long a call blocks; Redis measures leases
// itself), so only TTLs follow a fake clock in tests.
type Clock interface {
	Now() time.Time
}

type systemClock struct{}

func (systemClock) Now() time.Time { return time.Now() }

// Cache is the two-level store. Implementations are safe for concurrent
// use and honour ctx; a failing L2 degrades to L1 alone (counted, never an
// error that refuses a call).
type Cache interface {
	// Get returns the entry under k, or false.
	Get(ctx context.Context, k Key) (Entry, bool)
	// Begin looks k up and, when nothing is recorded, either makes the
	// caller the leader of its flight (Lead) or waits up to wait for the
	// leader to Complete it (Found) or give up (Lead: the waiter leads
	// now), returning Busy when the wait ends first. A leader's claim
	// lapses after lease, in case it dies.
	Begin(ctx context.Context, k Key, wait, lease time.Duration) (Entry, State)
	// Complete records e under k for ttl and ends k's flight, waking its
	// waiters.
	Complete(ctx context.Context, k Key, e Entry, ttl time.Duration) error
	// Abandon ends k's flight without an entry (the upstream failed):
	// one waiter becomes the leader.
	Abandon(ctx context.Context, k Key)
	// Invalidate drops every entry of kind under scope and route ("" for
	// every route of the scope; scope "" for every scope of the route),
	// and returns how many it dropped.
	Invalidate(ctx context.Context, kind Kind, scope, route string) (int, error)
	// Delete drops one entry.
	Delete(ctx context.Context, k Key) (bool, error)
	Close() error
}
