package cluster

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"math"
	"net"
	"sync"
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
	// Clock is the time of local decisions (nil: the system clock).
	Clock  limiter.Clock
	Logger *slog.Logger
}

// DefaultConfig returns leases of one second, slots of ten, and a sync
// every 200 ms.
func DefaultConfig() Config {
	return Config{LeaseTTL: time.Second, SlotTTL: 10 * time.Second, SliceTTL: 5 * time.Second, SyncEvery: 200 * time.Millisecond,
		ViewTTL: 2 * time.Second, NearLimitPercent: 10, DemandWindow: 5 * time.Second}
}

// Validate reports a configuration that cannot work.
func (c Config) Validate() error {
	if c.LeaseTTL <= 0 || c.SlotTTL <= 0 || c.SliceTTL <= 0 || c.SyncEvery <= 0 || c.ViewTTL <= 0 || c.DemandWindow <= 0 {
		return errors.New("cluster: lease, slot, slice, sync, view and demand durations must be positive")
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
type Store struct {
	cfg    Config
	shared Shared
	peers  Peers
	log    *slog.Logger
	m      *metrics

	mu      sync.Mutex
	leases  map[limiter.Key]*lease
	slots   map[string]*slotLease
	slices  map[string]*slice // by budget chain
	views   map[viewKey]*view
	resv    map[string]*localResv
	done    map[string]limiter.Settlement
	doneQ   []doneItem
	journal map[viewKey]policy.Money // decided, not yet booked, by budget period
	// returning holds the unused units of lapsed leases, given back at the
	// next sync.
	returning []limiter.Adjustment
	inflight  *batch       // being booked (resent as is until it lands)
	ends      []pendingEnd // settles and releases of shared reservations not yet told
	batchSeq  uint64
	epoch     string
	outage    bool
	outSince  time.Time
	outBkt    map[limiter.Key]*limiter.Bucket // outage mode: this member's share of each bucket
	outLimit  map[limiter.Key]limiter.Limit
	outSlots  map[string]int64 // outage mode: this member's calls in flight per client

	demandMu sync.Mutex
	demand   map[string]*rate // units a second by pool, this member's

	stop      chan struct{}
	loopDone  chan struct{}
	closeOnce sync.Once
	closeErr  error
}

type lease struct {
	limit limiter.Limit
	units int64 // whole units left to spend here
	exp   time.Time
	// left is what the shared bucket held after the last grant (whole units).
	left   int64
	leftAt time.Time
	// shortUntil: the shared bucket said no; until then, calls are refused
	// here without asking (the short-circuit of a key over its limit).
	shortUntil time.Time
	possible   bool
	// misses counts refusals in a row: members contending for the refill
	// of an empty bucket ask less often, so that denials stay local.
	misses int
	// pausedUntil: the upstream asked to back off; no lease until then.
	pausedUntil time.Time
}

type slotLease struct {
	max, held, inUse int64
	exp, used        time.Time
	busy             int        // leaseSlots calls under way: the lease is not forgotten meanwhile
	call             sync.Mutex // one leaseSlots call at a time
}

type viewKey struct{ owner, period string }

// view is a budget as this member last saw it: base (spent and reserved)
// from the shared store at fetched, what is known to have been spent since
// (here, and elsewhere by gossip), and mine, this member's own part of it.
// A member spends locally at most its share of what was left above the
// margin at the fetch; the next fetch starts a new allowance.
type view struct {
	limit             policy.Money
	base, since, mine policy.Money
	fetched, touch    time.Time
}

// snap is a view before a read of the shared store: what was spent here
// meanwhile is added to what the read returns.
type snap struct {
	since, mine, unbooked policy.Money
}

func (s *Store) snapOf(owner, period string) snap {
	sn := snap{unbooked: s.unbooked(owner, period)}
	if v := s.views[viewKey{owner, period}]; v != nil {
		sn.since, sn.mine = v.since, v.mine
	}
	return sn
}

// rebase sets v from a read of the shared store (base: its spent and
// reserved) taken after sn. What was unbooked at sn may have been booked
// before the read and so be in base too: counting it twice errs on the
// safe side until the next read. s.mu is held.
func (v *view) rebase(base policy.Money, sn snap, now time.Time) {
	v.since = sn.unbooked + (v.since - sn.since)
	v.mine = sn.unbooked + (v.mine - sn.mine)
	v.base, v.fetched = base, now
}

func (v *view) remaining() policy.Money {
	if v.limit < 0 {
		return math.MaxInt64
	}
	return v.limit - v.base - v.since
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

type batch struct {
	id     string
	deltas []limiter.SpendDelta
}

// pendingEnd is a settle or release of a reservation the shared store
// holds, decided while it was unreachable; it is told when it returns.
type pendingEnd struct {
	id      string
	outcome limiter.Outcome
	actual  policy.Money
	used    []limiter.PoolUse // refunds the shared store gives from its record
	// For a slice: its chain (chainKey, and the owners in the period) and
	// the size reserved.
	chain  string
	owners []string
	period string
	size   policy.Money
	// tries counts the store's refusals (not outages) so far.
	tries int
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
	s := &Store{cfg: cfg, shared: shared, peers: peers, log: cfg.Logger.With(slog.String("component", "cluster")),
		leases: map[limiter.Key]*lease{}, slots: map[string]*slotLease{}, slices: map[string]*slice{}, views: map[viewKey]*view{},
		resv: map[string]*localResv{}, done: map[string]limiter.Settlement{}, demand: map[string]*rate{}, journal: map[viewKey]policy.Money{},
		epoch: fmt.Sprintf("%s:%d", peers.Name(), cfg.Clock.Now().UnixNano()),
		stop:  make(chan struct{}), loopDone: make(chan struct{})}
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
// store cannot be reached, it decides in outage mode.
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
	s.mu.Lock()
	if s.outage {
		d, err := s.decideOutage(req, now)
		s.mu.Unlock()
		return s.m.count(pathOutage, d, err)
	}
	d, need, err := s.tryLocal(req, now)
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
		return s.failover(ctx, req, now, err)
	}
	s.mu.Lock()
	s.learn(req, d2, snaps, now)
	s.mu.Unlock()
	return s.m.count(pathShared, d2, nil)
}

// failover enters outage mode when err says the shared store is
// unreachable, and decides req there; any other error is returned.
func (s *Store) failover(ctx context.Context, req limiter.Request, now time.Time, err error) (limiter.Decision, error) {
	if !s.unreachable(ctx, err) {
		return limiter.Decision{}, err
	}
	s.mu.Lock()
	s.enterOutage(now, err)
	d, derr := s.decideOutage(req, now)
	s.mu.Unlock()
	return s.m.count(pathOutage, d, derr)
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
	if u, ok := s.shared.(unavailability); ok {
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

// need is what a local decision lacked.
type need struct {
	asks   []limiter.LeaseAsk
	slot   *limiter.SlotLease
	slice  policy.Money      // the size of a budget slice to take, or 0
	strict bool              // only the shared store can decide it
	denied *limiter.Decision // refused here, by a key known to be short
}

// tryLocal decides req from leases and views, or says what it needs. s.mu
// is held.
func (s *Store) tryLocal(req limiter.Request, now time.Time) (limiter.Decision, *need, error) {
	var n need
	short := make([]bool, len(req.Takes))
	for i, t := range req.Takes {
		l := s.leases[t.Key]
		if t.Cost == 0 {
			continue
		}
		paused := l != nil && now.Before(l.pausedUntil)
		if l != nil && l.units >= t.Cost && now.Before(l.exp) && !paused {
			continue
		}
		if t.Shadow {
			short[i] = true // a shadow bucket never denies; it is only reported
			continue
		}
		if paused {
			n.strict = true // the upstream asked to pause: the shared bucket says until when
			continue
		}
		if l != nil && now.Before(l.shortUntil) {
			d := s.deniedLocally(req, i, l, now)
			n.denied = &d
			return limiter.Decision{}, &n, nil
		}
		n.asks = append(n.asks, limiter.LeaseAsk{Key: t.Key, Limit: t.Limit, Want: s.want(t, l, now), Need: t.Cost})
	}
	h := req.Hold
	if h != nil {
		if !h.Commit {
			_, live := s.resv[h.ID]
			if _, ended := s.done[h.ID]; live || ended {
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
			if sl == nil || !now.Before(sl.exp) || sl.inUse >= sl.held || sl.max != h.Slot.Max {
				inUse := int64(0)
				if sl != nil {
					inUse = sl.inUse
				}
				n.slot = &limiter.SlotLease{Client: h.Slot.Client, Max: h.Slot.Max, Holder: s.peers.Name(), Want: s.slotWant(inUse+1, h.Slot.Max), TTL: s.cfg.SlotTTL}
			}
		}
	}
	if n.strict || len(n.asks) > 0 || n.slot != nil || n.slice > 0 {
		return limiter.Decision{}, &n, nil
	}
	// Everything is here: take it.
	d := limiter.Decision{Allowed: true, Blocking: -1, BudgetBlocking: -1, Buckets: make([]limiter.BucketState, len(req.Takes))}
	for i, t := range req.Takes {
		st := &d.Buckets[i]
		st.Key, st.Limit, st.Short = t.Key, t.Limit, short[i]
		l := s.leases[t.Key]
		if !short[i] && t.Cost > 0 {
			l.units -= t.Cost
			s.record(t.Key, t.Cost)
		}
		st.Remaining, st.ResetAfter = s.approxState(l, t.Limit, now)
	}
	if h != nil {
		var from *slice
		if limited(h.Budgets) {
			from = s.slices[chainKey(h)]
			from.spent += h.Cost
			d.Budgets = s.budgetStates(h, now)
		} else {
			d.Budgets = s.book(h, now)
		}
		if h.Slot != nil && !h.Commit {
			sl := s.slots[h.Slot.Client]
			sl.inUse++
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
	return d, nil, nil
}

// book books a hold's cost to its chain's budgets: into the journal (the
// shared store hears of it at the next sync) and into this member's views.
// It returns the budgets' states. s.mu is held.
func (s *Store) book(h *limiter.Hold, now time.Time) []limiter.BudgetState {
	out := make([]limiter.BudgetState, len(h.Budgets))
	for i, b := range h.Budgets {
		s.journal[viewKey{b.Owner, h.Period}] += h.Cost
		v := s.viewOf(b, h.Period, now)
		v.since += h.Cost
		v.mine += h.Cost
		v.touch = now
		out[i] = limiter.BudgetState{Owner: b.Owner, Limit: b.Limit, Spent: v.base + v.since}
	}
	return out
}

// budgetStates reports a hold's budgets from this member's views (what the
// shared store held, slices included, and what was booked since). s.mu is
// held.
func (s *Store) budgetStates(h *limiter.Hold, now time.Time) []limiter.BudgetState {
	out := make([]limiter.BudgetState, len(h.Budgets))
	for i, b := range h.Budgets {
		v := s.viewOf(b, h.Period, now)
		v.touch = now
		out[i] = limiter.BudgetState{Owner: b.Owner, Limit: b.Limit, Spent: v.base + v.since}
	}
	return out
}

// viewOf returns the view of a budget, creating an empty one (known to no
// one yet: base zero, never fetched).
func (s *Store) viewOf(b limiter.Budget, period string, now time.Time) *view {
	k := viewKey{b.Owner, period}
	v := s.views[k]
	if v == nil {
		v = &view{limit: b.Limit, touch: now}
		s.views[k] = v
	}
	v.limit = b.Limit
	return v
}

// want is the lease to ask for a take: this member's share of a lease
// period's refill, or the call alone when the bucket is near its limit.
func (s *Store) want(t limiter.Take, l *lease, now time.Time) int64 {
	c, r := t.Limit.Capacity, t.Limit.RefillPerSecond
	near := c * s.cfg.NearLimitPercent / 100
	if l != nil && l.left < near && now.Sub(l.leftAt) < s.cfg.LeaseTTL {
		return t.Cost
	}
	share := 1 / float64(s.peers.Live())
	if t.Key.Client == "" {
		share = s.peers.Share(t.Key.Pool)
	}
	w := int64(math.Ceil(share * float64(r) * s.cfg.LeaseTTL.Seconds()))
	w = min(w, max(c/int64(2*s.peers.Live()), 1)) // never hoard: half the bucket at most, split by members
	return max(w, t.Cost)
}

// refilled is what the shared bucket has refilled since the lease last
// heard its level.
func (l *lease) refilled(lim limiter.Limit, now time.Time) int64 {
	el := now.Sub(l.leftAt)
	if el <= 0 || lim.RefillPerSecond <= 0 {
		return 0
	}
	if el >= time.Duration(lim.Capacity/lim.RefillPerSecond+1)*time.Second {
		return lim.Capacity
	}
	return lim.RefillPerSecond * int64(el) / int64(time.Second)
}

// slotWant is how many of a client's slots to hold for inUse calls: those,
// and as spares the near-limit percent of this member's share of the
// client's maximum (at most maxSpareSlots), so that the next calls need no
// round trip. Spares held fleet-wide stay under that percent of the
// maximum.
func (s *Store) slotWant(inUse, maxSlots int64) int64 {
	spare := min(maxSlots*s.cfg.NearLimitPercent/100/int64(s.peers.Live()), maxSpareSlots)
	return min(inUse+spare, max(maxSlots, inUse), maxSlotLease)
}

const (
	maxSpareSlots = 32
	maxSlotLease  = 1_000_000 // the most one lease may hold (limiter.SlotLease)
)

// approxState reports a leased bucket for headers: what the shared bucket
// held at the last grant plus what this member has left of its lease.
func (s *Store) approxState(l *lease, lim limiter.Limit, now time.Time) (int64, time.Duration) {
	if l == nil {
		return 0, 0
	}
	rem := min(l.left+l.units, lim.Capacity)
	var reset time.Duration
	if lim.RefillPerSecond > 0 {
		reset = time.Duration((lim.Capacity-rem)*int64(time.Second)/lim.RefillPerSecond) * time.Nanosecond
	}
	return rem, reset
}

// deniedLocally refuses req for take i, whose shared bucket said it is
// short until l.shortUntil.
func (s *Store) deniedLocally(req limiter.Request, i int, l *lease, now time.Time) limiter.Decision {
	d := limiter.Decision{Reason: limiter.ReasonRateLimited, Blocking: i, BudgetBlocking: -1, Buckets: make([]limiter.BucketState, len(req.Takes))}
	if l == nil {
		l = &lease{possible: true}
	}
	d.RetryAfter = max(l.shortUntil.Sub(now), 0)
	if !l.possible {
		d.Reason, d.RetryAfter = limiter.ReasonExceedsCapacity, 0
	}
	for j, t := range req.Takes {
		d.Buckets[j] = limiter.BucketState{Key: t.Key, Limit: t.Limit}
		d.Buckets[j].Remaining, d.Buckets[j].ResetAfter = s.approxState(s.leases[t.Key], t.Limit, now)
	}
	d.Buckets[i].Short, d.Buckets[i].RetryAfter = true, d.RetryAfter
	return d
}

// refresh gets what tryLocal lacked (leases, slots, a budget slice), one
// round trip each, and decides again. ok is false when the shared store
// must decide. The calls run to their end even if ctx is cancelled: what
// they take is recorded, and given back if unused.
func (s *Store) refresh(ctx context.Context, req limiter.Request, n *need, now time.Time) (limiter.Decision, bool, error) {
	bctx, cancel := background(ctx)
	defer cancel()
	if len(n.asks) > 0 {
		grants, err := s.shared.Lease(bctx, n.asks, time.Time{})
		if err != nil {
			return limiter.Decision{}, false, err
		}
		if len(grants) != len(n.asks) {
			return limiter.Decision{}, false, fmt.Errorf("cluster: %d lease grants for %d asks", len(grants), len(n.asks))
		}
		s.m.leases.Add(float64(len(grants)))
		var denied *limiter.Decision
		s.mu.Lock()
		for i, a := range n.asks {
			s.take(a, grants[i], now)
			if idx := indexOf(req.Takes, a.Key); denied == nil && grants[i].Granted == 0 && a.Need > 0 && idx >= 0 {
				d := s.deniedLocally(req, idx, s.leases[a.Key], now)
				denied = &d
			}
		}
		s.mu.Unlock()
		if denied != nil {
			return *denied, true, nil
		}
	}
	if n.slot != nil {
		held, inFlight, err := s.leaseSlots(bctx, n.slot.Client, n.slot.Max, func(sl *slotLease) int64 { return s.slotWant(sl.inUse+1, n.slot.Max) })
		if err != nil {
			return limiter.Decision{}, false, err
		}
		s.mu.Lock()
		full := s.slots[n.slot.Client].inUse >= held
		s.mu.Unlock()
		if full {
			d := limiter.Decision{Reason: limiter.ReasonConcurrency, Blocking: -1, BudgetBlocking: -1, InFlight: inFlight,
				Buckets: make([]limiter.BucketState, len(req.Takes))}
			for j, t := range req.Takes {
				d.Buckets[j] = limiter.BucketState{Key: t.Key, Limit: t.Limit}
			}
			return d, true, nil
		}
	}
	if n.slice > 0 {
		h := req.Hold
		s.mu.Lock()
		id, snaps := s.nextSliceID(), s.snapsOf(h)
		s.mu.Unlock()
		d, err := s.shared.Reserve(bctx, limiter.Request{Hold: &limiter.Hold{ID: id, TTL: s.cfg.SliceTTL + sliceGrace,
			Period: h.Period, Cost: n.slice, Budgets: h.Budgets}})
		if err != nil {
			// It may have been reserved without an answer: release it once
			// the store answers (releasing an unknown id does nothing).
			s.mu.Lock()
			s.ends = append(s.ends, pendingEnd{id: id, outcome: limiter.OutcomeReleased})
			s.mu.Unlock()
			return limiter.Decision{}, false, err
		}
		s.m.slices.Inc()
		s.mu.Lock()
		s.learnBudgets(h, d.Budgets, snaps, now)
		if d.Allowed {
			s.openSlice(h, id, n.slice, now)
		}
		s.mu.Unlock()
		if !d.Allowed {
			return limiter.Decision{}, false, nil // closer to the limit than the view said: the shared store decides
		}
	}
	s.mu.Lock()
	d, again, err := s.tryLocal(req, now)
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

// leaseSlots sets this member's leased slots of client to want (worked out
// under s.mu from the lease as it then is), one call at a time per client
// so that the last call the store sees is the last one recorded here. A
// lease that shrinks counts at once: no call is admitted on a slot being
// given back.
func (s *Store) leaseSlots(ctx context.Context, client string, maxSlots int64, want func(*slotLease) int64) (held, inFlight int64, err error) {
	s.mu.Lock()
	sl := s.slots[client]
	if sl == nil {
		sl = &slotLease{}
		s.slots[client] = sl
	}
	sl.busy++
	s.mu.Unlock()
	sl.call.Lock()
	defer sl.call.Unlock()
	s.mu.Lock()
	sl.max = maxSlots
	w := want(sl)
	sl.held = min(sl.held, w)
	s.mu.Unlock()
	held, inFlight, err = s.shared.LeaseSlots(ctx, limiter.SlotLease{Client: client, Max: maxSlots, Holder: s.peers.Name(), Want: w, TTL: s.cfg.SlotTTL}, time.Time{})
	s.mu.Lock()
	if err == nil {
		sl.held, sl.exp = held, s.cfg.Clock.Now().Add(s.cfg.SlotTTL)
	}
	sl.busy--
	s.mu.Unlock()
	return held, inFlight, err
}

func indexOf(takes []limiter.Take, k limiter.Key) int {
	for i, t := range takes {
		if t.Key == k {
			return i
		}
	}
	return -1
}

// take adds a grant to its lease. s.mu is held.
func (s *Store) take(a limiter.LeaseAsk, g limiter.LeaseGrant, now time.Time) {
	l := s.leases[a.Key]
	if l == nil {
		l = &lease{}
		s.leases[a.Key] = l
	}
	if !now.Before(l.exp) && l.units > 0 {
		s.returning = append(s.returning, limiter.Adjustment{Key: a.Key, Limit: l.limit, Refund: l.units, Cap: limiter.NoCap})
		l.units = 0
	}
	l.limit = a.Limit
	l.left, l.leftAt, l.possible = g.Remaining, now, g.Possible
	if g.Granted > 0 {
		l.units += g.Granted
		l.exp = now.Add(s.cfg.LeaseTTL)
		l.shortUntil, l.misses = time.Time{}, 0
		return
	}
	l.misses++
	wait := g.RetryAfter
	if l.misses > 1 { // refused again: wait twice as long each time, up to a tenth of a lease
		wait = max(wait, min(g.RetryAfter<<min(l.misses-1, 20), s.cfg.LeaseTTL/10))
	}
	l.shortUntil = now.Add(wait)
	if !g.Possible {
		l.shortUntil = now.Add(s.cfg.LeaseTTL) // ask again now and then: the policy may change
	}
}

// snapsOf snaps the views of a hold's budgets. s.mu is held.
func (s *Store) snapsOf(h *limiter.Hold) []snap {
	if h == nil {
		return nil
	}
	out := make([]snap, len(h.Budgets))
	for i, b := range h.Budgets {
		out[i] = s.snapOf(b.Owner, h.Period)
	}
	return out
}

// flush tells the shared store what this member holds on h's budgets: it
// settles the chain's open slice (it could not serve the call, and what it
// has left would stand in the call's way), and books the journal when it
// holds spend on one of them (at most a few rounds: the batch in flight,
// then the rest).
func (s *Store) flush(ctx context.Context, h *limiter.Hold) error {
	if h == nil {
		return nil
	}
	s.mu.Lock()
	k := chainKey(h)
	sl := s.slices[k]
	if sl != nil {
		s.closeSlice(k, sl)
	}
	s.mu.Unlock()
	if err := s.replayEnds(ctx, func(e pendingEnd) bool { return e.chain == k }); err != nil {
		return err
	}
	for range 3 {
		s.mu.Lock()
		pending := false
		for _, b := range h.Budgets {
			if s.unbooked(b.Owner, h.Period) != 0 {
				pending = true
			}
		}
		s.mu.Unlock()
		if !pending {
			return nil
		}
		if err := s.bookJournal(ctx); err != nil {
			return err
		}
	}
	return nil
}

// learn updates views and leases from a decision of the shared store,
// read after snaps. s.mu is held.
func (s *Store) learn(req limiter.Request, d limiter.Decision, snaps []snap, now time.Time) {
	for i, b := range d.Buckets {
		if l := s.leases[b.Key]; l != nil {
			l.left, l.leftAt = b.Remaining, now
		}
		if b.Short && !req.Takes[i].Shadow && d.Reason == limiter.ReasonRateLimited && i == d.Blocking {
			l := s.leases[b.Key]
			if l == nil {
				l = &lease{limit: b.Limit}
				s.leases[b.Key] = l
			}
			l.shortUntil, l.possible = now.Add(b.RetryAfter), true
		}
	}
	if h := req.Hold; h != nil {
		s.learnBudgets(h, d.Budgets, snaps, now) // the answer includes this call's hold when allowed
	}
	for _, b := range d.Buckets {
		if b.Key.Client == "" && d.Allowed {
			for _, t := range req.Takes {
				if t.Key == b.Key {
					s.record(t.Key, t.Cost)
				}
			}
		}
	}
}

// learnBudgets rebases the views of h's budgets on the shared store's
// states of them, read after snaps. s.mu is held.
func (s *Store) learnBudgets(h *limiter.Hold, states []limiter.BudgetState, snaps []snap, now time.Time) {
	for i, b := range states {
		if i < len(snaps) {
			s.viewOf(limiter.Budget{Owner: b.Owner, Limit: b.Limit}, h.Period, now).rebase(b.Spent+b.Reserved, snaps[i], now)
		}
	}
}

// unbooked is the spend of a budget decided here and not yet booked.
// s.mu is held.
func (s *Store) unbooked(owner, period string) policy.Money {
	sum := s.journal[viewKey{owner, period}]
	if s.inflight != nil {
		for _, d := range s.inflight.deltas {
			if d.Owner == owner && d.Period == period {
				sum += d.Spent
			}
		}
	}
	return sum
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

func errDuplicate(id string) error { return fmt.Errorf("%w: %q", limiter.ErrDuplicateReservation, id) }

// Signals: what peers say, applied to this member's state.

// Spend adds a peer's booked spend to this member's views.
func (s *Store) Spend(_ string, deltas []limiter.SpendDelta) {
	s.mu.Lock()
	defer s.mu.Unlock()
	for _, d := range deltas {
		if v := s.views[viewKey{d.Owner, d.Period}]; v != nil {
			v.since += d.Spent
		}
	}
}

// Backoff applies what a peer heard from the upstream behind pool: a
// pause empties this member's lease and stops leasing until it ends; a
// report of few units left trims the lease to this member's share of them.
func (s *Store) Backoff(_, pool string, pause time.Duration, remaining int64) {
	now := s.cfg.Clock.Now()
	s.mu.Lock()
	defer s.mu.Unlock()
	for k, l := range s.leases {
		if k.Pool == pool && k.Client == "" {
			s.signalLocked(l, pause, remaining, now)
		}
	}
}

// signalLocked applies an upstream signal to a lease. s.mu is held.
func (s *Store) signalLocked(l *lease, pause time.Duration, remaining int64, now time.Time) {
	switch {
	case pause > 0:
		l.units = 0
		l.pausedUntil = now.Add(pause)
	case remaining >= 0:
		l.units = min(l.units, remaining/int64(s.peers.Live()))
	}
}

// MembersChanged is called when a member joins or leaves: shares change.
func (s *Store) MembersChanged() {}
