package cluster

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/tollgate/tollgate/limiter"
	"github.com/tollgate/tollgate/policy"
)

// Shared is the fleet's store as the cluster layer uses it: the Redis
// store implements it (the memory store too, for tests in one process).
type Shared interface {
	limiter.Backend
	limiter.Adjuster
	limiter.Finisher
	limiter.Leaser
	limiter.SlotLeaser
	limiter.Booker
	limiter.Peeker
	limiter.Historian
	limiter.Recorder
}

// Peers is the fleet as the Store sees it: a *Node. Methods must not block.
type Peers interface {
	Name() string
	Live() int
	// Share is this member's share of the fleet's demand for a pool.
	Share(pool string) float64
	Spend(deltas []limiter.SpendDelta)
	Backoff(pool string, pause time.Duration, remaining int64)
}

// Config configures a Store.
type Config struct {
	// LeaseTTL is how long a slice of a bucket is spent locally before what
	// is left goes back.
	LeaseTTL time.Duration
	// SlotTTL is how long leased concurrency slots last unless renewed: a
	// sidecar that dies loses its slots after it.
	SlotTTL time.Duration
	// SyncEvery is how often spend decided locally is booked, budget views
	// refreshed, lapsed leases returned and slots renewed.
	SyncEvery time.Duration
	// SliceTTL is how long a slice of a budget chain is spent locally
	// before it is settled at what was spent from it.
	SliceTTL time.Duration
	// ViewTTL is how old a budget view may be and still size a slice.
	ViewTTL time.Duration
	// NearLimitPercent: a bucket with less than this share of its capacity
	// left leases single calls only; a budget with less than it left is
	// decided by the shared store, call by call.
	NearLimitPercent int64
	// DemandWindow is the window demand is measured over.
	DemandWindow time.Duration
	// DownAfter is how long every call to the shared store must have
	// failed for want of it before the member takes it for down and
	// decides on its own share (outage mode); until then a call it could
	// not make is decided on what the member holds (see health.go).
	DownAfter time.Duration
	// Clock is the time of local decisions (nil: the system clock).
	Clock  limiter.Clock
	Logger *slog.Logger
}

// DefaultConfig returns leases of one second, slots of ten, a sync every
// 200 ms, and a shared store taken for down after a second without an
// answer.
func DefaultConfig() Config {
	return Config{LeaseTTL: time.Second, SlotTTL: 10 * time.Second, SliceTTL: 5 * time.Second, SyncEvery: 200 * time.Millisecond,
		ViewTTL: 2 * time.Second, NearLimitPercent: 10, DemandWindow: 5 * time.Second, DownAfter: time.Second}
}

// Validate reports a configuration that cannot work.
func (c Config) Validate() error {
	if c.LeaseTTL <= 0 || c.SlotTTL <= 0 || c.SliceTTL <= 0 || c.SyncEvery <= 0 || c.ViewTTL <= 0 || c.DemandWindow <= 0 || c.DownAfter <= 0 {
		return errors.New("cluster: lease, slot, slice, sync, view, demand and down-after durations must be positive")
	}
	if c.NearLimitPercent < 0 || c.NearLimitPercent > 100 {
		return fmt.Errorf("cluster: near-limit percent %d out of [0, 100]", c.NearLimitPercent)
	}
	return nil
}

var (
	_ limiter.Backend  = (*Store)(nil)
	_ limiter.Adjuster = (*Store)(nil)
	_ limiter.Finisher = (*Store)(nil)
)

