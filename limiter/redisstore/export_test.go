package redisstore

// SetStepHook has f called after each step of a spread admission or
// finish that has a step after it ("pool": a step outside the tenant's
// slot, before the tenant's; "finish": the tenant's finish, before the
// pools' refunds). An error from f fails the call there; ErrCrash stops
// it as a process killed there would, doing nothing more.
func (s *Store) SetStepHook(f func(step string) error) { s.hook = f }

// ErrCrash is the hook's error for a process that dies between steps.
var ErrCrash = errCrash

// OwnerPrefix and PoolPrefix are the prefixes of the slots of an owner's
// keys and of a shared pool's (layout.go).
func (s *Store) OwnerPrefix(owner string) string { return s.ownerP(owner) }
func (s *Store) PoolPrefix(pool string) string   { return s.poolP(pool) }

// HashTagForTest is the tag layout.go gives a name inside a hash tag.
func HashTagForTest(s string) string { return hashTag(s) }
