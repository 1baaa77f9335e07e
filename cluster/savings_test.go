package cluster_test

import (
	"context"
	"sync"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/tollgate/tollgate/cluster"
	"github.com/tollgate/tollgate/internal/fakeclock"
	"github.com/tollgate/tollgate/limiter"
	"github.com/tollgate/tollgate/limiter/memstore"
	"github.com/tollgate/tollgate/limiter/storetest"
	"github.com/tollgate/tollgate/policy"
)

// TestSavingsConformance runs the savings suite on a fleet of one over
// each shared store: as configured by default (a chain of unlimited
// budgets is decided here, so its savings go through the member's journal
// into a batch; a capped one is decided by slices after its first call),
// and near-limit at 100% (every capped hold decided by the shared store),
// where Reopen is a second member on the same shared store.
func TestSavingsConformance(t *testing.T) {
	for name, newShared := range conformanceSetups {
		t.Run(name, func(t *testing.T) {
			t.Run("default", func(t *testing.T) {
				storetest.RunSavings(t, func(t *testing.T, clock limiter.Clock) storetest.FinishBackend {
					return conformanceStore(t, clock, newShared)
				}, storetest.FinishConfig{})
			})
			t.Run("near the limit", func(t *testing.T) {
				var sharedOf sync.Map // *cluster.Store → cluster.Shared
				open := func(t *testing.T, clock limiter.Clock, shared cluster.Shared) *cluster.Store {
					cfg := cluster.DefaultConfig()
					cfg.Clock, cfg.SyncEvery, cfg.NearLimitPercent = clock, time.Hour, 100
					s, err := cluster.NewStore(cfg, shared, nil, prometheus.NewRegistry())
					require.NoError(t, err)
					sharedOf.Store(s, shared)
					return s
				}
				storetest.RunSavings(t, func(t *testing.T, clock limiter.Clock) storetest.FinishBackend {
					return open(t, clock, newShared(t, clock))
				}, storetest.FinishConfig{Reopen: func(t *testing.T, clock limiter.Clock, b storetest.FinishBackend) storetest.FinishBackend {
					shared, ok := sharedOf.Load(b)
					require.True(t, ok)
					s := open(t, clock, shared.(cluster.Shared))
					t.Cleanup(func() { assert.NoError(t, s.Close()) })
					return s
				}})
			})
		})
	}
}

// flaky is a memory store that can stop answering Finish, or lose the
// answer to a Book it applied, as an unreachable Redis would.
type flaky struct {
	*memstore.Store
	mu       sync.Mutex
	down     bool // Finish fails as if the store were unreachable
	loseBook int  // apply this many batches, then lose their answers
}

func (f *flaky) Finish(ctx context.Context, e limiter.Ending) (limiter.Settlement, error) {
	f.mu.Lock()
	down := f.down
	f.mu.Unlock()
	if down {
		return limiter.Settlement{}, errLost
	}
	return f.Store.Finish(ctx, e)
}

func (f *flaky) Book(ctx context.Context, batch string, deltas []limiter.SpendDelta) (bool, error) {
	applied, err := f.Store.Book(ctx, batch, deltas)
	f.mu.Lock()
	defer f.mu.Unlock()
	if err == nil && f.loseBook > 0 {
		f.loseBook--
		return false, errLost
	}
	return applied, err
}

func (f *flaky) set(fn func(f *flaky)) {
	f.mu.Lock()
	defer f.mu.Unlock()
	fn(f)
}

// newFlaky is a fleet of one over a flaky memory store on a fake clock;
// nearLimit 100 leaves every capped hold to the shared store.
func newFlaky(t *testing.T, nearLimit int64) (*cluster.Store, *flaky) {
	t.Helper()
	clk := fakeclock.New(epoch)
	mem, err := memstore.New(memstore.Config{Clock: clk})
	require.NoError(t, err)
	t.Cleanup(func() { assert.NoError(t, mem.Close()) })
	f := &flaky{Store: mem}
	cfg := cluster.DefaultConfig()
	cfg.Clock, cfg.SyncEvery, cfg.NearLimitPercent = clk, time.Hour, nearLimit
	s, err := cluster.NewStore(cfg, f, nil, prometheus.NewRegistry())
	require.NoError(t, err)
	t.Cleanup(func() { assert.NoError(t, s.Close()) })
	return s, f
}

func savedIn(t *testing.T, b limiter.Ledger, chain []limiter.Budget) []limiter.Saving {
	t.Helper()
	u, err := b.Usage(context.Background(), period, chain, time.Time{})
	require.NoError(t, err)
	return u.Savings
}

