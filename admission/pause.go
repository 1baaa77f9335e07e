package admission

import (
	"sync"
	"time"
)

// pauseBook remembers, per pool, until when an upstream 429 paused it (its
// Retry-After), so that a local refusal during the pause can say it is the
// provider's pause and carry what is left of it. It is this sidecar's own
// view: the store holds the pause itself (the bucket stays empty), the
// book only explains it. One entry per pool; safe for concurrent use.
type pauseBook struct {
	mu    sync.Mutex
	until map[string]time.Time
}

func newPauseBook() *pauseBook { return &pauseBook{until: map[string]time.Time{}} }

// note records a pause of pool from now.
func (b *pauseBook) note(pool string, now time.Time, pause time.Duration) {
	end := now.Add(pause)
	b.mu.Lock()
	if end.After(b.until[pool]) {
		b.until[pool] = end
	}
	b.mu.Unlock()
}

// left is what remains at now of pool's pause, zero when none.
func (b *pauseBook) left(pool string, now time.Time) time.Duration {
	b.mu.Lock()
	defer b.mu.Unlock()
	end, ok := b.until[pool]
	if !ok {
		return 0
	}
	if !end.After(now) {
		delete(b.until, pool)
		return 0
	}
	return end.Sub(now)
}
