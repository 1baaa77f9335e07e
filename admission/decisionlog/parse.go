package decisionlog

import (
	"bufio"
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"time"

	"github.com/tollgate/tollgate/policy"
)

// MaxLineBytes bounds one line; a longer one is malformed.
const MaxLineBytes = 1 << 20

// maxErrors is how many malformed lines a parse reports before it stops.
const maxErrors = 20

// Entry is a line read back, its money and durations parsed.
type Entry struct {
	Line
	// N is the line's number in the file, from 1.
	N        int
	Estimate policy.Money
	Reserve  policy.Money
	Actual   policy.Money
	Wait     time.Duration
}

// Log is a parsed decision log.
type Log struct {
	// Policy and Settlement are what the last start line names ("" when
	// none).
	Policy     string
	Settlement string
	Entries    []Entry // decisions and settles, in file order
	// Skipped counts lines of kinds this version does not know.
	Skipped int
}

// Parse reads a decision log. A malformed line is an error that names its
// number; up to maxErrors of them are reported together. Unknown fields
// are ignored, and lines of an unknown kind are skipped (counted), so that
// a newer writer's log still reads; a line of a newer format version is
// an error.
func Parse(r io.Reader) (*Log, error) {
	sc := bufio.NewScanner(r)
	sc.Buffer(make([]byte, 0, 64<<10), MaxLineBytes)
	out := &Log{}
	var errs []error
	n := 0
	for sc.Scan() {
		n++
		b := bytes.TrimSpace(sc.Bytes())
		if len(b) == 0 {
			continue
		}
		e, kind, err := parseLine(b)
		if err != nil {
			errs = append(errs, fmt.Errorf("line %d: %w", n, err))
			if len(errs) == maxErrors {
				errs = append(errs, errors.New("too many malformed lines; stopped"))
				return nil, errors.Join(errs...)
			}
			continue
		}
		switch kind {
		case KindStart:
			out.Policy, out.Settlement = e.Policy, e.Settlement
		case KindDecision, KindSettle:
			e.N = n
			out.Entries = append(out.Entries, e)
		default:
			out.Skipped++
		}
	}
	if err := sc.Err(); err != nil {
		errs = append(errs, fmt.Errorf("line %d: %w", n+1, err))
	}
	if len(errs) > 0 {
		return nil, errors.Join(errs...)
	}
	return out, nil
}

func parseLine(b []byte) (Entry, string, error) {
	var e Entry
	if err := json.Unmarshal(b, &e.Line); err != nil {
		return e, "", fmt.Errorf("not a JSON object: %w", err)
	}
	l := &e.Line
	switch {
	case l.V < 1:
		return e, "", errors.New(`"v" is missing`)
	case l.V > Version:
		return e, "", fmt.Errorf("format version %d is newer than this reader's %d", l.V, Version)
	case l.Kind == "":
		return e, "", errors.New(`"kind" is missing`)
	case l.Time.IsZero():
		return e, "", errors.New(`"time" is missing`)
	}
	if l.Kind == KindStart && l.Settlement != "" && l.Settlement != "deferred" && l.Settlement != "immediate" {
		return e, "", fmt.Errorf("settlement %q: want deferred or immediate", l.Settlement)
	}
	if l.Kind != KindDecision && l.Kind != KindSettle {
		return e, l.Kind, nil
	}
	var err error
	if e.Estimate, err = money(l.Estimate); err != nil {
		return e, "", fmt.Errorf("estimate: %w", err)
	}
	if e.Reserve, err = money(l.Reserve); err != nil {
		return e, "", fmt.Errorf("reserve: %w", err)
	}
	if e.Actual, err = money(l.Actual); err != nil {
		return e, "", fmt.Errorf("actual: %w", err)
	}
	if e.Estimate < 0 || e.Reserve < 0 || e.Actual < 0 {
		return e, "", errors.New("a negative amount")
	}
	if l.InputTokens < 0 || l.OutputTokens < 0 {
		return e, "", errors.New("a negative token count")
	}
	for _, p := range l.Pools {
		if p.Pool == "" || p.Units < 0 {
			return e, "", fmt.Errorf("pool %q: a pool needs a name and units ≥ 0", p.Pool)
		}
	}
	if l.Wait != "" {
		if e.Wait, err = time.ParseDuration(l.Wait); err != nil || e.Wait < 0 {
			return e, "", fmt.Errorf("wait %q: want a duration ≥ 0", l.Wait)
		}
	}
	switch l.Kind {
	case KindDecision:
		if l.Outcome == "" {
			return e, "", errors.New(`a decision needs "outcome"`)
		}
	case KindSettle:
		if l.Reservation == "" && l.RequestID == "" {
			return e, "", errors.New(`a settle needs "reservation" or "request_id"`)
		}
		if l.Outcome != "settled" && l.Outcome != "released" {
			return e, "", fmt.Errorf("settle outcome %q: want settled or released", l.Outcome)
		}
	}
	return e, l.Kind, nil
}