// Store decides admissions locally where it safely can, and asks the
// shared store otherwise (see the package comment). It is safe for
// concurrent use.
//
// Locks, in the order they may be taken (a lock is never taken while one
// later in the list is held):
//
//  1. slotLease.call: one LeaseSlots call per client at a time; held across
//     that round trip, so s.mu is taken and released inside it.
//  2. s.mu: every field between it and demandMu. It is never held across a
//     call to the shared store: a decision reads and writes under it, the
//     round trip happens between two critical sections, and what it brings
//     back is applied under the second.
//  3. demandMu: the demand rates (record runs under s.mu; Demand alone).
//  4. Peers' own locks: Live and Share are called under s.mu (a Node reads
//     Demand, memberlist's member list and Node.mu, one at a time). So
//     nothing the Node calls while holding one of its locks may take s.mu:
//     MembersChanged takes none, and the Node calls Spend and Backoff only
//     after it has let go of its own.
//
// The fields under s.mu stay under one lock because they change together:
// a local reservation moves from resv to done in the same step that tryLocal
// checks both for a duplicate id; a snap reads a view and the journal
// (unbooked) as of one instant, which rebase relies on; a slice moves from
// slices to ends in the step that Usage reads both; outage mode replaces
// leases, slots and views with its own buckets at one instant. Giving the
// journal, the done records or the queued ends a lock of their own would
// need a second lock taken inside this one at each of those steps, across
// ledger.go and sync.go, which are being reworked on another branch; it
// is left for after that lands. No critical section waits on I/O, so the
// one lock is held for microseconds.
type Store struct {
	cfg    Config
	shared Shared // raw, with each call's outcome noted (watched, health.go)
	raw    Shared // as given: it tells its errors apart
	peers  Peers
	log    *slog.Logger
	m      *metrics

	mu     sync.Mutex // see above: guards every field down to demandMu
	leases map[limiter.Key]*lease
	slots  map[string]*slotLease
	slices map[string]*slice // by budget chain
	views  map[viewKey]*view
	resv   map[string]*localResv
	done   map[string]limiter.Settlement
	doneQ  []doneItem
	// remote holds the ids of the reservations the shared store made for
	// calls this member sent it, until well after they end: a hold that
	// reuses one is refused here as the shared store would refuse it.
	remote  map[string]struct{}
	remoteQ []doneItem
	journal map[viewKey]policy.Money // decided, not yet booked, by budget period
	// saved holds the savings of local calls, not yet booked (savings.go).
	saved map[viewKey]map[string]policy.Money
	// returning holds the unused units of lapsed leases, given back at the
	// next sync.
	returning []limiter.Adjustment
	inflight  *batch       // being booked (resent as is until it lands)
	ends      []pendingEnd // settles and releases of shared reservations not yet told
	// records are the call records of local reservations that ended, not
	// yet booked in the shared store; recBatch the batch in flight (resent
	// as is until it lands), recSeq numbers batches.
	records  []limiter.RecordedEnd
	recBatch *recordBatch
	recSeq   uint64
	batchSeq uint64
	epoch    string
	outage   bool
	outSince time.Time
	outBkt   map[limiter.Key]*limiter.Bucket // outage mode: this member's share of each bucket
	outLimit map[limiter.Key]limiter.Limit
	outSlots map[string]int64 // outage mode: this member's calls in flight per client

	// failingSince is when calls to the shared store began to fail for want
	// of it (unix ns), 0 while it answers (health.go).
	failingSince atomic.Int64

	sliceFlight map[string]chan struct{} // by chain: a slice being taken (closed when done)
	sliceCalls  map[string]int64         // by chain: calls of a slice (slice.go)

	co coalescer // calls waiting to lease together (coalesce.go); its lock is taken alone

	demandMu sync.Mutex       // taken inside s.mu, or alone
	demand   map[string]*rate // units a second by pool, this member's
	weighted map[string]*rate // the same asked, weighted by priority (priority.go)

	stop      chan struct{}
	loopDone  chan struct{}
	closeOnce sync.Once
	closeErr  error
}

// localResv is a reservation decided here: its estimate is already spent
// (from a slice, or booked), as a lapsed reservation would be; its slot is
// counted here.
type localResv struct {
	cost   policy.Money
	owners []string
	period string
	slice  *slice // the slice it was spent from, nil when booked
	client string // whose slot it holds, "" for none
	exp    time.Time
	// charges are what its admission took from each bucket (of this
	// member's leases, or of its shares in outage mode), refunded in part
	// when it is finished.
	charges []limiter.Charge
	outage  bool // decided in outage mode
}

type doneItem struct {
	id  string
	exp time.Time
}

