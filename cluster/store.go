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

// zeroCost says whether tryLocal reads the buckets of zero-cost takes
// (readZeroCost) or they were just read (zeroCostRead).
type zeroCost uint8

const (
	readZeroCost zeroCost = iota
	zeroCostRead
)

// need is what a local decision lacked.
type need struct {
	asks    []limiter.LeaseAsk
	slot    *limiter.SlotLease
	slice   policy.Money      // the size of a budget slice to take, or 0
	strict  bool              // only the shared store can decide it
	expired int               // local reservations ended at their estimate on the way
	denied  *limiter.Decision // refused here, by a key known to be short
}

// tryLocal decides req from leases and views, or says what it needs. s.mu
// is held.
func (s *Store) tryLocal(req limiter.Request, now time.Time, zc zeroCost) (limiter.Decision, *need, error) {
	var n need
	// A cost above a bucket's capacity never fits, whatever is leased: it
	// is refused here, and before any other reason (as ApplyHold ranks).
	for i, t := range req.Takes {
		if !t.Shadow && t.Cost > t.Limit.Capacity && s.leases[t.Key] != nil { // unknown: asked, to report its state
			d := s.deniedLocally(req, i, &lease{}, now)
			n.denied = &d
			return limiter.Decision{}, &n, nil
		}
	}
	read := req.Hold == nil
	for _, t := range req.Takes {
		read = read && t.Cost == 0
	}
	short := make([]bool, len(req.Takes))
	shortest := -1 // of the takes known to be short here, the one with the longest wait
	shortNeeds := make([]int64, len(req.Takes))
	exceeds := false // a take asked of the shared store can never fit: that is the reason to give
	for i, t := range req.Takes {
		l := s.leases[t.Key]
		if t.Cost == 0 {
			// A zero-cost take asks for the bucket's state. A request that
			// takes nothing is a read: it reads the shared store (a lease
			// of nothing) and reports what it holds with what is leased
			// here. Beside takes that cost, a bucket known here is reported
			// from what was last heard of it, without a round trip; one
			// never heard of is read, rather than reported empty.
			if zc == readZeroCost && (l == nil || read) {
				n.asks = append(n.asks, limiter.LeaseAsk{Key: t.Key, Limit: t.Limit})
			}
			continue
		}
		paused := l != nil && now.Before(l.pausedUntil)
		live := l != nil && now.Before(l.exp) && !paused
		if live && l.units >= t.Cost {
			continue
		}
		// What the lease still holds counts toward the call: ask only for
		// the rest, so that the shared bucket's answer (and its wait) is
		// the one a single store would give.
		need := t.Cost
		if live {
			need -= l.units
		}
		// A shadow bucket never denies; it is only reported: short when it
		// is known to be (or can never hold the cost), else leased as any.
		knownShort := l != nil && now.Before(l.shortUntil) && need >= l.shortNeed
		if t.Shadow && (paused || knownShort || t.Cost > t.Limit.Capacity) {
			short[i] = true
			continue
		}
		if paused {
			n.strict = true // the upstream asked to pause: the shared bucket says until when
			continue
		}
		if knownShort {
			l.noteRefusal(now, s.cfg.SyncEvery)
			if shortest < 0 || s.shortWait(l, need, now) > s.shortWait(s.leases[req.Takes[shortest].Key], shortNeeds[shortest], now) {
				shortest = i
			}
			shortNeeds[i] = need
			continue
		}
		if t.Cost > t.Limit.Capacity {
			exceeds = true
		}
		n.asks = append(n.asks, limiter.LeaseAsk{Key: t.Key, Limit: t.Limit, Want: s.want(t, l, now), Need: need})
	}
	if shortest >= 0 && !exceeds {
		d := s.deniedLocally(req, shortest, s.leases[req.Takes[shortest].Key], now)
		d.RetryAfter = s.shortWait(s.leases[req.Takes[shortest].Key], shortNeeds[shortest], now)
		d.Buckets[shortest].RetryAfter = d.RetryAfter
		n.denied = &d
		return limiter.Decision{}, &n, nil
	}
	h := req.Hold
	expired := 0
	if h != nil {
		if !h.Commit {
			_, live := s.resv[h.ID]
			_, remote := s.remote[h.ID]
			if _, ended := s.done[h.ID]; live || ended || remote {
				return limiter.Decision{}, nil, errDuplicate(h.ID)
			}
		}
		if limited(h.Budgets) {
			sl := s.slices[chainKey(h)]
			if sl == nil || !now.Before(sl.exp) || sl.left() < h.Cost {
				if n.slice = s.sliceSize(h, now); n.slice == 0 {
					n.strict = true // near a limit, or nothing known yet: the shared store decides
				}
			}
		}
		if h.Slot != nil && !h.Commit {
			sl := s.slots[h.Slot.Client]
			if sl != nil && sl.inUse >= sl.held {
				expired = s.expireSlots(h.Slot.Client, now)
			}
			if sl == nil || !now.Before(sl.exp) || sl.inUse >= sl.held || sl.max != h.Slot.Max {
				inUse := int64(0)
				if sl != nil {
					inUse = max(sl.inUse, sl.peak-1)
				}
				n.slot = &limiter.SlotLease{Client: h.Slot.Client, Max: h.Slot.Max, Holder: s.peers.Name(), Want: s.slotWant(inUse+1, h.Slot.Max), TTL: s.cfg.SlotTTL}
			}
		}
	}
	n.expired = expired
	if n.strict || len(n.asks) > 0 || n.slot != nil || n.slice > 0 {
		return limiter.Decision{}, &n, nil
	}
	// Everything is here: take it.
	return s.admitHere(req, short, expired, h != nil && limited(h.Budgets), now), nil, nil
}

