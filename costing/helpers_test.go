package costing_test

import (
	"os"
	"path/filepath"
	"sort"
	"sync"
	"testing"

	"github.com/stretchr/testify/require"

	"github.com/tollgate/tollgate/costing"
)

// bodiesDir holds the recorded request bodies shared with other packages.
const bodiesDir = "../testdata/bodies"

// sharedTokenizer loads the encoders once per test binary: each load costs
// a few hundred milliseconds and tens of MB.
var sharedTokenizer = sync.OnceValues(costing.NewTokenizer)

func tokenizer(tb testing.TB) *costing.Tokenizer {
	tb.Helper()
	tok, err := sharedTokenizer()
	require.NoError(tb, err)
	return tok
}

// bodies returns the recorded bodies of one provider, by file name.
func bodies(tb testing.TB, provider string) map[string][]byte {
	tb.Helper()
	paths, err := filepath.Glob(filepath.Join(bodiesDir, provider, "*"))
	require.NoError(tb, err)
	require.NotEmpty(tb, paths, "no recorded bodies for %s", provider)
	out := make(map[string][]byte, len(paths))
	for _, p := range paths {
		b, err := os.ReadFile(p)
		require.NoError(tb, err)
		out[filepath.Base(p)] = b
	}
	return out
}

// sortedKeys returns m's keys in order, for deterministic seeding.
func sortedKeys[V any](m map[string]V) []string {
	keys := make([]string, 0, len(m))
	for k := range m {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	return keys
}
