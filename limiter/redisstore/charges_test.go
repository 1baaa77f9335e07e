package redisstore

import (
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/tollgate/tollgate/limiter"
)

// The pool charges a spread reservation's record keeps read back as
// written, whatever bytes the names hold, and as reserve.lua's
// charge_record writes them.
func TestChargesRoundTrip(t *testing.T) {
	cs := []limiter.Charge{
		{Key: limiter.Key{Pool: "gpt"}, Limit: limiter.Limit{Capacity: 10, Refill: 1}, Units: 4},
		{Key: limiter.Key{Pool: "a:b 3:c\n{}"}, Limit: limiter.Limit{Capacity: 10000, Refill: 500, Per: 3 * time.Second}, Units: 0},
		{Key: limiter.Key{Pool: "", Client: "x"}, Limit: limiter.Limit{Capacity: 1, Refill: 0}, Units: 1},
	}
	enc := encodeCharges(cs)
	assert.Equal(t, "10 1 4 8:3:gpt:0:", enc[:len("10 1 4 8:3:gpt:0:")], "charge_record's form")
	assert.Equal(t, cs, decodeCharges(enc))
	assert.Empty(t, decodeCharges(""))
	assert.Equal(t, cs[:1], decodeCharges(enc[:len("10 1 4 8:3:gpt:0:")]+"garbage"), "stops at the malformed")
}

func FuzzDecodeCharges(f *testing.F) {
	f.Add(encodeCharges([]limiter.Charge{{Key: limiter.Key{Pool: "gpt"}, Limit: limiter.Limit{Capacity: 10, Refill: 1}, Units: 4}}))
	f.Add("10 500/3 2 9:1:p:3:abc")
	f.Add("1 1 1 99:")
	f.Add("-1 x/0 1 3:1:p")
	f.Fuzz(func(t *testing.T, s string) {
		cs := decodeCharges(s)
		require.Equal(t, cs, decodeCharges(encodeCharges(cs)), "what is read is written back the same")
	})
}
