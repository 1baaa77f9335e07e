// Package logtest keeps what a logger wrote, for tests that assert on log
// lines (one line for an outage, not one a second).
package logtest

import (
	"context"
	"log/slog"
	"sync"
)

// Records is a slog.Handler that keeps every record, safe for the code
// under test's goroutines and the test's.
type Records struct {
	mu   sync.Mutex
	recs []slog.Record
}

var _ slog.Handler = (*Records)(nil)

func (l *Records) Enabled(context.Context, slog.Level) bool { return true }

func (l *Records) Handle(_ context.Context, r slog.Record) error {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.recs = append(l.recs, r.Clone())
	return nil
}

func (l *Records) WithAttrs([]slog.Attr) slog.Handler { return l }
func (l *Records) WithGroup(string) slog.Handler      { return l }

// Messages returns the messages logged so far, in order.
func (l *Records) Messages() []string {
	l.mu.Lock()
	defer l.mu.Unlock()
	var out []string
	for _, r := range l.recs {
		out = append(out, r.Message)
	}
	return out
}

// Count is how many records say msg.
func (l *Records) Count(msg string) int {
	l.mu.Lock()
	defer l.mu.Unlock()
	n := 0
	for _, r := range l.recs {
		if r.Message == msg {
			n++
		}
	}
	return n
}

// Attr returns the attribute key of the last record whose message is msg.
func (l *Records) Attr(msg, key string) (slog.Value, bool) {
	l.mu.Lock()
	defer l.mu.Unlock()
	for i := len(l.recs) - 1; i >= 0; i-- {
		if l.recs[i].Message != msg {
			continue
		}
		var v slog.Value
		found := false
		l.recs[i].Attrs(func(a slog.Attr) bool {
			if a.Key == key {
				v, found = a.Value, true
				return false
			}
			return true
		})
		return v, found
	}
	return slog.Value{}, false
}
