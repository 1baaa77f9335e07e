// Package memstore is the in-memory limiter.Store: Tollgate's embedded
// default, for a single node with nothing else installed.
package memstore

import (
	"context"
	"errors"
	"fmt"
	"hash/maphash"
	"math"
	"slices"
	"sync"
	"time"

	"github.com/tollgate/tollgate/limiter"
)

var _ limiter.Store = (*Store)(nil)

// ErrClosed is returned by a Store used after Close.
var ErrClosed = errors.New("memstore: closed")

const shardCount = 64

// Config configures a Store.
type Config struct {
	// Clock tells the time of decisions that carry none; nil means the
	// system clock.
	Clock limiter.Clock
	// SweepInterval is how often buckets that have refilled completely are
	// forgotten (a full bucket is the same as none). Zero disables sweeping.
	SweepInterval time.Duration
	// Ended bounds the outcomes of ended reservations kept so that a
	// repeated settle is recognised; the zero value means DefaultEnded.
	Ended EndedLimits
	// StateDir, when set, keeps budgets' spend across restarts in a
	// journal there (see JournalFile); "" keeps nothing.
	StateDir string
	// CompactLines is how many lines the journal may grow by, past its
	// state, before it is rewritten; zero means 100,000.
	CompactLines int
	// HistoryMonths is how many months a client's history is kept after
	// its last booking (0: limiter.DefaultHistoryMonths); CostTTL how long
	// a call's cost record is kept (0: limiter.DefaultCostTTL). Neither is
	// kept across restarts (the journal keeps budgets only).
	HistoryMonths int
	CostTTL       time.Duration
}

// EndedLimits bound the records of ended reservations: each is kept for
// Retention, and the oldest are forgotten sooner when there are more than
// MaxCount of them or they take more than MaxBytes (estimated). A settle
// of a forgotten reservation finds no reservation.
type EndedLimits struct {
	Retention time.Duration
	MaxCount  int
	MaxBytes  int64
}

// DefaultEnded keeps a day of outcomes, at most 200,000 of them and 64 MiB.
var DefaultEnded = EndedLimits{Retention: 24 * time.Hour, MaxCount: 200_000, MaxBytes: 64 << 20}

// DefaultConfig returns the configuration of the embedded default.
func DefaultConfig() Config {
	return Config{Clock: limiter.SystemClock{}, SweepInterval: time.Minute, Ended: DefaultEnded}
}

// Validate reports a configuration that cannot work.
func (c Config) Validate() error {
	var errs []error
	if c.CompactLines < 0 {
		errs = append(errs, fmt.Errorf("memstore: journal compaction after %d lines is negative", c.CompactLines))
	}
	if err := limiter.ValidateRetention(c.HistoryMonths, c.CostTTL); err != nil {
		errs = append(errs, fmt.Errorf("memstore: %w", err))
	}
	if c.SweepInterval < 0 {
		errs = append(errs, fmt.Errorf("memstore: sweep interval %v is negative", c.SweepInterval))
	}
	if e := c.Ended; e != (EndedLimits{}) && (e.Retention <= 0 || e.MaxCount <= 0 || e.MaxBytes <= 0) {
		errs = append(errs, fmt.Errorf("memstore: ended reservations: retention %v, count %d and bytes %d must all be positive",
			e.Retention, e.MaxCount, e.MaxBytes))
	}
	return errors.Join(errs...)
}

type entry struct {
	b     limiter.Bucket
	limit limiter.Limit
}

type shard struct {
	mu      sync.Mutex
	buckets map[limiter.Key]entry
}

// Store keeps buckets in memory, sharded by key. A request that touches
// several buckets locks their shards in index order, so admissions are
// atomic without a global lock.
type Store struct {
	clock  limiter.Clock
	seed   maphash.Seed
	shards [shardCount]shard

	ledgerMu sync.Mutex // after any shard locks
	ledger   ledger
	replayed Replayed

	stop      chan struct{}
	done      chan struct{}
	closeOnce sync.Once
	closed    chan struct{}
}

// New returns a Store. When cfg.SweepInterval > 0 it starts a sweeper
// goroutine that Close stops.
func New(cfg Config) (*Store, error) {
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	if cfg.Clock == nil {
		cfg.Clock = limiter.SystemClock{}
	}
	if cfg.Ended == (EndedLimits{}) {
		cfg.Ended = DefaultEnded
	}
	s := &Store{clock: cfg.Clock, seed: maphash.MakeSeed(), closed: make(chan struct{}), ledger: newLedger(cfg.Ended, cfg.HistoryMonths, cfg.CostTTL)}
	for i := range s.shards {
		s.shards[i].buckets = make(map[limiter.Key]entry)
	}
	if cfg.StateDir != "" {
		j, rep, err := openJournal(cfg.StateDir, cfg.CompactLines, &s.ledger)
		if err != nil {
			return nil, err
		}
		s.ledger.j, s.replayed = j, rep
	}
	if cfg.SweepInterval > 0 {
		s.stop, s.done = make(chan struct{}), make(chan struct{})
		go s.sweepLoop(cfg.SweepInterval)
	}
	return s, nil
}

func (s *Store) shardOf(k limiter.Key) int {
	var h maphash.Hash
	h.SetSeed(s.seed)
	h.WriteString(k.Pool)
	h.WriteByte(0)
	h.WriteString(k.Client)
	return int(h.Sum64() % shardCount)
}

