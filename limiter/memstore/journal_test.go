package memstore_test

import (
	"bytes"
	"context"
	"fmt"
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

// TestJournal: with a state directory, budgets' spend survives a restart
// exactly: settled, released and committed calls as they ended, holds in
// flight at the stop committed at their amount (as their TTL would), and a
// line cut short by a kill ignored.
func TestJournal(t *testing.T) {
	ctx := context.Background()
	budgets := []limiter.Budget{{Owner: "acme", Limit: limiter.Unlimited}, {Owner: "group", Limit: limiter.Unlimited}}
	hold := func(t *testing.T, s *memstore.Store, id string, cost policy.Money, commit bool) {
		t.Helper()
		d, err := s.Reserve(ctx, limiter.Request{Hold: &limiter.Hold{ID: id, TTL: time.Hour, Period: "2026-01", Cost: cost, Budgets: budgets, Commit: commit}})
		require.NoError(t, err)
		require.True(t, d.Allowed)
	}
	spent := func(t *testing.T, s *memstore.Store) (acme, group, reserved policy.Money) {
		t.Helper()
		st, err := s.Usage(ctx, "2026-01", budgets, time.Time{})
		require.NoError(t, err)
		return st.Budgets[0].Spent, st.Budgets[1].Spent, st.Budgets[0].Reserved
	}
	tests := map[string]struct {
		tear          bool
		wantTorn      bool
		wantCommitted int
	}{
		"clean":          {wantCommitted: 1},
		"torn last line": {tear: true, wantTorn: true, wantCommitted: 1},
	}
	for name, tc := range tests {
		t.Run(name, func(t *testing.T) {
			dir := t.TempDir()
			clk := fakeclock.New(epoch)
			s, err := memstore.New(memstore.Config{Clock: clk, StateDir: dir})
			require.NoError(t, err)
			hold(t, s, "settled", 100, false)
			_, err = s.Settle(ctx, "settled", 40)
			require.NoError(t, err)
			hold(t, s, "released", 100, false)
			_, err = s.Release(ctx, "released")
			require.NoError(t, err)
			hold(t, s, "committed", 7, true)
			hold(t, s, "in-flight", 30, false)
			acme, group, reserved := spent(t, s)
			require.Equal(t, policy.Money(47), acme)
			require.Equal(t, policy.Money(47), group)
			require.Equal(t, policy.Money(30), reserved)
			// No Close: the process is killed.
			if tc.tear {
				f, err := os.OpenFile(filepath.Join(dir, memstore.JournalFile), os.O_APPEND|os.O_WRONLY, 0)
				require.NoError(t, err)
				_, err = f.WriteString(`{"k":"c","p":"2026-01","m":99`)
				require.NoError(t, err)
				require.NoError(t, f.Close())
			}

			s2, err := memstore.New(memstore.Config{Clock: clk, StateDir: dir})
			require.NoError(t, err)
			t.Cleanup(func() { assert.NoError(t, s2.Close()); assert.NoError(t, s.Close()) })
			rep := s2.Replayed()
			assert.Equal(t, tc.wantCommitted, rep.Committed)
			assert.Equal(t, tc.wantTorn, rep.Torn)
			acme, group, reserved = spent(t, s2)
			assert.Equal(t, policy.Money(77), acme, "40 settled + 7 committed + 30 in flight at its amount")
			assert.Equal(t, policy.Money(77), group)
			assert.Zero(t, reserved)
			_, err = s2.Settle(ctx, "in-flight", 1)
			require.ErrorIs(t, err, limiter.ErrUnknownReservation, "committed at restart; it settles no more")

			// And again: the compacted journal restores the same.
			hold(t, s2, "after", 3, true)
			require.NoError(t, s2.Close())
			s3, err := memstore.New(memstore.Config{Clock: clk, StateDir: dir})
			require.NoError(t, err)
			t.Cleanup(func() { assert.NoError(t, s3.Close()) })
			acme, _, _ = spent(t, s3)
			assert.Equal(t, policy.Money(80), acme)
			assert.Zero(t, s3.Replayed().Committed)
		})
	}
}

// TestJournalCorrupt: a bad line before the end is not a kill mid-write:
// the store refuses to start rather than lose spend silently.
func TestJournalCorrupt(t *testing.T) {
	dir := t.TempDir()
	require.NoError(t, os.WriteFile(filepath.Join(dir, memstore.JournalFile),
		[]byte("{\"k\":\"c\",\"p\":\"2026-01\",\"m\":5,\"o\":[\"a\"]}\nnot json\n{\"k\":\"c\",\"p\":\"2026-01\",\"m\":5,\"o\":[\"a\"]}\n"), 0o600))
	_, err := memstore.New(memstore.Config{StateDir: dir})
	require.ErrorContains(t, err, "journal")
	require.ErrorContains(t, err, "line 2")
}

// TestJournalCompacts: a journal rewritten many times while calls hold,
// settle and commit restores exactly what the store had.
func TestJournalCompacts(t *testing.T) {
	ctx := context.Background()
	dir := t.TempDir()
	budgets := []limiter.Budget{{Owner: "acme", Limit: limiter.Unlimited}}
	s, err := memstore.New(memstore.Config{StateDir: dir, CompactLines: 3})
	require.NoError(t, err)
	var want policy.Money
	for i := range 50 {
		id := fmt.Sprintf("c%d", i)
		d, err := s.Reserve(ctx, limiter.Request{Hold: &limiter.Hold{ID: id, TTL: time.Hour, Period: "2026-01", Cost: 10, Budgets: budgets}})
		require.NoError(t, err)
		require.True(t, d.Allowed)
		switch i % 3 {
		case 0:
			_, err = s.Settle(ctx, id, policy.Money(i))
			want += policy.Money(i)
		case 1:
			_, err = s.Release(ctx, id)
		default:
			want += 10 // left in flight: committed at its amount on restart
		}
		require.NoError(t, err)
	}
	lines, err := os.ReadFile(filepath.Join(dir, memstore.JournalFile))
	require.NoError(t, err)
	assert.Less(t, bytes.Count(lines, []byte("\n")), 40, "compacted: far fewer lines than the 84 written")
	s2, err := memstore.New(memstore.Config{StateDir: dir})
	require.NoError(t, err)
	t.Cleanup(func() { assert.NoError(t, s2.Close()); assert.NoError(t, s.Close()) })
	u, err := s2.Usage(ctx, "2026-01", budgets, time.Time{})
	require.NoError(t, err)
	assert.Equal(t, want, u.Budgets[0].Spent)
	assert.Equal(t, 16, s2.Replayed().Committed)
}
