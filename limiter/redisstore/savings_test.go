package redisstore_test

import (
	"context"
	"encoding/binary"
	"fmt"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/tollgate/tollgate/internal/redistest"
	"github.com/tollgate/tollgate/limiter"
	"github.com/tollgate/tollgate/limiter/redisstore"
	"github.com/tollgate/tollgate/policy"
)

// TestSavingsKey: a client's savings of a period live in one hash under the
// prefix's tag (the same slot as its budget), named like the budget with s:
// for b:, and expire as budget periods do.
func TestSavingsKey(t *testing.T) {
	ctx := context.Background()
	c := srv.Client(t)
	s, tag := prefixedStore(t, c)
	d, err := s.Reserve(ctx, admission("call", time.Minute))
	require.NoError(t, err)
	require.True(t, d.Allowed)
	_, err = s.Finish(ctx, limiter.Ending{ID: "call", Outcome: limiter.OutcomeSettled, Actual: 100, Now: epoch,
		Savings: []limiter.Saving{{Strategy: "downgrade", Amount: 41_200_000}, {Strategy: "prompt_cache", Amount: -1_500}}})
	require.NoError(t, err)

	key := tag + "s:9:acme/team:" + period
	got, err := c.HGetAll(ctx, key).Result()
	require.NoError(t, err)
	assert.Equal(t, map[string]string{"downgrade": "41200000", "prompt_cache": "-1500"}, got)
	ttl, err := c.TTL(ctx, key).Result()
	require.NoError(t, err)
	assert.InDelta(t, (70 * 24 * time.Hour).Seconds(), ttl.Seconds(), 5, "BUDGET_TTL, like the budget beside it")
	assert.Equal(t, limiter.SavingsTTL, 70*24*time.Hour)
	budgetTTL, err := c.TTL(ctx, tag+"b:9:acme/team:"+period).Result()
	require.NoError(t, err)
	assert.InDelta(t, budgetTTL.Seconds(), ttl.Seconds(), 5)
	assert.Equal(t, []string{tag + "s:9:acme/team:" + period}, scanKeys(t, c, tag+"s:"), "the client's only, not its parent's")
}

