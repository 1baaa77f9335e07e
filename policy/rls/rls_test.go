package rls_test

import (
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/tollgate/tollgate/policy"
	"github.com/tollgate/tollgate/policy/rls"
)

const examples = "../../testdata/rls/examples"

func loadExamples(t *testing.T) *rls.Config {
	t.Helper()
	c, err := rls.Load(examples)
	require.NoError(t, err)
	return c
}

func e(kv ...string) []rls.Entry {
	var out []rls.Entry
	for i := 0; i+1 < len(kv); i += 2 {
		out = append(out, rls.Entry{Key: kv[i], Value: kv[i+1]})
	}
	return out
}

// TestMatchExamples walks the README's examples as that server's README
// says they match.
func TestMatchExamples(t *testing.T) {
	c := loadExamples(t)
	tests := map[string]struct {
		domain  string
		entries []rls.Entry
		path    string // "" for no rule
		rpu     uint32
		unit    rls.Unit
	}{
		"ex1 users":                     {"mongo_cps", e("database", "users"), "mongo_cps.database_users", 500, rls.Second},
		"ex1 unknown value":             {"mongo_cps", e("database", "other"), "", 0, 0},
		"ex2 nested key only":           {"messaging", e("message_type", "marketing", "to_number", "2061111111"), "messaging.message_type_marketing.to_number", 5, rls.Day},
		"ex2 top key only":              {"messaging", e("to_number", "2061111111"), "messaging.to_number", 100, rls.Day},
		"ex2 placeholder has no limit":  {"messaging", e("message_type", "marketing"), "", 0, 0},
		"ex2 other type":                {"messaging", e("message_type", "transactional", "to_number", "1"), "", 0, 0},
		"ex3 value before key":          {"edge_proxy_per_ip", e("remote_address", "50.0.0.5"), "edge_proxy_per_ip.remote_address_50.0.0.5", 0, rls.Second},
		"ex3 key only":                  {"edge_proxy_per_ip", e("remote_address", "50.0.0.1"), "edge_proxy_per_ip.remote_address", 10, rls.Second},
		"ex4 deeper request, no match":  {"example4", e("key", "value", "subkey", "subvalue"), "", 0, 0},
		"ex4 own depth":                 {"example4", e("key", "value"), "example4.key_value", 300, rls.Second},
		"ex4 nested matches":            {"example4_nested", e("key", "value", "subkey", "subvalue"), "example4_nested.key_value.subkey", 300, rls.Second},
		"ex4 nested, shorter request":   {"example4_nested", e("key", "value"), "", 0, 0},
		"ex5 unlimited":                 {"internal", e("ldap", "x"), "internal.ldap", 0, 0},
		"ex6 shadow":                    {"example6", e("service", "auth-service", "user", "user-a"), "example6.service.user_user-a", 10, rls.Second},
		"ex7 named":                     {"example7", e("key_1", "value_1", "user", "bkthomps"), "example7.key_1_value_1.user_bkthomps", 5, rls.Second},
		"ex9 trailing wildcard":         {"example9", e("key1", "valueXYZ"), "example9.key1_value*", 20, rls.Minute},
		"ex9 middle wildcard":           {"example9", e("path", "/api/123/action"), "example9.path_/api/*/action", 20, rls.Minute},
		"ex9 middle wildcard, no match": {"example9", e("path", "/api/123/other"), "", 0, 0},
		"ex9 two wildcards":             {"example9", e("route", "/api/v1/resource/123/action"), "example9.route_/api/*/resource/*/action", 20, rls.Minute},
		"unknown domain":                {"nope", e("database", "users"), "", 0, 0},
		"empty descriptor":              {"mongo_cps", nil, "", 0, 0},
		"key matches, value is empty":   {"edge_proxy_per_ip", e("remote_address", ""), "edge_proxy_per_ip.remote_address", 10, rls.Second},
		"ex8 detailed key only":         {"example8", e("key1", "unspecified"), "example8.key1", 10, rls.Minute},
		"ex11 shared wildcard":          {"example11", e("files", "files/a.pdf"), "example11.files_files/*", 10, rls.Hour},
		"ex11 wildcard, not shared":     {"example11", e("files_no_share", "files_no_share/a.pdf"), "example11.files_no_share_files_no_share/*", 10, rls.Hour},
		"ex2 three entries, no rule":    {"messaging", e("message_type", "marketing", "to_number", "1", "x", "y"), "", 0, 0},
	}
	for name, tc := range tests {
		t.Run(name, func(t *testing.T) {
			r, key := c.Match(tc.domain, tc.entries)
			if tc.path == "" {
				assert.Nil(t, r)
				assert.Empty(t, key)
				return
			}
			require.NotNil(t, r)
			assert.Equal(t, tc.path, r.Path)
			assert.Equal(t, tc.rpu, r.RequestsPerUnit)
			assert.Equal(t, tc.unit, r.Unit)
			assert.NotEmpty(t, key)
		})
	}
}