// NewStore wraps shared. peers may be nil (a fleet of one). It starts the
// sync loop that Close stops.
func NewStore(cfg Config, shared Shared, peers Peers, reg prometheus.Registerer) (*Store, error) {
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	if shared == nil {
		return nil, errors.New("cluster: nil shared store")
	}
	if cfg.Clock == nil {
		cfg.Clock = limiter.SystemClock{}
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.New(slog.DiscardHandler)
	}
	if peers == nil {
		peers = alone{}
	}
	if reg == nil {
		reg = prometheus.NewRegistry()
	}
	s := &Store{cfg: cfg, raw: shared, peers: peers, log: cfg.Logger.With(slog.String("component", "cluster")),
		leases: map[limiter.Key]*lease{}, slots: map[string]*slotLease{}, slices: map[string]*slice{}, views: map[viewKey]*view{},
		resv: map[string]*localResv{}, done: map[string]limiter.Settlement{}, remote: map[string]struct{}{}, sliceFlight: map[string]chan struct{}{}, sliceCalls: map[string]int64{},
		demand: map[string]*rate{}, weighted: map[string]*rate{}, journal: map[viewKey]policy.Money{},
		epoch: fmt.Sprintf("%s:%d", peers.Name(), cfg.Clock.Now().UnixNano()),
		stop:  make(chan struct{}), loopDone: make(chan struct{})}
	s.shared = watched{Shared: shared, s: s}
	var err error
	if s.m, err = newMetrics(reg, s); err != nil {
		return nil, err
	}
	go s.loop()
	return s, nil
}

// alone is the fleet of one.
type alone struct{}

func (alone) Name() string                         { return "alone" }
func (alone) Live() int                            { return 1 }
func (alone) Share(string) float64                 { return 1 }
func (alone) Spend([]limiter.SpendDelta)           {}
func (alone) Backoff(string, time.Duration, int64) {}

// Reserve decides one admission: locally when every bucket it touches has
// a lease that covers it and its hold (budgets far from their limit, a
// leased slot) can be decided here; else it refreshes what is short (one
// lease call for all its buckets, one for its slots) and decides locally,
// or lets the shared store decide it (one round trip). When the shared
// store does not answer, it decides on what this member holds, or in
// outage mode once the store is down (health.go).
func (s *Store) Reserve(ctx context.Context, req limiter.Request) (limiter.Decision, error) {
	if err := ctx.Err(); err != nil {
		return limiter.Decision{}, err
	}
	if err := req.Validate(); err != nil {
		return limiter.Decision{}, err
	}
	now := req.Now
	if now.IsZero() {
		now = s.cfg.Clock.Now()
	}
	s.recordAsked(req, s.cfg.Clock.Now()) // demand is measured in this member's time
	s.mu.Lock()
	if s.outage {
		d, err := s.decideOutage(req, now)
		s.mu.Unlock()
		return s.m.count(pathOutage, d, err)
	}
	d, need, err := s.tryLocal(req, now, readZeroCost)
	s.mu.Unlock()
	if err != nil {
		return limiter.Decision{}, err
	}
	if need == nil {
		return s.m.count(pathLocal, d, nil)
	}
	if need.denied != nil {
		return s.m.count(pathLocal, *need.denied, nil)
	}
	if !need.strict {
		d, ok, err := s.refresh(ctx, req, need, now)
		if err != nil {
			return s.failover(ctx, req, now, err)
		}
		if ok {
			d.Expired += need.expired
			return s.m.count(pathLease, d, nil)
		}
	}
	// The shared store decides with what it has been told: tell it what
	// this member spent on the call's budgets first.
	if err := s.flush(ctx, req.Hold); err != nil && s.unreachable(ctx, err) {
		return s.failover(ctx, req, now, err)
	}
	s.mu.Lock()
	snaps := s.snapsOf(req.Hold)
	s.mu.Unlock()
	d2, err := s.shared.Reserve(ctx, req)
	if err != nil {
		if h := req.Hold; h != nil && !h.Commit && (s.unreachable(ctx, err) || ctx.Err() != nil) && !s.unsent(err) {
			// It may have been reserved without an answer: release it once
			// the store answers (an unknown id is nothing to release), so
			// that it never stands beside what is decided here.
			s.mu.Lock()
			s.ends = append(s.ends, pendingEnd{id: h.ID, outcome: limiter.OutcomeReleased})
			s.mu.Unlock()
		}
		return s.failover(ctx, req, now, err)
	}
	s.mu.Lock()
	s.learn(req, d2, snaps, now)
	if h := req.Hold; h != nil && !h.Commit && d2.Allowed {
		s.remember(h.ID, now, now.Add(h.TTL+doneRetention))
		// A release queued for this id after an earlier try whose answer
		// was lost (above) is void: the store granted the id now, so that
		// try never reserved it, and the release would end this call's
		// live reservation (a held call tries again under the same id).
		s.ends = slices.DeleteFunc(s.ends, func(e pendingEnd) bool {
			return e.id == h.ID && e.outcome == limiter.OutcomeReleased && e.chain == ""
		})
	}
	s.mu.Unlock()
	d2.Expired += need.expired
	return s.m.count(pathShared, d2, nil)
}

