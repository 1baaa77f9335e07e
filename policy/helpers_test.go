package policy_test

import (
	"fmt"
	"strings"
	"testing"

	"github.com/stretchr/testify/require"

	"github.com/tollgate/tollgate/policy"
)

// lines joins YAML lines, so that a case's line numbers can be read off its
// position in the list (the first line is line 1).
func lines(ls ...string) []byte {
	return []byte(strings.Join(ls, "\n") + "\n")
}

// withPool prepends a valid five-line pool "p" to ls, so the first line of ls
// is line 6.
func withPool(ls ...string) []byte {
	return lines(append([]string{
		"pools:",                   // 1
		"  p:",                     // 2
		"    unit: request",        // 3
		"    capacity: 10",         // 4
		"    refill_per_second: 1", // 5
	}, ls...)...)
}

// compile compiles data as x.yaml.
func compile(data []byte) (*policy.Set, error) {
	return policy.Compile(policy.Source{Name: "x.yaml", Data: data})
}

// mustCompile compiles data as x.yaml and fails the test on any error.
func mustCompile(t *testing.T, data []byte) *policy.Set {
	t.Helper()
	s, err := compile(data)
	require.NoError(t, err)
	require.NotNil(t, s)
	return s
}

// policyErrors splits the error Compile joined and requires every part to be
// a *policy.Error.
func policyErrors(t *testing.T, err error) []*policy.Error {
	t.Helper()
	require.Error(t, err)
	j, ok := err.(interface{ Unwrap() []error })
	require.True(t, ok, "want an errors.Join result, got %T: %v", err, err)
	var out []*policy.Error
	for _, e := range j.Unwrap() {
		pe, ok := e.(*policy.Error)
		require.True(t, ok, "want *policy.Error, got %T: %v", e, e)
		out = append(out, pe)
	}
	require.NotEmpty(t, out)
	return out
}

// describe renders errors one a line with their fields, for failure messages.
func describe(errs []*policy.Error) string {
	var b strings.Builder
	for _, e := range errs {
		fmt.Fprintf(&b, "\n  file=%q line=%d path=%q msg=%q", e.File, e.Line, e.Path, e.Msg)
	}
	return b.String()
}

// wantErr is the location and part of the message of one expected error.
type wantErr struct {
	file string
	line int
	path string
	msg  string // a substring of Msg
}

// requireHasError requires that one of errs matches w.
func requireHasError(t *testing.T, errs []*policy.Error, w wantErr) {
	t.Helper()
	for _, e := range errs {
		if e.File == w.file && e.Line == w.line && e.Path == w.path && strings.Contains(e.Msg, w.msg) {
			return
		}
	}
	require.Failf(t, "error not reported", "want file=%q line=%d path=%q msg containing %q; got:%s",
		w.file, w.line, w.path, w.msg, describe(errs))
}
