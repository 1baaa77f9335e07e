package respcache

import (
	"container/heap"
	"context"
	"errors"
	"fmt"
	"maps"
	"sync"
	"time"
)

var _ Cache = (*Memory)(nil)

// Estimated bookkeeping of an entry beyond its bytes of body, headers and
// key (the list node, the map slots, the Entry and its header map): what
// MemoryConfig's bounds count besides the bytes themselves.
// BenchmarkMemoryPerKB compares the estimate with the Go heap: within 2%
// for 1 KB bodies with three headers.
const (
	entryOverhead  = 464
	headerOverhead = 48
)

// Size is the estimated bytes an entry takes in memory: its body, header
// names and values, and key, plus a fixed estimate of bookkeeping. Both
// levels' size caps count this.
func Size(k Key, e Entry) int64 {
	n := int64(entryOverhead + len(k.Scope) + len(k.Route) + len(k.Hash) + len(e.Body))
	for name, v := range e.Headers {
		n += int64(headerOverhead + len(name) + len(v))
	}
	return n
}

// MemoryConfig configures a Memory cache.
type MemoryConfig struct {
	// MaxBytes bounds the estimated bytes (Size) of all entries; the
	// least recently used go first. Zero means 64 MiB.
	MaxBytes int64
	// MaxEntryBytes is the largest entry kept (Size); Complete refuses a
	// larger one with ErrTooLarge. Zero means 1 MiB (or MaxBytes, if
	// smaller).
	MaxEntryBytes int64
	// Clock tells entries' expiry and Stored; nil means the system clock.
	Clock Clock
	// Metrics counts lookups, evictions and waits at level l1; nil counts
	// nothing.
	Metrics *Metrics
}

// Defaults of MemoryConfig.
const (
	DefaultMaxBytes      = 64 << 20
	DefaultMaxEntryBytes = 1 << 20
)

// DefaultMemoryConfig returns a 64 MiB cache of entries up to 1 MiB on the
// system clock.
func DefaultMemoryConfig() MemoryConfig {
	return MemoryConfig{MaxBytes: DefaultMaxBytes, MaxEntryBytes: DefaultMaxEntryBytes}
}

// Validate reports a configuration that cannot work.
func (c MemoryConfig) Validate() error {
	var errs []error
	if c.MaxBytes < 0 || c.MaxEntryBytes < 0 {
		errs = append(errs, fmt.Errorf("respcache: memory: bytes %d and entry bytes %d must not be negative", c.MaxBytes, c.MaxEntryBytes))
	}
	if c.MaxBytes > 0 && c.MaxEntryBytes > c.MaxBytes {
		errs = append(errs, fmt.Errorf("respcache: memory: entry bytes %d exceed the cache's %d", c.MaxEntryBytes, c.MaxBytes))
	}
	return errors.Join(errs...)
}

// node is one entry, in the LRU list and the expiry heap.
type node struct {
	k          Key
	e          Entry
	size       int64
	expires    time.Time
	prev, next *node
	hi         int // index in the expiry heap
}

// flight is a call in progress for a key: waiters block on done, which is
// closed exactly once, when the flight leaves Memory.flights.
type flight struct {
	done  chan struct{}
	lapse *time.Timer
	// end tells the waiters how it ended (set before done is closed).
	end flightEnd
}

type flightEnd uint8

const (
	endRetry       flightEnd = iota // completed or abandoned: look again (an entry, or a claim to take)
	endUncacheable                  // the answer could not be kept: every waiter goes upstream
	endClosed                       // the cache closed: waiters give up
)

// Memory is the in-process level: an LRU bounded by estimated bytes, with
// per-entry TTLs and flights of this process. Responses and idempotency
// records share it, kept apart by Key.Kind. One mutex guards it; no call
// blocks except Begin's wait. Memory starts no goroutine (leases lapse by
// time.AfterFunc, stopped when a flight ends).
//
// Entries are shared, not copied, on the way out: an Entry that Get or
// Begin returns must not be changed (Complete copies what it is given).
type Memory struct {
	clock    Clock
	m        *Metrics
	max, cap int64 // MaxBytes, MaxEntryBytes

	mu      sync.Mutex
	items   map[Key]*node
	lru     node // sentinel: lru.next is the most recently used
	exp     expHeap
	bytes   int64
	flights map[Key]*flight
	closed  bool
}

// NewMemory returns an empty Memory cache.
func NewMemory(cfg MemoryConfig) (*Memory, error) {
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	if cfg.MaxBytes == 0 {
		cfg.MaxBytes = DefaultMaxBytes
	}
	if cfg.MaxEntryBytes == 0 {
		cfg.MaxEntryBytes = min(DefaultMaxEntryBytes, cfg.MaxBytes)
	}
	if cfg.MaxEntryBytes > cfg.MaxBytes {
		return nil, fmt.Errorf("respcache: memory: entry bytes %d exceed the cache's %d", cfg.MaxEntryBytes, cfg.MaxBytes)
	}
	if cfg.Clock == nil {
		cfg.Clock = systemClock{}
	}
	m := &Memory{clock: cfg.Clock, m: cfg.Metrics, max: cfg.MaxBytes, cap: cfg.MaxEntryBytes,
		items: make(map[Key]*node), flights: make(map[Key]*flight)}
	m.lru.next, m.lru.prev = &m.lru, &m.lru
	return m, nil
}