// FuzzFinishSavings ends a reservation with savings read from the fuzz
// input on the live server. Savings limiter.ValidateSavings refuses are
// refused with an error that says so, nothing is booked, and the
// reservation stays held (a release then ends it, not a repeat); others
// are booked exactly, by strategy, zeros left out.
//
// Input: a count byte (mod 12), then per saving a tag byte — bit 0: the
// name is raw bytes (else letters and _ from an alphabet), bit 1: the
// amount is 8 bytes big-endian (else one signed byte) — a length byte (mod
// 36), the name's bytes, the amount's.
func FuzzFinishSavings(f *testing.F) {
	seed := func(savings ...limiter.Saving) []byte {
		b := []byte{byte(len(savings))}
		for _, s := range savings {
			b = append(b, 3, byte(len(s.Strategy)))
			b = append(b, s.Strategy...)
			b = binary.BigEndian.AppendUint64(b, uint64(s.Amount))
		}
		return b
	}
	f.Add(seed())
	f.Add(seed(limiter.Saving{Strategy: "downgrade", Amount: 41_200_000}, limiter.Saving{Strategy: "flex", Amount: 3_000_000}))
	f.Add(seed(limiter.Saving{Strategy: "prompt_cache", Amount: -1_500}, limiter.Saving{Strategy: "compaction", Amount: 0}))
	f.Add(seed(limiter.Saving{Strategy: "flex", Amount: limiter.MaxMoney - 1}, limiter.Saving{Strategy: "downgrade", Amount: -(limiter.MaxMoney - 1)}))
	f.Add(seed(limiter.Saving{Strategy: "flex", Amount: limiter.MaxMoney}))
	f.Add(seed(limiter.Saving{Strategy: "Flex", Amount: 1}))
	f.Add(seed(limiter.Saving{Strategy: "flex", Amount: 1}, limiter.Saving{Strategy: "flex", Amount: 1}))
	f.Add(seed(limiter.Saving{Strategy: strings.Repeat("a", 33), Amount: 1}))
	f.Add(seed(limiter.Saving{Strategy: "", Amount: 1}))
	f.Add(seed(limiter.Saving{Strategy: "a\n'b", Amount: 1}))
	nine := make([]limiter.Saving, limiter.MaxSavings+1)
	for i := range nine {
		nine[i] = limiter.Saving{Strategy: strings.Repeat("s", i+1), Amount: 1}
	}
	f.Add(seed(nine...))

	ctx := context.Background()
	s, err := redisstore.New(srv.Client(f), redisstore.Config{Prefix: redistest.Prefix(f)})
	require.NoError(f, err)
	var n atomic.Int64
	f.Fuzz(func(t *testing.T, data []byte) {
		savings := fuzzSavings(data)
		i := n.Add(1)
		id, owner := fmt.Sprint("f", i), fmt.Sprint("client-", i)
		budgets := []limiter.Budget{{Owner: owner, Limit: 1_000_000}, {Owner: "parent", Limit: limiter.Unlimited}}
		d, err := s.Reserve(ctx, limiter.Request{Hold: &limiter.Hold{ID: id, TTL: time.Minute, Period: period, Cost: 500, Budgets: budgets}, Now: epoch})
		require.NoError(t, err)
		require.True(t, d.Allowed)

		_, err = s.Finish(ctx, limiter.Ending{ID: id, Outcome: limiter.OutcomeSettled, Actual: 300, Savings: savings, Now: epoch})
		u, uerr := s.Usage(ctx, period, budgets, epoch)
		require.NoError(t, uerr)
		if verr := limiter.ValidateSavings(savings); verr != nil {
			require.Error(t, err, "refused: %v", verr)
			assert.NotErrorIs(t, err, limiter.ErrUnknownReservation)
			assert.Contains(t, err.Error(), "finish "+id+": savings")
			assert.Empty(t, u.Savings, "nothing booked")
			assert.Equal(t, policy.Money(500), u.Budgets[0].Reserved, "still held")
			assert.Zero(t, u.Budgets[0].Spent)
			st, err := s.Release(ctx, id)
			require.NoError(t, err)
			assert.False(t, st.Repeat, "the refused finish ended nothing: no reservation leaked or lost")
			return
		}
		require.NoError(t, err)
		want := map[string]policy.Money{}
		limiter.AddSavings(want, savings)
		assert.Equal(t, limiter.SavingsList(want), u.Savings)
		assert.Equal(t, policy.Money(300), u.Budgets[0].Spent)
		assert.Zero(t, u.Budgets[0].Reserved)
		parent, err := s.Usage(ctx, period, budgets[1:], epoch)
		require.NoError(t, err)
		assert.Empty(t, parent.Savings, "booked to the client only")
	})
}

// fuzzSavings reads FuzzFinishSavings's input.
func fuzzSavings(data []byte) []limiter.Saving {
	next := func() byte {
		if len(data) == 0 {
			return 0
		}
		b := data[0]
		data = data[1:]
		return b
	}
	const alphabet = "abcdefghijklmnopqrstuvwxyz_"
	var out []limiter.Saving
	for range int(next() % 12) {
		tag, size := next(), int(next()%36)
		name := make([]byte, size)
		for i := range name {
			name[i] = next()
			if tag&1 == 0 {
				name[i] = alphabet[int(name[i])%len(alphabet)]
			}
		}
		var amount int64
		if tag&2 != 0 {
			var b [8]byte
			for i := range b {
				b[i] = next()
			}
			amount = int64(binary.BigEndian.Uint64(b[:]))
		} else {
			amount = int64(int8(next()))
		}
		out = append(out, limiter.Saving{Strategy: string(name), Amount: policy.Money(amount)})
	}
	return out
}