// TestFlags: the flags of each rule, as written.
func TestFlags(t *testing.T) {
	c := loadExamples(t)
	r, _ := c.Match("internal", e("ldap", "x"))
	require.NotNil(t, r)
	assert.True(t, r.Unlimited)
	r, _ = c.Match("example6", e("service", "s", "user", "user-a"))
	require.NotNil(t, r)
	assert.True(t, r.ShadowMode)
	r, _ = c.Match("example6", e("service", "s", "user", "user-b"))
	require.NotNil(t, r)
	assert.False(t, r.ShadowMode)
	r, _ = c.Match("example7", e("key_2", "value_2", "user", "bkthomps"))
	require.NotNil(t, r)
	assert.Equal(t, []string{"specific_limit"}, r.Replaces)
	r, _ = c.Match("example8", e("key1", "x"))
	require.NotNil(t, r)
	assert.True(t, r.DetailedMetric)
	assert.Equal(t, 11, c.Domains())
	assert.Len(t, c.Files, 11)
}

// TestCounterKeys: a key-only rule counts each value apart; a shared
// wildcard counts every matching value together; entries never run into
// each other.
func TestCounterKeys(t *testing.T) {
	c := loadExamples(t)
	key := func(domain string, entries []rls.Entry) string {
		_, k := c.Match(domain, entries)
		require.NotEmpty(t, k)
		return k
	}
	assert.NotEqual(t, key("edge_proxy_per_ip", e("remote_address", "1.1.1.1")), key("edge_proxy_per_ip", e("remote_address", "2.2.2.2")))
	assert.Equal(t, key("example11", e("files", "files/a.pdf")), key("example11", e("files", "files/b.csv")))
	assert.NotEqual(t, key("example11", e("files_no_share", "files_no_share/a.pdf")), key("example11", e("files_no_share", "files_no_share/b.csv")))
	assert.NotEqual(t, key("example11", e("files", "files/*")), key("example11", e("files_no_share", "files_no_share/*")))
	assert.NotEqual(t, rls.CounterKey(e("a", "b")), key("mongo_cps", e("database", "users")))
}

// TestBucketFor: exact rates in lowest terms, and rounding only within 1%.
func TestBucketFor(t *testing.T) {
	tests := map[string]struct {
		n    int64
		u    rls.Unit
		want rls.Bucket
		ok   bool
	}{
		"500/s":           {500, rls.Second, rls.Bucket{Capacity: 500, Refill: 500}, true},
		"100/min":         {100, rls.Minute, rls.Bucket{Capacity: 100, Refill: 5, Per: 3 * time.Second}, true},
		"5/day":           {5, rls.Day, rls.Bucket{Capacity: 5, Refill: 1, Per: 17280 * time.Second}, true},
		"10/hour":         {10, rls.Hour, rls.Bucket{Capacity: 10, Refill: 1, Per: 360 * time.Second}, true},
		"100001/day":      {100001, rls.Day, rls.Bucket{Capacity: 100001, Refill: 11573, Per: 9999 * time.Second, Approx: true}, true},
		"7/week":          {7, rls.Week, rls.Bucket{Capacity: 7, Refill: 1, Per: 86400 * time.Second}, true},
		"10/year refused": {10, rls.Year, rls.Bucket{}, false},
		"too many":        {2_000_000_000, rls.Second, rls.Bucket{}, false},
		"zero":            {0, rls.Second, rls.Bucket{}, false},
		"unknown unit":    {1, rls.UnitUnknown, rls.Bucket{}, false},
	}
	for name, tc := range tests {
		t.Run(name, func(t *testing.T) {
			b, ok := rls.BucketFor(tc.n, tc.u)
			assert.Equal(t, tc.ok, ok)
			assert.Equal(t, tc.want, b)
		})
	}
	assert.Equal(t, int64(policy.MaxCapacity), int64(rls.MaxUnits), "the stores' bound")
}