// Get returns the entry under k, or false. It never blocks.
func (m *Memory) Get(_ context.Context, k Key) (Entry, bool) {
	e, _, ok := m.get(k)
	m.m.lookup(k.Kind, levelL1, ok)
	return e, ok
}

// get returns the entry under k and its expiry.
func (m *Memory) get(k Key) (Entry, time.Time, bool) {
	now := m.clock.Now()
	m.mu.Lock()
	defer m.mu.Unlock()
	n := m.lookupLocked(k, now)
	if n == nil {
		return Entry{}, time.Time{}, false
	}
	return n.e, n.expires, true
}

// lookupLocked finds a live entry, marking it used; an expired one it
// finds is dropped.
func (m *Memory) lookupLocked(k Key, now time.Time) *node {
	m.sweepLocked(now, 16)
	n := m.items[k]
	if n == nil {
		return nil
	}
	if !now.Before(n.expires) {
		m.removeLocked(n)
		m.m.evicted("ttl", 1)
		return nil
	}
	if m.lru.next != n {
		n.unlink()
		m.pushFrontLocked(n)
	}
	return n
}

// sweepLocked drops up to max expired entries, the soonest expired first.
func (m *Memory) sweepLocked(now time.Time, max int) {
	dropped := 0
	for dropped < max && len(m.exp) > 0 && !now.Before(m.exp[0].expires) {
		m.removeLocked(m.exp[0])
		dropped++
	}
	m.m.evicted("ttl", dropped)
}

// Begin looks k up and, when nothing is recorded, leads k's flight or
// waits for its leader (see Cache). A lease of zero or less claims
// nothing: the caller goes upstream (Lead) and nobody waits for it.
func (m *Memory) Begin(ctx context.Context, k Key, wait, lease time.Duration) (Entry, State) {
	e, st, _ := m.begin(ctx, k, wait, lease)
	return e, st
}

// begin is Begin, also telling whether a Lead claimed k's flight.
func (m *Memory) begin(ctx context.Context, k Key, wait, lease time.Duration) (_ Entry, _ State, claimed bool) {
	var (
		timer  *time.Timer
		waited bool
		looked bool
	)
	defer func() {
		if timer != nil {
			timer.Stop()
		}
	}()
	// result counts the lookup (the first one only) and the wait.
	result := func(e Entry, s State) (Entry, State, bool) {
		if !looked {
			m.m.lookup(k.Kind, levelL1, s == Found)
		}
		if waited {
			m.m.waited(s)
		}
		return e, s, claimed
	}
	for {
		now := m.clock.Now()
		m.mu.Lock()
		if m.closed {
			m.mu.Unlock()
			return result(Entry{}, Lead)
		}
		if n := m.lookupLocked(k, now); n != nil {
			e := n.e
			m.mu.Unlock()
			return result(e, Found)
		}
		f := m.flights[k]
		if f == nil {
			if lease > 0 {
				m.claimLocked(k, lease)
				claimed = true
			}
			m.mu.Unlock()
			return result(Entry{}, Lead)
		}
		m.mu.Unlock()
		if !looked {
			m.m.lookup(k.Kind, levelL1, false)
			looked = true
		}
		if wait <= 0 {
			waited = true
			return result(Entry{}, Busy)
		}
		if timer == nil {
			timer = time.NewTimer(wait)
		}
		waited = true
		select {
		case <-f.done:
			switch f.end {
			case endUncacheable:
				return result(Entry{}, Lead)
			case endClosed:
				return result(Entry{}, Busy)
			}
		case <-timer.C:
			return result(Entry{}, Busy)
		case <-ctx.Done():
			return result(Entry{}, Busy)
		}
	}
}

// claimLocked makes k's flight, lapsing after lease.
func (m *Memory) claimLocked(k Key, lease time.Duration) {
	f := &flight{done: make(chan struct{})}
	f.lapse = time.AfterFunc(lease, func() {
		m.mu.Lock()
		defer m.mu.Unlock()
		if m.flights[k] == f {
			m.endLocked(k, endRetry)
		}
	})
	m.flights[k] = f
}

// endLocked ends k's flight, if any, waking its waiters.
func (m *Memory) endLocked(k Key, end flightEnd) {
	f := m.flights[k]
	if f == nil {
		return
	}
	delete(m.flights, k)
	f.lapse.Stop()
	f.end = end
	close(f.done)
}

