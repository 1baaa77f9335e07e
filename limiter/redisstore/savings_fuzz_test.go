package redisstore

import (
	"slices"
	"testing"

	"github.com/stretchr/testify/assert"

	"github.com/tollgate/tollgate/limiter"
)

// FuzzDecodeSavings: whatever the tail of a usage reply holds, decodeSavings
// returns an error or savings Usage may report (valid names, once each,
// sorted, none zero), never a panic. Input as in FuzzDecodeDecision.
func FuzzDecodeSavings(f *testing.F) {
	for _, vs := range [][]any{
		{int64(0)},
		{int64(2), "downgrade", "41200000", "flex", "-3"},
		{int64(2), "downgrade", int64(5), "prompt_cache", "0"},
		{int64(1), "flex"},
		{int64(2), "flex", "1", "flex", "2"},
		{int64(1), "Flex", "1"},
		{int64(-1)},
		{"x"},
		{},
	} {
		f.Add(encodeValues(vs))
	}
	f.Fuzz(func(t *testing.T, data []byte) {
		var r reply
		got := decodeSavings(decodeValues(data), &r)
		if r.err != nil {
			assert.Nil(t, got)
			return
		}
		assert.True(t, slices.IsSortedFunc(got, func(a, b limiter.Saving) int {
			if a.Strategy < b.Strategy {
				return -1
			}
			return 1 // never equal: each name once
		}), "sorted, each once: %v", got)
		for _, s := range got {
			assert.True(t, limiter.ValidStrategy(s.Strategy), s.Strategy)
			assert.NotZero(t, s.Amount)
		}
	})
}
