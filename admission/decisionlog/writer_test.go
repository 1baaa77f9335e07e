package decisionlog

import (
	"bufio"
	"bytes"
	"io"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/tollgate/tollgate/admission"
)

func decision(i int) admission.DecisionRecord {
	return admission.DecisionRecord{Time: t0.Add(time.Duration(i) * time.Millisecond), RequestID: "r", Client: "acme",
		Tier: "basic", Route: "openai", Outcome: "allowed", Allowed: true, Estimate: 1_000, Pools: []admission.PoolUnits{{Pool: "gpt", Units: 10}}}
}

func countLines(t *testing.T, r io.Reader) int {
	t.Helper()
	sc := bufio.NewScanner(r)
	n := 0
	for sc.Scan() {
		n++
	}
	require.NoError(t, sc.Err())
	return n
}

// stuckDisk is a file that hangs in Write until released, as a slow disk
// does; entered says a write has begun.
type stuckDisk struct {
	entered, release chan struct{}
	bytes.Buffer
}

func (d *stuckDisk) Write(p []byte) (int, error) {
	select {
	case d.entered <- struct{}{}:
	default:
	}
	<-d.release
	return d.Buffer.Write(p)
}

// TestWriterDropsWhenFull: with the writer stuck on a slow disk, records
// beyond the buffer are dropped and counted, the sender never waits; once
// the disk moves, Close writes every record it kept.
func TestWriterDropsWhenFull(t *testing.T) {
	disk := &stuckDisk{entered: make(chan struct{}, 1), release: make(chan struct{})}
	reg := prometheus.NewRegistry()
	w, err := New(disk, Config{Buffer: 4}, reg, nil)
	require.NoError(t, err)
	<-disk.entered // the start line is the first flush: the writer hangs in it, its channel empty
	for i := range 4 + 3 {
		w.Decision(decision(i)) // never blocks
	}
	assert.Equal(t, 3.0, testutil.ToFloat64(w.m.dropped))
	close(disk.release)
	require.NoError(t, w.Close())
	assert.Equal(t, 1+4, countLines(t, &disk.Buffer), "the start line and the four kept")
	assert.Equal(t, 4.0, testutil.ToFloat64(w.m.written.WithLabelValues(KindDecision)))
	w.Decision(decision(9)) // after Close: dropped, no panic
	assert.Equal(t, 4.0, testutil.ToFloat64(w.m.dropped))
	require.NoError(t, w.Close(), "Close is idempotent")
}

// TestWriterFlushesOnClose: every record sent before Close is in the file
// after it, parseable.
func TestWriterFlushesOnClose(t *testing.T) {
	path := filepath.Join(t.TempDir(), "d.jsonl")
	w, err := Open(path, Config{Buffer: 1000, Policy: "p.yaml"}, prometheus.NewRegistry(), nil)
	require.NoError(t, err)
	for i := range 500 {
		w.Decision(decision(i))
	}
	w.Settled(admission.SettleRecord{Time: t0, Reservation: "x", Outcome: "settled", Actual: 7})
	require.NoError(t, w.Close())
	f, err := os.Open(path)
	require.NoError(t, err)
	defer f.Close()
	lg, err := Parse(f)
	require.NoError(t, err)
	assert.Equal(t, "p.yaml", lg.Policy)
	assert.Len(t, lg.Entries, 501)
	st, err := os.Stat(path)
	require.NoError(t, err)
	assert.Equal(t, os.FileMode(0o600), st.Mode().Perm())
}

// TestWriterRotates: past MaxBytes the file moves to FILE.1 and a new one
// starts with its own start line; no record is lost.
func TestWriterRotates(t *testing.T) {
	path := filepath.Join(t.TempDir(), "d.jsonl")
	reg := prometheus.NewRegistry()
	w, err := Open(path, Config{Buffer: 1000, MaxBytes: 4096, Policy: "p.yaml"}, reg, nil)
	require.NoError(t, err)
	for i := range 100 {
		w.Decision(decision(i))
	}
	require.NoError(t, w.Close())
	rotations := testutil.ToFloat64(w.m.rotations)
	require.GreaterOrEqual(t, rotations, 1.0)
	cur, err := os.ReadFile(path)
	require.NoError(t, err)
	old, err := os.ReadFile(path + ".1")
	require.NoError(t, err)
	assert.LessOrEqual(t, len(old), 4096)
	assert.True(t, strings.HasPrefix(string(cur), `{"v":1,"kind":"start"`))
	// FILE.1 keeps only the last rotation: what the two files hold plus
	// what earlier rotations replaced is every record.
	assert.Equal(t, 100.0, testutil.ToFloat64(w.m.written.WithLabelValues(KindDecision)))
	assert.Zero(t, testutil.ToFloat64(w.m.errors))
}

func TestConfigValidate(t *testing.T) {
	require.NoError(t, DefaultConfig().Validate())
	err := Config{Buffer: 0, MaxBytes: -1}.Validate()
	require.Error(t, err)
	assert.Contains(t, err.Error(), "buffer")
	assert.Contains(t, err.Error(), "max bytes")
}

// BenchmarkWriterDecision is the cost on the request path: one record
// handed to the writer (dropped when it falls behind).
func BenchmarkWriterDecision(b *testing.B) {
	w, err := New(io.Discard, DefaultConfig(), prometheus.NewRegistry(), nil)
	require.NoError(b, err)
	rec := decision(1)
	b.ReportAllocs()
	b.RunParallel(func(pb *testing.PB) {
		for pb.Next() {
			w.Decision(rec)
		}
	})
	b.StopTimer()
	require.NoError(b, w.Close())
}