// admitHere admits req on what this member holds: the units of its leases
// (but for the takes short marks, which are only reported), its hold from
// the chain's open slice (fromSlice) or booked, its slot from its lease of
// them. The caller has checked that all of it is there. s.mu is held.
func (s *Store) admitHere(req limiter.Request, short []bool, expired int, fromSlice bool, now time.Time) limiter.Decision {
	d := limiter.Decision{Allowed: true, Blocking: -1, BudgetBlocking: -1, Buckets: make([]limiter.BucketState, len(req.Takes)), Expired: expired}
	for i, t := range req.Takes {
		st := &d.Buckets[i]
		st.Key, st.Limit, st.Short = t.Key, t.Limit, short[i]
		l := s.leases[t.Key]
		if short[i] && l != nil && l.possible && t.Cost <= t.Limit.Capacity {
			st.RetryAfter = s.shortWait(l, t.Cost, now)
		}
		if !short[i] && t.Cost > 0 {
			l.units -= t.Cost
			l.spent += t.Cost
			l.used = now
			s.record(t.Key, t.Cost)
		}
		st.Remaining, st.ResetAfter = s.approxState(l, t.Limit, now)
	}
	h := req.Hold
	if h != nil {
		var from *slice
		if fromSlice {
			from = s.slices[chainKey(h)]
			from.spent += h.Cost
			d.Budgets = s.budgetStates(h, now)
		} else {
			d.Budgets = s.book(h, now)
		}
		if h.Slot != nil && !h.Commit {
			sl := s.slots[h.Slot.Client]
			sl.inUse++
			sl.peak = max(sl.peak, sl.inUse)
			sl.used = now
			d.InFlight = sl.inUse
		}
		if !h.Commit {
			r := &localResv{cost: h.Cost, period: h.Period, slice: from, exp: now.Add(h.TTL), charges: limiter.Charged(req.Takes, d)}
			for _, b := range h.Budgets {
				r.owners = append(r.owners, b.Owner)
			}
			if h.Slot != nil {
				r.client = h.Slot.Client
			}
			s.resv[h.ID] = r
		}
	}
	return d
}

