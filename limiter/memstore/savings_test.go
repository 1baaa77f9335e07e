package memstore_test

import (
	"context"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/tollgate/tollgate/internal/fakeclock"
	"github.com/tollgate/tollgate/limiter"
	"github.com/tollgate/tollgate/limiter/memstore"
	"github.com/tollgate/tollgate/policy"
)

func saving(strategy string, amount policy.Money) limiter.Saving {
	return limiter.Saving{Strategy: strategy, Amount: amount}
}

// TestJournalSavings: with a state directory, clients' savings survive a
// kill and a restart exactly as they were booked (by a settle, or by a
// fleet member's batch), a release and a call in flight at the kill books
// none, and a compacted journal restores the same.
func TestJournalSavings(t *testing.T) {
	ctx := context.Background()
	acme := []limiter.Budget{{Owner: "acme", Limit: limiter.Unlimited}, {Owner: "group", Limit: limiter.Unlimited}}
	beta := []limiter.Budget{{Owner: "beta", Limit: limiter.Unlimited}}
	want := map[string][]limiter.Saving{
		"acme 2026-01":  {saving("downgrade", 41_200_010), saving("flex", 3_000_000), saving("prompt_cache", -1_500)},
		"group 2026-01": nil,
		"beta 2026-02":  {saving("flex", 7)},
	}
	savedOf := func(t *testing.T, s *memstore.Store) map[string][]limiter.Saving {
		t.Helper()
		out := map[string][]limiter.Saving{}
		for key, chain := range map[string][]limiter.Budget{"acme 2026-01": acme, "group 2026-01": acme[1:], "beta 2026-02": beta} {
			u, err := s.Usage(ctx, key[len(key)-7:], chain, time.Time{})
			require.NoError(t, err)
			out[key] = u.Savings
		}
		return out
	}
	tests := map[string]struct {
		compactLines int
		tear         bool
	}{
		"clean":           {},
		"torn last line":  {tear: true},
		"compacted often": {compactLines: 2},
	}
	for name, tc := range tests {
		t.Run(name, func(t *testing.T) {
			dir := t.TempDir()
			clk := fakeclock.New(epoch)
			cfg := memstore.Config{Clock: clk, StateDir: dir, CompactLines: tc.compactLines}
			s, err := memstore.New(cfg)
			require.NoError(t, err)
			hold := func(id, period string, chain []limiter.Budget) {
				t.Helper()
				d, err := s.Reserve(ctx, limiter.Request{Hold: &limiter.Hold{ID: id, TTL: time.Hour, Period: period, Cost: 100, Budgets: chain}})
				require.NoError(t, err)
				require.True(t, d.Allowed)
			}
			finish := func(id string, o limiter.Outcome, savings ...limiter.Saving) {
				t.Helper()
				_, err := s.Finish(ctx, limiter.Ending{ID: id, Outcome: o, Actual: 40, Savings: savings})
				require.NoError(t, err)
			}
			hold("a", "2026-01", acme)
			finish("a", limiter.OutcomeSettled, saving("downgrade", 41_200_000), saving("flex", 3_000_000))
			hold("r", "2026-01", acme)
			finish("r", limiter.OutcomeReleased, saving("downgrade", 99))
			hold("c", "2026-01", acme)
			finish("c", limiter.OutcomeSettled, saving("prompt_cache", -1_500), saving("compaction", 0))
			finish("c", limiter.OutcomeSettled, saving("prompt_cache", -1_500)) // a repeat
			applied, err := s.Book(ctx, "member:1", []limiter.SpendDelta{{Owner: "acme", Period: "2026-01", Savings: []limiter.Saving{saving("downgrade", 10)}}})
			require.NoError(t, err)
			require.True(t, applied)
			hold("b", "2026-02", beta)
			finish("b", limiter.OutcomeSettled, saving("flex", 7))
			hold("in-flight", "2026-01", acme)
			require.Equal(t, want, savedOf(t, s))
			// No Close: the process is killed.
			if tc.tear {
				f, err := os.OpenFile(filepath.Join(dir, memstore.JournalFile), os.O_APPEND|os.O_WRONLY, 0)
				require.NoError(t, err)
				_, err = f.WriteString(`{"k":"e","id":"in-flight","m":1,"s":{"flex":5`)
				require.NoError(t, err)
				require.NoError(t, f.Close())
			}

			s2, err := memstore.New(cfg)
			require.NoError(t, err)
			t.Cleanup(func() { assert.NoError(t, s2.Close()); assert.NoError(t, s.Close()) })
			assert.Equal(t, tc.tear, s2.Replayed().Torn)
			assert.Equal(t, 1, s2.Replayed().Committed, "the call in flight is committed at its amount, with no savings")
			assert.Equal(t, want, savedOf(t, s2))

			require.NoError(t, s2.Close())
			s3, err := memstore.New(cfg)
			require.NoError(t, err)
			t.Cleanup(func() { assert.NoError(t, s3.Close()) })
			assert.Equal(t, want, savedOf(t, s3), "the compacted journal restores the same")
		})
	}
}

// TestSavingsForgotten: a client's savings of a period are kept as long
// as Redis keeps its key, limiter.SavingsTTL after their last booking, and
// forgotten after, across a restart too.
func TestSavingsForgotten(t *testing.T) {
	ctx := context.Background()
	chain := []limiter.Budget{{Owner: "acme", Limit: limiter.Unlimited}}
	tests := map[string]struct {
		again time.Duration // another booking this long after the first (0: none)
		after time.Duration // read this long after the first
		kept  []limiter.Saving
	}{
		"within the TTL":               {after: limiter.SavingsTTL - time.Hour, kept: []limiter.Saving{saving("flex", 5)}},
		"past the TTL":                 {after: limiter.SavingsTTL + time.Hour},
		"a later booking extends it":   {again: 30 * 24 * time.Hour, after: limiter.SavingsTTL + time.Hour, kept: []limiter.Saving{saving("flex", 10)}},
		"past the later booking's TTL": {again: 30 * 24 * time.Hour, after: limiter.SavingsTTL + 31*24*time.Hour},
	}
	for name, tc := range tests {
		for _, restart := range []bool{false, true} {
			t.Run(name+map[bool]string{true: "/after a restart"}[restart], func(t *testing.T) {
				clk := fakeclock.New(epoch)
				cfg := memstore.Config{Clock: clk, StateDir: t.TempDir()}
				s, err := memstore.New(cfg)
				require.NoError(t, err)
				t.Cleanup(func() { assert.NoError(t, s.Close()) })
				book := func(id string) {
					d, err := s.Reserve(ctx, limiter.Request{Hold: &limiter.Hold{ID: id, TTL: time.Hour, Period: "2026-01", Cost: 100, Budgets: chain}})
					require.NoError(t, err)
					require.True(t, d.Allowed)
					_, err = s.Finish(ctx, limiter.Ending{ID: id, Outcome: limiter.OutcomeSettled, Actual: 1, Savings: []limiter.Saving{saving("flex", 5)}})
					require.NoError(t, err)
				}
				book("first")
				if tc.again > 0 {
					clk.Set(epoch.Add(tc.again))
					book("again")
				}
				if restart {
					require.NoError(t, s.Close())
					s, err = memstore.New(cfg)
					require.NoError(t, err)
				}
				clk.Set(epoch.Add(tc.after))
				u, err := s.Usage(ctx, "2026-01", chain, time.Time{})
				require.NoError(t, err)
				assert.Equal(t, tc.kept, u.Savings)
			})
		}
	}
}
