package costing

import (
	"slices"
	"sync"

	"github.com/tollgate/tollgate/policy"
)

// Learner remembers, per route and model price entry, the recent ratios of
// what calls really cost to what they were estimated at, for the adaptive
// reservation strategy. Ratios are kept as integer per-mille (no float in
// anything that sizes a reservation). It is safe for concurrent use; its
// memory is bounded by the policy's routes × model entries × window.
type Learner struct {
	mu     sync.Mutex
	series map[string]*ratios
}

type ratios struct {
	ring   []int64 // per-mille ratios, oldest overwritten first
	next   int
	n      int
	sorted []int64 // scratch for percentiles
	// cached answer for the config it was computed under
	pct   int64
	ok    bool
	cfg   policy.AdaptiveConfig
	dirty bool
}

// maxRatioPermille caps one observation (a call that cost 50x its estimate
// says little about the next one).
const maxRatioPermille = 50_000

// NewLearner returns an empty Learner.
func NewLearner() *Learner { return &Learner{series: map[string]*ratios{}} }

// LearnKey names the series a call on route r priced by entry belongs to.
func LearnKey(r *policy.Route, entry string) string { return r.Name + "\x00" + entry }

// Observe records one settled call: its estimate and its actual cost. A
// call estimated at nothing teaches nothing.
func (l *Learner) Observe(key string, estimated, actual policy.Money, window int64) {
	if estimated <= 0 || actual < 0 || window <= 0 {
		return
	}
	r := min(int64(maxRatioPermille), ratioPermille(actual, estimated))
	l.mu.Lock()
	defer l.mu.Unlock()
	s := l.series[key]
	if s == nil || int64(len(s.ring)) != window {
		old := s
		s = &ratios{ring: make([]int64, window)}
		if old != nil { // the window was resized by a reload: keep the newest
			for _, v := range old.newest(int(window)) {
				s.push(v)
			}
		}
		l.series[key] = s
	}
	s.push(r)
}

// ratioPermille is ceil(actual × 1000 / estimated) without overflow.
func ratioPermille(actual, estimated policy.Money) int64 {
	if int64(actual) > (1<<62)/1000 {
		return maxRatioPermille
	}
	return ceilDiv(int64(actual)*1000, int64(estimated))
}

func (s *ratios) push(v int64) {
	s.ring[s.next] = v
	s.next = (s.next + 1) % len(s.ring)
	s.n = min(s.n+1, len(s.ring))
	s.dirty = true
}

// newest returns up to k of the latest values, oldest first.
func (s *ratios) newest(k int) []int64 {
	k = min(k, s.n)
	out := make([]int64, 0, k)
	for i := s.n - k; i < s.n; i++ {
		out = append(out, s.ring[(s.next-s.n+i+len(s.ring))%len(s.ring)])
	}
	return out
}

// Percent returns the share of the estimate to reserve for key under cfg:
// the cfg.Percentile-th of its remembered ratios, in whole percent rounded
// up, bounded to [cfg.MinPercent, cfg.MaxPercent]. ok is false until
// cfg.MinSamples calls have been observed.
func (l *Learner) Percent(key string, cfg policy.AdaptiveConfig) (pct int64, ok bool) {
	l.mu.Lock()
	defer l.mu.Unlock()
	s := l.series[key]
	if s == nil || int64(s.n) < max(cfg.MinSamples, 1) {
		return 0, false
	}
	if !s.dirty && s.cfg == cfg {
		return s.pct, s.ok
	}
	s.sorted = append(s.sorted[:0], s.ring[:s.n]...)
	slices.Sort(s.sorted)
	// nearest rank: the smallest value with at least p% of the values at or below it
	rank := int(ceilDiv(cfg.Percentile*int64(s.n), 100))
	v := s.sorted[max(rank, 1)-1]
	s.pct = min(max(ceilDiv(v, 10), cfg.MinPercent), cfg.MaxPercent)
	s.ok, s.cfg, s.dirty = true, cfg, false
	return s.pct, true
}
