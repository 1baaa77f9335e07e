package authz_test

import (
	"fmt"
	"math/rand/v2"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/tollgate/tollgate/admission"
	"github.com/tollgate/tollgate/policy"
)

// TestCacheHitRatio is the hit ratio on a generated workload with a known
// share of repeats (docs/performance.md, "Response cache"): ratioCalls
// deterministic chat calls, each, with probability ratioRepeats, the same
// request as an earlier call picked at random, else a new one; each
// through Check and, when admitted, ext_proc with the recorded answer. A
// repeat must be answered from the cache and a new request must go
// upstream, so the measured hit ratio is the drawn share of repeats
// exactly, and the client pays for the new requests only. The figures are
// logged (go test -v -run TestCacheHitRatio ./authz).
func TestCacheHitRatio(t *testing.T) {
	const (
		ratioCalls   = 400
		ratioRepeats = 0.30
	)
	// The memory store and cache only: the Redis store's buckets refill on
	// Redis's clock, which the test's does not move (the fleet's hits are
	// in TestCacheE2EFleet).
	kind := cacheKinds["memory"]
	t.Run("memory", func(t *testing.T) {
		ss := startCached(t, kind, cachePolicy, nil)
		rng := rand.New(rand.NewPCG(13, 2026)) // the same workload on every run
		var bodies [][]byte
		repeats, hits, misses := 0, 0, 0
		for i := range ratioCalls {
			var body []byte
			if len(bodies) > 0 && rng.Float64() < ratioRepeats {
				body = bodies[rng.IntN(len(bodies))]
				repeats++
			} else {
				body = detBody(fmt.Sprintf("Question %d: what does order %d contain?", i, rng.IntN(1_000_000)), "")
				bodies = append(bodies, body)
			}
			// A second a call on the test's clock: the pool (1,000 tokens a
			// second) refills what a call takes, and the whole run stays
			// well inside the rule's hour.
			ss.clk.Advance(time.Second)
			a := ss.ask(t, call{client: "acme", body: body})
			if !a.ok {
				require.Equal(t, string(admission.CacheHit), a.headers[admission.HeaderCache], "call %d: %d %s", i, a.status, a.body)
				hits++
				continue
			}
			misses++
			ss.process(t, a.admit, body, okChat(t))
		}
		ratio := float64(hits) / ratioCalls
		t.Logf("%d calls, %d repeats drawn (%.1f%%, asked %.0f%%): %d hits, %d misses, hit ratio %.1f%%",
			ratioCalls, repeats, 100*float64(repeats)/ratioCalls, 100*ratioRepeats, hits, misses, 100*ratio)
		assert.Equal(t, repeats, hits, "every repeat answered from the cache, and nothing else")
		assert.Equal(t, len(bodies), misses, "every new request sent upstream")
		assert.InDelta(t, ratioRepeats, ratio, 0.06, "the drawn share is near the asked one (a fixed seed: not a timing)")
		assert.Equal(t, float64(hits), ss.cacheAnswers(t, "hit", "openai"))
		assert.Equal(t, float64(misses), ss.cacheAnswers(t, "miss", "openai"))
		assert.Equal(t, policy.Money(misses*chatCost), ss.spentBy(t, "acme"), "paid for the new requests only")
		assert.Equal(t, map[string]policy.Money{"cache": policy.Money(hits * chatCost)}, ss.savingsOf(t, "acme"))
	})
}
