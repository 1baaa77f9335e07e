package admission

import (
	"strings"
	"testing"
	"time"
	"unicode/utf8"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// TestRefusalRing: the ring keeps the last refusalRing refusals, newest
// first, whatever number came.
func TestRefusalRing(t *testing.T) {
	t0 := time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)
	for name, n := range map[string]int{"none": 0, "one": 1, "full": refusalRing, "wrapped": 3*refusalRing + 7} {
		t.Run(name, func(t *testing.T) {
			var r refusals
			for i := range n {
				r.add(Refusal{At: t0.Add(time.Duration(i) * time.Second)})
			}
			got := r.list()
			require.Len(t, got, min(n, refusalRing))
			for i, f := range got {
				assert.Equal(t, t0.Add(time.Duration(n-1-i)*time.Second), f.At, "position %d", i)
			}
		})
	}
}

// TestRefusalOf: what a refusal keeps of a verdict: the route's name, or
// the worker's host and path cut to a bound on a rune boundary; the client
// the call named when it is a well-formed id.
func TestRefusalOf(t *testing.T) {
	long := "/" + strings.Repeat("é", 200)
	tests := map[string]struct {
		r          Request
		v          Verdict
		wantClient string
		wantRoute  string
	}{
		"route":             {r: Request{Client: "acme"}, v: Verdict{Route: "openai", Client: "acme", Reason: "rate_limited"}, wantClient: "acme", wantRoute: "openai"},
		"unmatched":         {r: Request{Client: "acme"}, v: Verdict{Host: "h", Path: "/<x>", Reason: ReasonUnmatchedRoute}, wantClient: "acme", wantRoute: "h/<x>"},
		"invalid client":    {r: Request{Client: "bad id"}, v: Verdict{Route: "openai", Reason: ReasonInvalidClient}, wantRoute: "openai"},
		"ill-formed client": {r: Request{Client: "<b>"}, v: Verdict{Host: "h", Path: "/", Reason: ReasonUnmatchedRoute}, wantRoute: "h/"},
	}
	for name, tc := range tests {
		t.Run(name, func(t *testing.T) {
			f := refusalOf(&tc.r, &tc.v, time.Time{})
			assert.Equal(t, tc.wantClient, f.Client)
			assert.Equal(t, tc.wantRoute, f.Route)
			assert.Equal(t, tc.v.Reason, f.Reason)
		})
	}
	t.Run("a long path is cut", func(t *testing.T) {
		f := refusalOf(&Request{}, &Verdict{Host: "h", Path: long}, time.Time{})
		assert.LessOrEqual(t, len(f.Route), maxRefusalField+len("…"))
		assert.True(t, utf8.ValidString(f.Route))
		assert.True(t, strings.HasSuffix(f.Route, "…"))
	})
}

// BenchmarkRefusalAdd: recording a refusal is on the denial path, which a
// flood of refused calls makes hot.
func BenchmarkRefusalAdd(b *testing.B) {
	b.ReportAllocs()
	var r refusals
	v := Verdict{Route: "openai", Client: "acme", Outcome: OutcomeDenied, Reason: "rate_limited"}
	req := Request{Client: "acme"}
	now := time.Now()
	b.RunParallel(func(pb *testing.PB) {
		for pb.Next() {
			r.add(refusalOf(&req, &v, now))
		}
	})
}
