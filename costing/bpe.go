package costing

import (
	"unicode/utf8"

	tiktoken_loader "github.com/pkoukk/tiktoken-go-loader"
)

// bpeCounter counts the tokens of one encoding, as tiktoken's
// encode_ordinary would: the encoding's pre-tokenizer (split.go, the same
// cuts as its regular expression, much faster), then byte-pair merges of
// each piece, a rescan for short pieces and a heap (O(n log n)) for long
// ones where tiktoken's rescan is O(n²), so a long piece cannot stall a
// request. It only counts: it never builds the token list. It is immutable
// and safe for concurrent use.
type bpeCounter struct {
	cl100k bool // else o200k
	ranks  map[string]int
}

// newBPECounter loads the encoding's ranks from those embedded in
// tiktoken-go-loader: nothing is downloaded at run time.
func newBPECounter(encoding string) (*bpeCounter, error) {
	ranks, err := tiktoken_loader.NewOfflineLoader().LoadTiktokenBpe(encoding + ".tiktoken")
	if err != nil {
		return nil, err
	}
	return &bpeCounter{cl100k: encoding == EncodingCL100K, ranks: ranks}, nil
}

// split calls yield with each piece of text (valid UTF-8), as the
// encoding's pre-tokenizer cuts it. A direct call, not a func field, so
// that yield and what it captures stay on the caller's stack.
func (c *bpeCounter) split(text string, yield func(string)) {
	if c.cl100k {
		splitCL100K(text, yield)
	} else {
		splitO200K(text, yield)
	}
}

// count returns the number of tokens of text. Text that is not valid UTF-8
// is read as tiktoken reads it, each invalid byte a U+FFFD.
func (c *bpeCounter) count(text string) int {
	if !utf8.ValidString(text) {
		text = string([]rune(text))
	}
	n := 0
	c.split(text, func(piece string) { n += c.pieceCount(piece) })
	return n
}

// smallPiece is the length up to which the plain rescan merge beats the heap.
const smallPiece = 64

// pieceCount returns the number of tokens byte-pair encoding gives piece.
func (c *bpeCounter) pieceCount(piece string) int {
	if len(piece) <= 1 {
		return len(piece)
	}
	if _, ok := c.ranks[piece]; ok {
		return 1
	}
	if len(piece) <= smallPiece {
		return c.rescanCount(piece)
	}
	return c.heapCount(piece)
}

// noRank marks a boundary whose pair with its right neighbour is no token.
const noRank = int(^uint(0) >> 1)

// rescanCount is tiktoken's merge: repeatedly merge the adjacent pair whose
// bytes have the lowest rank (the leftmost on a tie) until no pair is a token.
func (c *bpeCounter) rescanCount(piece string) int {
	var buf [smallPiece + 1]int
	starts := buf[:0] // start offset of each current token, plus len(piece)
	for i := range len(piece) + 1 {
		starts = append(starts, i)
	}
	rank := func(i int) int { // rank of tokens i and i+1 merged
		if i+2 >= len(starts) {
			return noRank
		}
		if r, ok := c.ranks[piece[starts[i]:starts[i+2]]]; ok {
			return r
		}
		return noRank
	}
	for {
		best, at := noRank, -1
		for i := 0; i+2 < len(starts); i++ {
			if r := rank(i); r < best {
				best, at = r, i
			}
		}
		if at < 0 {
			return len(starts) - 1
		}
		starts = append(starts[:at+1], starts[at+2:]...)
	}
}

// heapCount gives rescanCount's answer in O(n log n). Boundaries form a
// linked list; a heap holds (rank, start) for each boundary's pair with its
// right neighbour, ordered so the lowest rank, then the leftmost start, comes
// first, which is the pair the rescan would pick. An entry is stale once its
// boundary is gone or its rank changed; a pair's rank names its bytes, and
// pairs only grow, so a live boundary never regains an old rank.
func (c *bpeCounter) heapCount(piece string) int {
	n := len(piece)
	next := make([]int32, n+1) // next[i]: the boundary after i; n has none
	prev := make([]int32, n+1)
	cur := make([]int, n+1) // cur[i]: rank of the pair starting at i, or noRank
	for i := range n + 1 {
		next[i], prev[i], cur[i] = int32(i+1), int32(i-1), noRank
	}
	rankAt := func(i int32) int {
		j := next[i]
		if int(j) >= n {
			return noRank
		}
		k := next[j]
		if r, ok := c.ranks[piece[i:k]]; ok {
			return r
		}
		return noRank
	}
	h := make(mergeHeap, 0, n)
	for i := range int32(n - 1) {
		if r := rankAt(i); r != noRank {
			cur[i] = r
			h = append(h, mergeKey(r, i))
		}
	}
	h.init()
	tokens := n
	for len(h) > 0 {
		key := h.pop()
		r, i := int(key>>32), int32(uint32(key))
		if cur[i] != r {
			continue // stale
		}
		j := next[i] // merge the tokens starting at i and at j
		next[i] = next[j]
		if int(next[j]) <= n {
			prev[next[j]] = i
		}
		cur[j] = noRank
		tokens--
		if cur[i] = rankAt(i); cur[i] != noRank {
			h.push(mergeKey(cur[i], i))
		}
		if p := prev[i]; p >= 0 {
			if cur[p] = rankAt(p); cur[p] != noRank {
				h.push(mergeKey(cur[p], p))
			}
		}
	}
	return tokens
}

// mergeKey packs (rank, start) so that comparing keys compares rank, then
// start. Ranks are below 2^31 and starts below 2^31 (bodies are far smaller).
func mergeKey(rank int, start int32) uint64 { return uint64(rank)<<32 | uint64(uint32(start)) }

// mergeHeap is a binary min-heap of merge keys.
type mergeHeap []uint64

func (h mergeHeap) init() {
	for i := len(h)/2 - 1; i >= 0; i-- {
		h.down(i)
	}
}

func (h *mergeHeap) push(k uint64) {
	*h = append(*h, k)
	s := *h
	for i := len(s) - 1; i > 0; {
		p := (i - 1) / 2
		if s[p] <= s[i] {
			break
		}
		s[p], s[i] = s[i], s[p]
		i = p
	}
}

func (h *mergeHeap) pop() uint64 {
	s := *h
	top := s[0]
	last := len(s) - 1
	s[0] = s[last]
	*h = s[:last]
	h.down(0)
	return top
}

func (h mergeHeap) down(i int) {
	for {
		l := 2*i + 1
		if l >= len(h) {
			return
		}
		m := l
		if r := l + 1; r < len(h) && h[r] < h[l] {
			m = r
		}
		if h[i] <= h[m] {
			return
		}
		h[i], h[m] = h[m], h[i]
		i = m
	}
}