// TestBad: each refused file says where and why.
func TestBad(t *testing.T) {
	tests := map[string]string{
		"empty-domain.yaml":           "empty-domain.yaml:1: config file cannot have empty domain",
		"unknown-key.yaml":            "unknown-key.yaml:4: config error, unknown key \"rate_limt\"",
		"bad-unit.yaml":               "bad-unit.yaml:4: invalid rate limit unit 'fortnight'",
		"unlimited-with-unit.yaml":    "unlimited-with-unit.yaml:4: should not specify rate limit unit when unlimited",
		"duplicate-key.yaml":          "duplicate-key.yaml:6: duplicate descriptor composite key 'd.a_b'",
		"empty-key.yaml":              "empty-key.yaml:3: descriptor has empty key",
		"replaces-self.yaml":          "replaces-self.yaml:5: replaces should not contain name of same descriptor",
		"replaces-empty.yaml":         "replaces-empty.yaml:5: should not have an empty replaces entry",
		"share-without-wildcard.yaml": "share-without-wildcard.yaml:3: share_threshold can only be used with wildcard values",
		"negative-requests.yaml":      "negative-requests.yaml:4: requests_per_unit must be a whole number",
		"not-yaml.yaml":               "not-yaml.yaml: yaml:",
		"descriptors-not-list.yaml":   "descriptors-not-list.yaml:3: descriptors must be a list",
	}
	for file, want := range tests {
		t.Run(file, func(t *testing.T) {
			p := filepath.Join("../../testdata/rls/bad", file)
			data, err := os.ReadFile(p)
			require.NoError(t, err)
			_, err = rls.Compile(rls.Source{Name: file, Data: data})
			require.Error(t, err)
			assert.Contains(t, err.Error(), want)
		})
	}
}

// TestEveryErrorAtOnce: two files' problems, and a domain defined twice,
// are reported together.
func TestEveryErrorAtOnce(t *testing.T) {
	_, err := rls.Compile(
		rls.Source{Name: "a.yaml", Data: []byte("domain: d\ndescriptors:\n  - key: x\n    rate_limit: {unit: second, requests_per_unit: 1}\n")},
		rls.Source{Name: "b.yaml", Data: []byte("domain: d\n")},
		rls.Source{Name: "c.yaml", Data: []byte("domain: e\ndescriptors:\n  - key: x\n    bogus: 1\n  - key: y\n    rate_limit: {unit: weekly}\n")},
	)
	require.Error(t, err)
	assert.Contains(t, err.Error(), `b.yaml:1: duplicate domain "d": already defined in a.yaml`)
	assert.Contains(t, err.Error(), `c.yaml:4: config error, unknown key "bogus"`)
	assert.Contains(t, err.Error(), `c.yaml:6: invalid rate limit unit 'weekly'`)
}

// TestLayout: the runtime layout (root/subdirectory/config/*.yaml) and a
// plain directory both load; dot files and other files are skipped.
func TestLayout(t *testing.T) {
	one := "domain: d\ndescriptors:\n  - key: k\n    rate_limit: {unit: minute, requests_per_unit: 3}\n"
	tests := map[string]struct {
		files map[string]string
		want  int
	}{
		"runtime layout":   {map[string]string{"config/a.yaml": one, "config/.hidden.yaml": "not: [yaml", "other/b.yaml": "x"}, 1},
		"plain dir":        {map[string]string{"a.yml": one, "notes.txt": "not yaml"}, 1},
		"nested in config": {map[string]string{"config/team/a.yaml": one, "config/..data/a.yaml": one}, 1},
		"empty":            {map[string]string{}, 0},
	}
	for name, tc := range tests {
		t.Run(name, func(t *testing.T) {
			dir := t.TempDir()
			for p, body := range tc.files {
				require.NoError(t, os.MkdirAll(filepath.Dir(filepath.Join(dir, p)), 0o755))
				require.NoError(t, os.WriteFile(filepath.Join(dir, p), []byte(body), 0o644))
			}
			c, err := rls.Load(dir)
			require.NoError(t, err)
			assert.Equal(t, tc.want, c.Domains())
		})
	}
	_, err := rls.Load(filepath.Join(t.TempDir(), "missing"))
	require.Error(t, err)
}

// TestAliasesAndMerges: YAML anchors and merge keys, as that server's
// decoder reads them.
func TestAliasesAndMerges(t *testing.T) {
	c, err := rls.Compile(rls.Source{Name: "a.yaml", Data: []byte(`
domain: d
descriptors:
  - key: a
    rate_limit: &rl {unit: minute, requests_per_unit: 3}
  - key: b
    rate_limit:
      <<: *rl
      requests_per_unit: 4
`)})
	require.NoError(t, err)
	r, _ := c.Match("d", e("a", "1"))
	require.NotNil(t, r)
	assert.Equal(t, uint32(3), r.RequestsPerUnit)
	r, _ = c.Match("d", e("b", "1"))
	require.NotNil(t, r)
	assert.Equal(t, uint32(4), r.RequestsPerUnit)
	assert.Equal(t, rls.Minute, r.Unit)
}

func FuzzCompile(f *testing.F) {
	entries, _ := os.ReadDir("../../testdata/rls/bad")
	for _, en := range entries {
		data, _ := os.ReadFile(filepath.Join("../../testdata/rls/bad", en.Name()))
		f.Add(data)
	}
	data, _ := os.ReadFile(filepath.Join(examples, "config/example7.yaml"))
	f.Add(data)
	f.Fuzz(func(t *testing.T, data []byte) {
		c, err := rls.Compile(rls.Source{Name: "f.yaml", Data: data})
		if err == nil {
			c.Match("d", e("a", "b", "c", "d"))
		}
	})
}