// refresh gets what tryLocal lacked (leases, slots, a budget slice), one
// round trip each, and decides again. ok is false when the shared store
// must decide. The calls run to their end even if ctx is cancelled: what
// they take is recorded, and given back if unused.
func (s *Store) refresh(ctx context.Context, req limiter.Request, n *need, now time.Time) (limiter.Decision, bool, error) {
	bctx, cancel := background(ctx)
	defer cancel()
	// In the store's time (a request that names none), the asks and the
	// slot lease go in one batch with other calls' (coalesce.go).
	var together *leaseCall
	if bl, ok := s.raw.(limiter.BatchLeaser); ok && req.Now.IsZero() && (len(n.asks) > 0 || n.slot != nil) {
		together = &leaseCall{asks: n.asks}
		var release func()
		if n.slot != nil {
			release = s.holdSlotCall(n.slot.Client, n.slot.Max, func(sl *slotLease) int64 { return s.slotWant(max(sl.inUse+1, sl.peak), n.slot.Max) }, &together.slot)
		}
		s.leaseTogether(bctx, bl, together)
		if release != nil {
			if together.err == nil {
				s.slotsHeld(n.slot.Client, together.held.Held, time.Time{})
			}
			release()
		}
		if together.err != nil {
			return limiter.Decision{}, false, together.err
		}
	}
	if len(n.asks) > 0 {
		var grants []limiter.LeaseGrant
		var err error
		if together != nil {
			grants = together.grants
		} else if grants, err = s.shared.Lease(bctx, n.asks, req.Now); err != nil { // the request's time, if it names one
			return limiter.Decision{}, false, err
		}
		if len(grants) != len(n.asks) {
			return limiter.Decision{}, false, fmt.Errorf("cluster: %d lease grants for %d asks", len(grants), len(n.asks))
		}
		s.m.leases.Add(float64(len(grants)))
		// Of the buckets refused, the one to blame is the one ApplyHold
		// would: a cost that can never fit, else the longest wait, the
		// first on a tie.
		blame, blameAsk := -1, -1
		s.mu.Lock()
		for i, a := range n.asks {
			s.take(a, grants[i], now)
			s.leases[a.Key].storeClock = req.Now.IsZero()
			g := grants[i]
			if g.Granted > 0 || a.Need == 0 {
				continue
			}
			if idx := indexOf(req.Takes, a.Key); idx >= 0 && req.Takes[idx].Shadow {
				continue // reported short by tryLocal, never to blame
			}
			if blame < 0 || (!g.Possible && grants[blameAsk].Possible) ||
				(g.Possible == grants[blameAsk].Possible && g.Possible && g.RetryAfter > grants[blameAsk].RetryAfter) {
				if idx := indexOf(req.Takes, a.Key); idx >= 0 {
					blame, blameAsk = idx, i
				}
			}
		}
		var denied *limiter.Decision
		if blame >= 0 {
			d := s.deniedLocally(req, blame, s.leases[req.Takes[blame].Key], now)
			denied = &d
		}
		s.mu.Unlock()
		if denied != nil {
			return *denied, true, nil
		}
	}
	if n.slot != nil {
		var held, inFlight int64
		if together != nil {
			held, inFlight = together.held.Held, together.held.InFlight
		} else {
			var err error
			held, inFlight, err = s.leaseSlotsAt(bctx, req.Now, n.slot.Client, n.slot.Max, func(sl *slotLease) int64 { return s.slotWant(max(sl.inUse+1, sl.peak), n.slot.Max) })
			if err != nil {
				return limiter.Decision{}, false, err
			}
		}
		s.mu.Lock()
		var denied *limiter.Decision
		// The sync's prune may have dropped the client's entry (granted
		// none, none in use) since the lease call let it go: none in use.
		var inUse int64
		if sl := s.slots[n.slot.Client]; sl != nil {
			inUse = sl.inUse
		}
		if inUse >= held {
			// Refused as the shared store would: every bucket and budget
			// reported (one state each), nothing taken.
			d := limiter.Decision{Reason: limiter.ReasonConcurrency, Blocking: -1, BudgetBlocking: -1, InFlight: inFlight,
				Buckets: make([]limiter.BucketState, len(req.Takes)), Budgets: s.budgetStates(req.Hold, now)}
			for j, t := range req.Takes {
				d.Buckets[j] = limiter.BucketState{Key: t.Key, Limit: t.Limit}
				d.Buckets[j].Remaining, d.Buckets[j].ResetAfter = s.approxState(s.leases[t.Key], t.Limit, now)
			}
			denied = &d
		}
		s.mu.Unlock()
		if denied != nil {
			return *denied, true, nil
		}
	}
	if n.slice > 0 {
		// One call at a time takes a chain's slice: the others that missed
		// it meanwhile wait for it and decide from it.
		key := chainKey(req.Hold)
		s.mu.Lock()
		flight, flying := s.sliceFlight[key]
		if !flying {
			flight = make(chan struct{})
			s.sliceFlight[key] = flight
		}
		s.mu.Unlock()
		if flying {
			<-flight
		} else {
			ok, err := s.takeSlice(bctx, req, n.slice, now)
			s.mu.Lock()
			delete(s.sliceFlight, key)
			s.mu.Unlock()
			close(flight)
			if err != nil || !ok {
				return limiter.Decision{}, false, err
			}
		}
	}
	s.mu.Lock()
	d, again, err := s.tryLocal(req, now, zeroCostRead)
	s.mu.Unlock()
	if err != nil {
		return limiter.Decision{}, false, err
	}
	if again != nil {
		if again.denied != nil {
			return *again.denied, true, nil
		}
		return limiter.Decision{}, false, nil // raced away, or a hold only the shared store decides
	}
	return d, true, nil
}

// takeSlice reserves a slice of size of req's budget chain in the shared
// store and opens it; ok is false when the shared store must decide.
func (s *Store) takeSlice(bctx context.Context, req limiter.Request, size policy.Money, now time.Time) (ok bool, err error) {
	h := req.Hold
	s.mu.Lock()
	id, snaps := s.nextSliceID(), s.snapsOf(h)
	s.mu.Unlock()
	d, err := s.shared.Reserve(bctx, limiter.Request{Hold: &limiter.Hold{ID: id, TTL: s.cfg.SliceTTL + sliceGrace,
		Period: h.Period, Cost: size, Budgets: h.Budgets}, Now: req.Now})
	if err != nil {
		// It may have been reserved without an answer: release it once
		// the store answers (releasing an unknown id does nothing).
		s.mu.Lock()
		s.ends = append(s.ends, pendingEnd{id: id, outcome: limiter.OutcomeReleased})
		s.mu.Unlock()
		if errors.Is(err, limiter.ErrDuplicateReservation) {
			// The id is new: only this call's own first attempt can
			// have used it (a client that retried a request whose
			// answer was lost). No slice, then: the shared store
			// decides the call.
			return false, nil
		}
		return false, err
	}
	s.m.slices.Inc()
	s.mu.Lock()
	s.learnBudgets(h, d.Budgets, snaps, now)
	if d.Allowed {
		s.openSlice(h, id, size, now)
	}
	s.mu.Unlock()
	if !d.Allowed {
		return false, nil // closer to the limit than the view said: the shared store decides
	}
	return true, nil
}

func indexOf(takes []limiter.Take, k limiter.Key) int {
	for i, t := range takes {
		if t.Key == k {
			return i
		}
	}
	return -1
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