// TestSavingsJournaled: the savings of a call decided and ended here reach
// the shared store with the next batch, exactly once, even when the
// batch's answer is lost and it is sent again; until then the member's
// Usage adds them.
func TestSavingsJournaled(t *testing.T) {
	ctx := context.Background()
	chain := []limiter.Budget{{Owner: "acme", Limit: limiter.Unlimited}, {Owner: "group", Limit: limiter.Unlimited}}
	want := []limiter.Saving{{Strategy: "downgrade", Amount: 41_200_000}, {Strategy: "prompt_cache", Amount: -1_500}}
	for name, lose := range map[string]int{"answered": 0, "answer lost": 1} {
		t.Run(name, func(t *testing.T) {
			s, shared := newFlaky(t, cluster.DefaultConfig().NearLimitPercent)
			d, err := s.Reserve(ctx, limiter.Request{Hold: &limiter.Hold{ID: "local", TTL: time.Minute, Period: period, Cost: 500, Budgets: chain}})
			require.NoError(t, err)
			require.True(t, d.Allowed)
			st, err := s.Finish(ctx, limiter.Ending{ID: "local", Outcome: limiter.OutcomeSettled, Actual: 500, Savings: want})
			require.NoError(t, err)
			require.False(t, st.Repeat)
			_, err = shared.Store.Finish(ctx, limiter.Ending{ID: "local", Outcome: limiter.OutcomeSettled})
			require.ErrorIs(t, err, limiter.ErrUnknownReservation, "decided here: the shared store never held it")
			assert.Empty(t, savedIn(t, shared.Store, chain), "not booked yet")
			assert.Equal(t, want, savedIn(t, s, chain), "the member adds what it has not booked")

			shared.set(func(f *flaky) { f.loseBook = lose })
			for range 3 {
				s.Sync(ctx) // a lost answer puts the member in outage mode; the next sync resends the batch
			}
			mode, _ := s.Mode()
			require.Equal(t, "normal", mode)
			assert.Equal(t, want, savedIn(t, shared.Store, chain), "booked once")
			assert.Equal(t, want, savedIn(t, s, chain), "and counted once")
			assert.Empty(t, savedIn(t, shared.Store, chain[1:]), "the client's, not its parent's")
			u, err := shared.Store.Usage(ctx, period, chain, time.Time{})
			require.NoError(t, err)
			assert.Equal(t, policy.Money(500), u.Budgets[0].Spent, "with the spend")
		})
	}
}

// TestSavingsOutage: a call the shared store holds, settled while the
// store is unreachable, has its savings booked with its end when the store
// returns, once; a release queued so books none.
func TestSavingsOutage(t *testing.T) {
	ctx := context.Background()
	chain := []limiter.Budget{{Owner: "acme", Limit: 100 * policy.NanosPerDollar}}
	want := []limiter.Saving{{Strategy: "flex", Amount: 3_000_000}}
	s, shared := newFlaky(t, 100)
	for _, id := range []string{"settled", "released"} {
		d, err := s.Reserve(ctx, limiter.Request{Hold: &limiter.Hold{ID: id, TTL: time.Minute, Period: period, Cost: 500, Budgets: chain}})
		require.NoError(t, err)
		require.True(t, d.Allowed)
	}
	shared.set(func(f *flaky) { f.down = true })
	_, err := s.Finish(ctx, limiter.Ending{ID: "settled", Outcome: limiter.OutcomeSettled, Actual: 400, Savings: want})
	require.NoError(t, err, "queued for when the store returns")
	_, err = s.Finish(ctx, limiter.Ending{ID: "released", Outcome: limiter.OutcomeReleased, Savings: []limiter.Saving{{Strategy: "downgrade", Amount: 9}}})
	require.NoError(t, err)
	// One failed call is not an outage (slow is not down): the ends wait
	// in the queue all the same.
	assert.Empty(t, savedIn(t, shared.Store, chain))

	shared.set(func(f *flaky) { f.down = false })
	s.Sync(ctx)
	mode, _ := s.Mode()
	require.Equal(t, "normal", mode)
	assert.Equal(t, want, savedIn(t, shared.Store, chain), "booked with the queued settle")
	assert.Equal(t, want, savedIn(t, s, chain))
	st, err := s.Finish(ctx, limiter.Ending{ID: "settled", Outcome: limiter.OutcomeSettled, Actual: 400, Savings: want})
	require.NoError(t, err)
	assert.True(t, st.Repeat)
	s.Sync(ctx)
	assert.Equal(t, want, savedIn(t, shared.Store, chain), "once")
}

// TestSavingsJournalSplits: savings journaled beyond what one batch's delta
// may carry (more than MaxDeltaSavings strategies, a sum past 2^53) are
// booked over several batches, exactly.
func TestSavingsJournalSplits(t *testing.T) {
	ctx := context.Background()
	chain := []limiter.Budget{{Owner: "acme", Limit: limiter.Unlimited}}
	s, shared := newFlaky(t, cluster.DefaultConfig().NearLimitPercent)
	want := map[string]policy.Money{}
	for i := range 10 {
		savings := []limiter.Saving{{Strategy: "prompt_cache", Amount: -(limiter.MaxMoney - 1)}}
		for j := range limiter.MaxSavings - 1 {
			savings = append(savings, limiter.Saving{Strategy: "s_" + string(rune('a'+i)) + string(rune('a'+j)), Amount: policy.Money(i*10 + j + 1)})
		}
		limiter.AddSavings(want, savings)
		id := "c" + string(rune('a'+i))
		d, err := s.Reserve(ctx, limiter.Request{Hold: &limiter.Hold{ID: id, TTL: time.Minute, Period: period, Cost: 5, Budgets: chain}})
		require.NoError(t, err)
		require.True(t, d.Allowed)
		_, err = s.Finish(ctx, limiter.Ending{ID: id, Outcome: limiter.OutcomeSettled, Actual: 5, Savings: savings})
		require.NoError(t, err)
	}
	require.Len(t, want, 71, "more strategies than one delta carries")
	assert.Equal(t, limiter.SavingsList(want), savedIn(t, s, chain))
	s.Sync(ctx)
	assert.NotEqual(t, limiter.SavingsList(want), savedIn(t, shared.Store, chain), "one batch carries part of it")
	assert.Equal(t, limiter.SavingsList(want), savedIn(t, s, chain), "the member counts the rest")
	for range 10 {
		s.Sync(ctx)
	}
	assert.Equal(t, limiter.SavingsList(want), savedIn(t, shared.Store, chain), "all of it, exactly: prompt_cache at -10·(2^53-1)")
	assert.Equal(t, limiter.SavingsList(want), savedIn(t, s, chain))
}