// lockShards locks the distinct shards among idx in index order, so that
// calls touching several never deadlock, and returns them for
// unlockShards.
func (s *Store) lockShards(idx []int) []int {
	locks := slices.Clone(idx)
	slices.Sort(locks)
	locks = slices.Compact(locks)
	for _, i := range locks {
		s.shards[i].mu.Lock()
	}
	return locks
}

func (s *Store) unlockShards(locks []int) {
	for _, i := range locks {
		s.shards[i].mu.Unlock()
	}
}

// entryAt returns a copy of key's bucket in shard i (a new, full one if it
// has none yet), advanced to at under limit. The shard is locked. The
// caller stores it back only when it changed the bucket, as the Redis
// scripts write a bucket back: what a read without a write does (advance
// it, rescale it to another rate's denominator) is done again by the next
// call, from the same stored state, in both stores alike.
func (s *Store) entryAt(i int, key limiter.Key, limit limiter.Limit, at int64) entry {
	e, ok := s.shards[i].buckets[key]
	if !ok {
		e.b = limiter.NewBucket(limit, at)
	}
	e.limit = limit
	e.b = e.b.Advance(limit, at)
	return e
}

// Reserve decides req atomically: every Take is granted or none is.
func (s *Store) Reserve(ctx context.Context, req limiter.Request) (limiter.Decision, error) {
	if err := s.usable(ctx); err != nil {
		return limiter.Decision{}, err
	}
	if err := req.Validate(); err != nil {
		return limiter.Decision{}, err
	}
	now := req.Now
	if now.IsZero() {
		now = s.clock.Now()
	}
	at := limiter.Micros(now)

	// Lock every shard the request touches, in index order.
	var stack [4]int
	idx := stack[:0]
	for i := range req.Takes {
		idx = append(idx, s.shardOf(req.Takes[i].Key))
	}
	defer s.unlockShards(s.lockShards(idx))

	var bstack [4]limiter.Bucket
	buckets := bstack[:0]
	var estack [4]entry
	entries := estack[:0]
	for i, t := range req.Takes {
		e := s.entryAt(idx[i], t.Key, t.Limit, at)
		entries = append(entries, e)
		buckets = append(buckets, e.b)
	}
	var d limiter.Decision
	if h := req.Hold; h != nil {
		s.ledgerMu.Lock()
		defer s.ledgerMu.Unlock()
		expired := s.ledger.expire(at, math.MaxInt) // lapsed holds first, as the Redis script does
		if !h.Commit {
			if _, live := s.ledger.resv[h.ID]; live {
				return limiter.Decision{}, fmt.Errorf("%w: %q", limiter.ErrDuplicateReservation, h.ID)
			}
			if _, ended := s.ledger.done[h.ID]; ended {
				return limiter.Decision{}, fmt.Errorf("%w: %q", limiter.ErrDuplicateReservation, h.ID)
			}
		}
		var inFlight int64
		if h.Slot != nil && !h.Commit {
			inFlight = s.ledger.liveSlots(h.Slot.Client, at)
		}
		d = limiter.ApplyHold(buckets, req.Takes, h, s.ledger.states(h), inFlight)
		d.Expired = expired
		var err error
		switch {
		case d.Allowed && h.Commit:
			err = s.ledger.commit(h)
		case d.Allowed:
			err = s.ledger.hold(h, limiter.Charged(req.Takes, d), at)
		}
		if err != nil {
			return limiter.Decision{}, err
		}
	} else {
		d = limiter.Apply(buckets, req.Takes)
	}
	if d.Allowed {
		for i, t := range req.Takes {
			entries[i].b = buckets[i]
			s.shards[idx[i]].buckets[t.Key] = entries[i]
		}
	}
	return d, nil
}

func (s *Store) usable(ctx context.Context) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	select {
	case <-s.closed:
		return ErrClosed
	default:
		return nil
	}
}

// Len returns the number of buckets held, for tests and metrics.
func (s *Store) Len() int {
	n := 0
	for i := range s.shards {
		s.shards[i].mu.Lock()
		n += len(s.shards[i].buckets)
		s.shards[i].mu.Unlock()
	}
	return n
}

// Sweep forgets every bucket that has refilled completely by now.
func (s *Store) Sweep(now time.Time) {
	at := limiter.Micros(now)
	for i := range s.shards {
		sh := &s.shards[i]
		sh.mu.Lock()
		for k, e := range sh.buckets {
			if e.b.Full(e.limit, at) {
				delete(sh.buckets, k)
			}
		}
		sh.mu.Unlock()
	}
}

func (s *Store) sweepLoop(every time.Duration) {
	defer close(s.done)
	t := time.NewTicker(every)
	defer t.Stop()
	for {
		select {
		case <-s.stop:
			return
		case <-t.C:
			now := s.clock.Now()
			s.Sweep(now)
			s.ledgerMu.Lock()
			s.ledger.expire(limiter.Micros(now), 1<<30)
			s.ledger.hist.expireCosts(limiter.Micros(now))
			s.ledgerMu.Unlock()
		}
	}
}

// Close stops the sweeper. It is idempotent; Reserve fails afterwards.
func (s *Store) Close() (err error) {
	s.closeOnce.Do(func() {
		close(s.closed)
		if s.stop != nil {
			close(s.stop)
			<-s.done
		}
		s.ledgerMu.Lock()
		err = s.ledger.j.close()
		s.ledgerMu.Unlock()
	})
	return err
}

// Replayed reports what the journal held when the Store opened.
func (s *Store) Replayed() Replayed { return s.replayed }