// Complete records a copy of e under k for ttl and ends k's flight. An
// entry over the size cap (or a ttl of zero or less) is not kept: it
// returns ErrTooLarge (or an error) and every waiter goes upstream.
func (m *Memory) Complete(_ context.Context, k Key, e Entry, ttl time.Duration) error {
	e.Body = append([]byte(nil), e.Body...)
	e.Headers = maps.Clone(e.Headers)
	return m.put(k, e, ttl, true)
}

// put keeps e itself, ending k's flight if end is set.
func (m *Memory) put(k Key, e Entry, ttl time.Duration, end bool) error {
	now := m.clock.Now()
	size := Size(k, e)
	err := k.validate()
	switch {
	case err != nil:
	case ttl <= 0:
		err = fmt.Errorf("respcache: ttl %v must be positive", ttl)
	case size > m.cap:
		err = fmt.Errorf("%w: %d bytes, at most %d in memory", ErrTooLarge, size, m.cap)
	}
	if e.Stored.IsZero() {
		e.Stored = now
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.closed {
		return ErrClosed
	}
	if err != nil {
		if end {
			m.endLocked(k, endUncacheable)
		}
		return err
	}
	if old := m.items[k]; old != nil {
		m.removeLocked(old)
	}
	n := &node{k: k, e: e, size: size, expires: now.Add(ttl)}
	m.items[k] = n
	m.pushFrontLocked(n)
	heap.Push(&m.exp, n)
	m.bytes += size
	m.m.held(size, 1)
	m.sweepLocked(now, 16)
	evicted := 0
	for m.bytes > m.max {
		m.removeLocked(m.lru.prev)
		evicted++
	}
	m.m.evicted("size", evicted)
	if end {
		m.endLocked(k, endRetry)
	}
	return nil
}

// Abandon ends k's flight without an entry: one waiter leads next.
func (m *Memory) Abandon(_ context.Context, k Key) {
	m.mu.Lock()
	defer m.mu.Unlock()
	m.endLocked(k, endRetry)
}

// Invalidate drops every entry of kind under scope and route ("" for any,
// not both). It walks every entry, under the lock: O(entries).
func (m *Memory) Invalidate(_ context.Context, kind Kind, scope, route string) (int, error) {
	if scope == "" && route == "" {
		return 0, ErrNoScope
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.closed {
		return 0, ErrClosed
	}
	dropped := 0
	for n := m.lru.next; n != &m.lru; {
		next := n.next
		if n.k.Kind == kind && (scope == "" || n.k.Scope == scope) && (route == "" || n.k.Route == route) {
			m.removeLocked(n)
			dropped++
		}
		n = next
	}
	return dropped, nil
}

// Delete drops the entry under k.
func (m *Memory) Delete(_ context.Context, k Key) (bool, error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.closed {
		return false, ErrClosed
	}
	n := m.items[k]
	if n == nil {
		return false, nil
	}
	m.removeLocked(n)
	return true, nil
}

// Close drops every entry and ends every flight (its waiters return Busy).
// Later calls miss, lead without a claim, or return ErrClosed.
func (m *Memory) Close() error {
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.closed {
		return nil
	}
	m.closed = true
	for k := range m.flights {
		m.endLocked(k, endClosed)
	}
	m.m.held(-m.bytes, -len(m.items))
	m.items, m.exp, m.bytes = nil, nil, 0
	m.lru.next, m.lru.prev = &m.lru, &m.lru
	return nil
}

// Stats returns the entries Memory holds and their estimated bytes.
func (m *Memory) Stats() (entries int, bytes int64) {
	m.mu.Lock()
	defer m.mu.Unlock()
	return len(m.items), m.bytes
}

func (m *Memory) pushFrontLocked(n *node) {
	n.prev, n.next = &m.lru, m.lru.next
	m.lru.next.prev = n
	m.lru.next = n
}

func (n *node) unlink() {
	n.prev.next, n.next.prev = n.next, n.prev
	n.prev, n.next = nil, nil
}

func (m *Memory) removeLocked(n *node) {
	n.unlink()
	heap.Remove(&m.exp, n.hi)
	delete(m.items, n.k)
	m.bytes -= n.size
	m.m.held(-n.size, -1)
}

// expHeap orders entries by expiry, the soonest first.
type expHeap []*node

func (h expHeap) Len() int           { return len(h) }
func (h expHeap) Less(i, j int) bool { return h[i].expires.Before(h[j].expires) }
func (h expHeap) Swap(i, j int) {
	h[i], h[j] = h[j], h[i]
	h[i].hi, h[j].hi = i, j
}
func (h *expHeap) Push(x any) {
	n := x.(*node)
	n.hi = len(*h)
	*h = append(*h, n)
}
func (h *expHeap) Pop() any {
	old := *h
	n := old[len(old)-1]
	old[len(old)-1] = nil
	*h = old[:len(old)-1]
	n.hi = -1
	return n
}
