package limiter

import (
	"context"
	"time"
)

// SlotGrant answers one SlotLease of a batch: what the holder now holds,
// and the client's slots in use in all (its own included).
type SlotGrant struct{ Held, InFlight int64 }

// BatchLeaser refreshes many bucket leases and slot leases in one atomic
// call (one round trip for a remote store), so that a fleet member serving
// many clients, each with its own buckets and slots, renews them all at
// once on a cadence instead of one call per key on the request path. Each
// ask and each slot lease is answered exactly as Leaser.Lease and
// SlotLeaser.LeaseSlots would answer it alone; a bucket or a client appears
// at most once. An optional extension of Leaser and SlotLeaser: a store
// without it is asked one call per kind.
type BatchLeaser interface {
	LeaseBatch(ctx context.Context, asks []LeaseAsk, slots []SlotLease, now time.Time) ([]LeaseGrant, []SlotGrant, error)
}

// BatchFinisher ends many reservations in one atomic call (one round trip
// for a remote store): each as Finisher.Finish would end it alone, for
// endings that give nothing back to buckets and book nothing beside
// (no Used, Throttles, Savings or call Record), such as a fleet member's budget slices
// settled at what was spent from them. An optional extension of Finisher.
type BatchFinisher interface {
	// FinishBatch answers each ending with its settlement or its error
	// (ErrUnknownReservation for an unknown id); err is for the call.
	FinishBatch(ctx context.Context, endings []Ending) (sts []Settlement, errs []error, err error)
}

// Plain reports whether e is an ending a BatchFinisher takes.
func (e Ending) Plain() bool {
	return len(e.Used) == 0 && len(e.Throttles) == 0 && len(e.Savings) == 0 && e.Record == nil
}
