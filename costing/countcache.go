package costing

import (
	"errors"
	"fmt"
	"hash/maphash"
	"math"
	"math/bits"
	"math/rand/v2"
	"sync/atomic"
)

// TokenizerConfig tunes a Tokenizer's cache of token counts. Workers send
// the same system prompt, tool definitions and earlier turns on every call;
// with the cache, a text counted once costs a hash the next time, not a
// tokenization.
//
// The cache keeps no text: a count is filed under a hash of the text, with
// a seed drawn at random for each Tokenizer (so no one can craft two texts
// that collide), and the text's length. Its memory is fixed when it is
// built and never grows.
type TokenizerConfig struct {
	// CacheEntries is the most counts the cache holds; 0 turns it off.
	CacheEntries int
	// CacheBytes is the most memory it takes, at 16 bytes an entry. The
	// smaller bound wins, rounded down to a power of two of 4-entry sets.
	CacheBytes int64
	// CacheMinLen is the shortest text the cache takes: a shorter one is
	// counted each time, which costs about what hashing and looking it up
	// would.
	CacheMinLen int
}

// DefaultTokenizerConfig caches 65,536 counts in 1 MiB, of texts of 4
// bytes or more. Measured (BenchmarkCountCache), a hit costs some 12-20 ns
// up to a few hundred bytes, and a miss 30-50 ns more than counting, while
// counting costs some 80 ns for 4 bytes and grows with the text; roles
// ("user", "system") are the shortest texts that repeat on every call.
func DefaultTokenizerConfig() TokenizerConfig {
	return TokenizerConfig{CacheEntries: 1 << 16, CacheBytes: 1 << 20, CacheMinLen: 4}
}

// Validate reports every field out of range.
func (c TokenizerConfig) Validate() error {
	var errs []error
	if c.CacheEntries < 0 {
		errs = append(errs, fmt.Errorf("costing: cache entries %d: negative", c.CacheEntries))
	}
	if c.CacheEntries > 0 && c.CacheBytes < cacheSetBytes {
		errs = append(errs, fmt.Errorf("costing: cache bytes %d: below the %d of one set", c.CacheBytes, cacheSetBytes))
	}
	if c.CacheEntries > 0 && c.CacheEntries < cacheWays {
		errs = append(errs, fmt.Errorf("costing: cache entries %d: below the %d of one set", c.CacheEntries, cacheWays))
	}
	if c.CacheMinLen < 0 {
		errs = append(errs, fmt.Errorf("costing: cache min length %d: negative", c.CacheMinLen))
	}
	return errors.Join(errs...)
}

// CacheStats counts the lookups of a Tokenizer's cache since it was built.
// Texts shorter than CacheMinLen, and all texts when the cache is off, are
// in neither figure.
type CacheStats struct {
	Hits   uint64 // counts found
	Misses uint64 // texts counted, their counts stored
	// Entries is how many counts the cache can hold (0: off).
	Entries int
}

const (
	cacheWays     = 4              // slots per set
	cacheSetBytes = cacheWays * 16 // one set: two uint64 per slot, one cache line
	statStripes   = 16             // hit and miss counters, apart to spare cache lines
	maxCachedLen  = 1 << 30        // so length and count (at most 3 a byte) fit 32 bits each
)

// countCache is a fixed table of token counts, set-associative: a key's
// hash picks a set of four slots, and a miss replaces an empty slot or else
// one at random. It takes no lock. Each slot is two atomic words, the value
// (length<<32 | count) and check = hash ^ value; a lookup takes a slot's
// count only when check ^ value gives back the hash it looks for and the
// value's length is the text's. A reader that sees one word of one store
// and the other of another (two writers racing on a slot) finds the check
// broken and counts the text itself; so does a lookup after its slot was
// replaced. Either way a count is only ever one that was computed for a
// text of that hash and length.
type countCache struct {
	seeds  [numKeys]maphash.Seed // one table serves every kind of key
	sets   [][cacheWays]cacheSlot
	mask   uint64
	minLen int
	stats  [statStripes]cacheStripe
}

type cacheSlot struct{ check, value atomic.Uint64 }

type cacheStripe struct {
	hits, misses atomic.Uint64
	_            [48]byte // a cache line each
}

// newCountCache returns the cache cfg asks for, or nil when it is off.
func newCountCache(cfg TokenizerConfig) *countCache {
	sets := min(cfg.CacheEntries/cacheWays, int(min(cfg.CacheBytes/cacheSetBytes, math.MaxInt32)))
	if sets < 1 {
		return nil
	}
	sets = 1 << (bits.Len(uint(sets)) - 1) // a power of two, so a mask picks the set
	c := &countCache{
		sets:   make([][cacheWays]cacheSlot, sets),
		mask:   uint64(sets - 1),
		minLen: max(cfg.CacheMinLen, 1),
	}
	for i := range c.seeds {
		c.seeds[i] = maphash.MakeSeed()
	}
	return c
}

// takes reports whether the cache looks a key of n bytes up.
func (c *countCache) takes(n int) bool {
	return c != nil && n >= c.minLen && n <= maxCachedLen
}

// Keys name what was counted: a text, or the compact form of a raw JSON
// value (keyed by its raw bytes, to spare compacting it again), under each
// encoding. Each has its own seed, so their hashes are unrelated.
const (
	keyText = iota // + encoder index (0 o200k, 1 cl100k)
	_
	keyCompactJSON
	_
	numKeys
)

// get returns the count stored for hash h of a key of n bytes.
func (c *countCache) get(h uint64, n int) (int64, bool) {
	set := &c.sets[h&c.mask]
	for i := range set {
		v := set[i].value.Load()
		if set[i].check.Load()^v == h && v>>32 == uint64(n) {
			c.stats[h%statStripes].hits.Add(1)
			return int64(uint32(v)), true
		}
	}
	return 0, false
}

// put stores tokens for hash h of a key of n bytes, in an empty slot of its
// set or else in one picked at random.
func (c *countCache) put(h uint64, n int, tokens int) {
	c.stats[h%statStripes].misses.Add(1)
	set := &c.sets[h&c.mask]
	v := uint64(n)<<32 | uint64(uint32(tokens))
	way := -1
	for i := range set {
		if set[i].value.Load() == 0 { // never used: a stored value has a length
			way = i
			break
		}
	}
	if way < 0 {
		way = int(rand.Uint32() % cacheWays)
	}
	set[way].value.Store(v)
	set[way].check.Store(h ^ v)
}

func (c *countCache) snapshot() CacheStats {
	if c == nil {
		return CacheStats{}
	}
	var s CacheStats
	for i := range c.stats {
		s.Hits += c.stats[i].hits.Load()
		s.Misses += c.stats[i].misses.Load()
	}
	s.Entries = len(c.sets) * cacheWays
	return s
}
