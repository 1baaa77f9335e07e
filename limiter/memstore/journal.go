package memstore

import (
	"bufio"
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"sort"

	"github.com/tollgate/tollgate/policy"
)

// The journal keeps the money of the memory store across restarts: every
// change to a budget's spend, and every hold, is appended to a file under
// Config.StateDir before it is applied, one JSON line each, written to the
// file at once (no buffering in the process), so a process killed at any
// point loses nothing it acknowledged. At start the journal is replayed;
// holds that never ended are committed at their reserved amount, as their
// TTL would have done; then it is compacted to one line per budget.
// Buckets and concurrency slots are not kept: they are transient.

// JournalFile is the journal's name under Config.StateDir.
const JournalFile = "spend.journal"

// journalRecord is one line. Kind c: Amount added to the spend of each
// Owner in Period; h: hold ID of Amount on each Owner in Period; e: hold ID
// ended, spending Amount; s: the savings of Owner in Period (compaction's
// state). Savings (nano-dollars by strategy) on a c or e line are booked
// to the first owner (of the line, or of the hold it ends) in the same
// step, at At (Unix µs).
type journalRecord struct {
	Kind    string           `json:"k"`
	ID      string           `json:"id,omitempty"`
	Period  string           `json:"p,omitempty"`
	Amount  int64            `json:"m"`
	Owners  []string         `json:"o,omitempty"`
	Savings map[string]int64 `json:"s,omitempty"`
	At      int64            `json:"t,omitempty"`
}

// defaultCompactLines is how many lines are appended, beyond the state's
// own size, before the journal is rewritten to the state alone.
const defaultCompactLines = 100_000

type journal struct {
	path    string
	every   int // compact after this many lines past the state
	f       *os.File
	buf     bytes.Buffer
	lines   int // appended since the last compaction
	baseLen int // lines the last compaction wrote
}

// Replayed is what opening a journal found.
type Replayed struct {
	Budgets   int   // budget periods restored
	Committed int   // holds in flight at the stop, committed at their amount
	Torn      bool  // the last line was cut short (a kill mid-write) and ignored
	Lines     int64 // lines read
}

// openJournal replays dir's journal into l and opens it for appending.
func openJournal(dir string, every int, l *ledger) (*journal, Replayed, error) {
	if every <= 0 {
		every = defaultCompactLines
	}
	var rep Replayed
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return nil, rep, fmt.Errorf("memstore: state dir: %w", err)
	}
	j := &journal{path: filepath.Join(dir, JournalFile), every: every}
	f, err := os.Open(j.path)
	switch {
	case errors.Is(err, os.ErrNotExist):
	case err != nil:
		return nil, rep, fmt.Errorf("memstore: journal: %w", err)
	default:
		rep, err = replay(f, l)
		f.Close()
		if err != nil {
			return nil, rep, fmt.Errorf("memstore: journal %s: %w", j.path, err)
		}
	}
	if err := j.compact(l); err != nil {
		return nil, rep, err
	}
	return j, rep, nil
}

// replay applies the journal's lines to l; holds left open are committed.
func replay(r io.Reader, l *ledger) (Replayed, error) {
	var rep Replayed
	type hold struct {
		period string
		amount int64
		owners []string
	}
	open := map[string]hold{}
	sc := bufio.NewScanner(r)
	sc.Buffer(make([]byte, 64<<10), 16<<20)
	var pending error // a bad line is fatal unless it is the last one
	for sc.Scan() {
		if pending != nil {
			return rep, pending
		}
		rep.Lines++
		var rec journalRecord
		if err := json.Unmarshal(sc.Bytes(), &rec); err != nil {
			pending = fmt.Errorf("line %d: %w", rep.Lines, err)
			continue
		}
		switch rec.Kind {
		case "c":
			for _, o := range rec.Owners {
				l.budget(o, rec.Period).spent += policy.Money(rec.Amount)
			}
			l.saved.replay(rec.Owners, rec.Period, rec.Savings, rec.At)
		case "h":
			open[rec.ID] = hold{rec.Period, rec.Amount, rec.Owners}
		case "e":
			h, ok := open[rec.ID]
			if !ok {
				continue // its hold was compacted away already: ended before
			}
			delete(open, rec.ID)
			for _, o := range h.owners {
				l.budget(o, h.period).spent += policy.Money(rec.Amount)
			}
			l.saved.replay(h.owners, h.period, rec.Savings, rec.At)
		case "s":
			l.saved.replay(rec.Owners, rec.Period, rec.Savings, rec.At)
		default:
			pending = fmt.Errorf("line %d: unknown kind %q", rep.Lines, rec.Kind)
		}
	}
	if err := sc.Err(); err != nil {
		return rep, err
	}
	rep.Torn = pending != nil
	ids := make([]string, 0, len(open))
	for id := range open {
		ids = append(ids, id)
	}
	sort.Strings(ids)
	for _, id := range ids {
		h := open[id]
		for _, o := range h.owners {
			l.budget(o, h.period).spent += policy.Money(h.amount)
		}
	}
	rep.Committed = len(open)
	rep.Budgets = len(l.budgets)
	return rep, nil
}