// failover decides req without the shared store when err says it could
// not serve the call: on what this member holds while it is only slow, in
// outage mode once it is down (health.go). Any other error is returned.
func (s *Store) failover(ctx context.Context, req limiter.Request, now time.Time, err error) (limiter.Decision, error) {
	if !s.unreachable(ctx, err) {
		return limiter.Decision{}, err
	}
	s.mu.Lock()
	if s.outage || s.down(s.cfg.Clock.Now()) {
		s.enterOutage(now, err)
		d, derr := s.decideOutage(req, now)
		s.mu.Unlock()
		return s.m.count(pathOutage, d, derr)
	}
	d, derr := s.decideHeld(req, now)
	s.mu.Unlock()
	return s.m.count(pathSlow, d, derr)
}

// unavailability is what a shared store may say about its errors: the
// Redis store tells a Redis that cannot serve (no connection, a timeout,
// loading after a restart) from one that refused the call.
type unavailability interface{ Unavailable(error) bool }

// unreachable reports whether err says the shared store could not serve
// the call at all (so outage mode is in order), rather than refused it.
func (s *Store) unreachable(ctx context.Context, err error) bool {
	if err == nil || ctx.Err() != nil {
		return false // the caller gave up: not the store's fault
	}
	if u, ok := s.raw.(unavailability); ok {
		return u.Unavailable(err)
	}
	var ne net.Error
	return errors.As(err, &ne) || errors.Is(err, io.EOF) || errors.Is(err, context.DeadlineExceeded)
}

// backgroundTimeout bounds a call the member makes for itself (a lease, a
// slice, a settle it queued): it is not cut short when the request that
// prompted it goes away, so that what it took is always recorded.
const backgroundTimeout = 2 * time.Second

func background(ctx context.Context) (context.Context, context.CancelFunc) {
	return context.WithTimeout(context.WithoutCancel(ctx), backgroundTimeout)
}

// Close returns what this member holds (unused leases, leased slots),
// books what it decided, and stops the sync loop. The shared store stays
// open: it belongs to the caller.
func (s *Store) Close() error {
	s.closeOnce.Do(func() {
		close(s.stop)
		<-s.loopDone
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		s.closeErr = s.handBack(ctx)
	})
	return s.closeErr
}

// Kill stops the sync loop and hands nothing back: what a crashed sidecar
// leaves behind (for tests and fault drills). Close after Kill does
// nothing more.
func (s *Store) Kill() {
	s.closeOnce.Do(func() {
		close(s.stop)
		<-s.loopDone
	})
}

// remember notes the id of a reservation the shared store holds, until
// forget, and forgets the oldest ones past theirs at now (at most maxDone
// are kept). s.mu is held.
func (s *Store) remember(id string, now, forget time.Time) {
	s.remote[id] = struct{}{}
	s.remoteQ = append(s.remoteQ, doneItem{id: id, exp: forget})
	k := 0
	for k < len(s.remoteQ) && (len(s.remoteQ)-k > maxDone || !now.Before(s.remoteQ[k].exp)) {
		delete(s.remote, s.remoteQ[k].id)
		k++
	}
	if k > 0 {
		s.remoteQ = append(s.remoteQ[:0:0], s.remoteQ[k:]...)
	}
}

func errDuplicate(id string) error { return fmt.Errorf("%w: %q", limiter.ErrDuplicateReservation, id) }

// MembersChanged is called when a member joins or leaves: shares change.
// The Node calls it holding memberlist's lock, which s.mu may wait for
// (Peers.Live): it must never take s.mu.
func (s *Store) MembersChanged() {}
