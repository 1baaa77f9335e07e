package main

import (
	"encoding/json"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/tollgate/tollgate/internal/metricset"
)

// envoyMetrics are the Envoy metrics the dashboards query, as Envoy's
// /stats/prometheus names them (envoy_ + the stat with its tags extracted:
// cluster.<name>.upstream_rq_2xx → envoy_cluster_upstream_rq_xx
// {envoy_cluster_name, envoy_response_code_class}). They cannot be checked
// against a live registry (no Envoy binary here), so they are listed: add a
// name only after seeing it in a running Envoy's /stats/prometheus.
var envoyMetrics = []string{
	"envoy_cluster_upstream_rq_xx",
	"envoy_cluster_upstream_rq_time_bucket",
	"envoy_http_ext_authz_denied",
	"envoy_http_ext_authz_error",
}

var (
	promString  = regexp.MustCompile(`"(?:[^"\\]|\\.)*"|'(?:[^'\\]|\\.)*'`)
	promBraces  = regexp.MustCompile(`\{[^{}]*\}`)
	promRange   = regexp.MustCompile(`\[[^\[\]]*\]`)
	promGroup   = regexp.MustCompile(`\b(?:by|without|on|ignoring|group_left|group_right)\s*\([^()]*\)`)
	promIdent   = regexp.MustCompile(`[a-zA-Z_:][a-zA-Z0-9_:]*`)
	promKeyword = map[string]bool{"and": true, "or": true, "unless": true, "bool": true, "offset": true,
		"by": true, "without": true, "on": true, "ignoring": true, "group_left": true, "group_right": true, "inf": true, "nan": true}
)

// promMetrics returns the metric names a PromQL expression selects: every
// identifier that is not a function or aggregation (followed by "("), a
// keyword, a label in a matcher or a grouping clause, a string, a range or
// a number. Enough for dashboard queries; not a PromQL parser.
func promMetrics(expr string) []string {
	s := promString.ReplaceAllString(expr, `""`)
	s = promBraces.ReplaceAllString(s, " ")
	s = promRange.ReplaceAllString(s, " ")
	s = promGroup.ReplaceAllString(s, " ")
	var out []string
	for _, loc := range promIdent.FindAllStringIndex(s, -1) {
		name := s[loc[0]:loc[1]]
		if loc[0] > 0 && (s[loc[0]-1] >= '0' && s[loc[0]-1] <= '9' || s[loc[0]-1] == '.') {
			continue // the exponent or unit of a number: 1e3
		}
		if promKeyword[strings.ToLower(name)] || strings.HasPrefix(strings.TrimLeft(s[loc[1]:], " "), "(") {
			continue
		}
		if !slices.Contains(out, name) {
			out = append(out, name)
		}
	}
	return out
}

func TestPromMetrics(t *testing.T) {
	tests := map[string]struct {
		expr string
		want []string
	}{
		"rate by":   {`sum by (outcome) (rate(tollgate_authz_decisions_total[$__rate_interval]))`, []string{"tollgate_authz_decisions_total"}},
		"matcher":   {`sum(rate(a_total{outcome="denied", reason=~"x|y"}[5m])) by (reason)`, []string{"a_total"}},
		"quantile":  {`histogram_quantile(0.99, sum by (le, class) (rate(b_seconds_bucket[1m])))`, []string{"b_seconds_bucket"}},
		"binary":    {`max(c) * 3600 / on (pod) group_left (tier) d unless e offset 5m`, []string{"c", "d", "e"}},
		"numbers":   {`f > 1e3 and g < bool 0.5`, []string{"f", "g"}},
		"no metric": {`vector(1)`, nil},
	}
	for name, tc := range tests {
		t.Run(name, func(t *testing.T) {
			assert.Equal(t, tc.want, promMetrics(tc.expr))
		})
	}
}

// checkDashboards holds every query of deploy/grafana/dashboards to the
// metrics serve registers (catalog, from TestMetricsCatalog's live
// servers) and the listed Envoy metrics: a histogram is queried by its
// _bucket, _sum or _count series.
func checkDashboards(t *testing.T, catalog map[string]metricset.Spec) {
	t.Helper()
	known := map[string]bool{}
	for name, s := range catalog {
		known[name] = s.Type != "histogram"
		if s.Type == "histogram" {
			for _, suffix := range []string{"_bucket", "_sum", "_count"} {
				known[name+suffix] = true
			}
		}
	}
	for _, name := range envoyMetrics {
		known[name] = true
	}
	paths, err := filepath.Glob("../../deploy/grafana/dashboards/*.json")
	require.NoError(t, err)
	require.NotEmpty(t, paths)
	for _, path := range paths {
		raw, err := os.ReadFile(path)
		require.NoError(t, err)
		var d struct {
			Panels []struct {
				Title   string `json:"title"`
				Targets []struct {
					Expr string `json:"expr"`
				} `json:"targets"`
			} `json:"panels"`
		}
		require.NoError(t, json.Unmarshal(raw, &d), path)
		queries := 0
		for _, p := range d.Panels {
			for _, q := range p.Targets {
				queries++
				names := promMetrics(q.Expr)
				assert.NotEmpty(t, names, "%s: %q: %s selects no metric", path, p.Title, q.Expr)
				for _, n := range names {
					assert.True(t, known[n], "%s: panel %q queries %s, which serve does not register (nor is it a listed Envoy metric): %s", path, p.Title, n, q.Expr)
				}
			}
		}
		assert.NotZero(t, queries, path)
	}
}