// append writes rec to the file now.
func (j *journal) append(rec journalRecord) error {
	j.buf.Reset()
	if err := json.NewEncoder(&j.buf).Encode(rec); err != nil {
		return fmt.Errorf("memstore: journal: %w", err)
	}
	if _, err := j.f.Write(j.buf.Bytes()); err != nil {
		return fmt.Errorf("memstore: journal: %w", err)
	}
	j.lines++
	return nil
}

// maybeCompact rewrites the journal when it has grown well past the state.
func (j *journal) maybeCompact(l *ledger) error {
	if j.lines < j.every+3*j.baseLen {
		return nil
	}
	return j.compact(l)
}

// compact writes l's state (each budget's spend, each hold in flight, each
// client's savings of a period) to a new file and puts it in the journal's
// place atomically.
func (j *journal) compact(l *ledger) error {
	tmp := j.path + ".tmp"
	f, err := os.OpenFile(tmp, os.O_CREATE|os.O_TRUNC|os.O_WRONLY, 0o600)
	if err != nil {
		return fmt.Errorf("memstore: journal: %w", err)
	}
	w := bufio.NewWriter(f)
	enc := json.NewEncoder(w)
	n := 0
	ids := make([]budgetID, 0, len(l.budgets))
	for id := range l.budgets {
		ids = append(ids, id)
	}
	sort.Slice(ids, func(a, b int) bool {
		if ids[a].owner != ids[b].owner {
			return ids[a].owner < ids[b].owner
		}
		return ids[a].period < ids[b].period
	})
	for _, id := range ids {
		if e := l.budgets[id]; e.spent != 0 {
			err = errors.Join(err, enc.Encode(journalRecord{Kind: "c", Period: id.period, Amount: int64(e.spent), Owners: []string{id.owner}}))
			n++
		}
	}
	for id, r := range l.resv {
		err = errors.Join(err, enc.Encode(journalRecord{Kind: "h", ID: id, Period: r.period, Amount: int64(r.cost), Owners: r.owners}))
		n++
	}
	for _, rec := range l.saved.compactRecords() {
		err = errors.Join(err, enc.Encode(rec))
		n++
	}
	err = errors.Join(err, w.Flush(), f.Sync(), f.Close())
	if err == nil {
		err = os.Rename(tmp, j.path)
	}
	if err == nil {
		err = syncDir(filepath.Dir(j.path))
	}
	if err != nil {
		return fmt.Errorf("memstore: journal: compact: %w", err)
	}
	nf, err := os.OpenFile(j.path, os.O_APPEND|os.O_WRONLY, 0o600)
	if err != nil {
		return fmt.Errorf("memstore: journal: %w", err)
	}
	if j.f != nil {
		j.f.Close()
	}
	j.f, j.lines, j.baseLen = nf, 0, n
	return nil
}

func syncDir(dir string) error {
	d, err := os.Open(dir)
	if err != nil {
		return err
	}
	return errors.Join(d.Sync(), d.Close())
}

func (j *journal) close() error {
	if j == nil || j.f == nil {
		return nil
	}
	return j.f.Close()
}
