package main

import (
	"net"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"testing"

	"github.com/prometheus/client_golang/prometheus/testutil/promlint"
	dto "github.com/prometheus/client_model/go"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"google.golang.org/protobuf/proto"

	"github.com/tollgate/tollgate/internal/metricset"
	"github.com/tollgate/tollgate/internal/redistest"
)

// TestMetricsCatalog holds the whole registry of `tollgate serve` (a
// sidecar with a watched policy and a decision log, and a fleet member on Redis, which adds
// the cluster's metrics) to three standards: promlint finds nothing in any
// metric, every query of the Grafana dashboards in deploy/ names one of
// them, and the metrics table of docs/operations.md lists exactly these
// metrics, with their types and labels.
func TestMetricsCatalog(t *testing.T) {
	policyPath := writePolicy(t, spendPolicy(""))
	grpcA, httpA := freePort(t), freePort(t)
	startRun(t, noEnv, httpA, serveArgs(grpcA, httpA, "--policy", policyPath,
		"--decision-log", filepath.Join(t.TempDir(), "decisions.jsonl"))...)
	grpcB, httpB, gossip := freePort(t), freePort(t), freePort(t)
	_, port, err := net.SplitHostPort(gossip)
	require.NoError(t, err)
	startRun(t, keyEnv, httpB, clusterServeArgs(grpcB, httpB, policyPath, redistest.Prefix(t), "pod-m", port)...)

	catalog := map[string]metricset.Spec{}
	for _, addr := range []string{httpA, httpB} {
		var specs []metricset.Spec
		require.Equal(t, 200, getJSON(t, "http://"+addr+"/debug/metrics", &specs))
		for _, s := range specs {
			catalog[s.Name] = s
		}
	}
	require.Contains(t, catalog, "tollgate_authz_decisions_total")
	require.Contains(t, catalog, "tollgate_policy_reloads_total")
	require.Contains(t, catalog, "tollgate_cluster_decisions_total")

	t.Run("promlint", func(t *testing.T) {
		problems, err := promlint.NewWithMetricFamilies(families(catalog)).Lint()
		require.NoError(t, err)
		assert.Empty(t, problems)
	})
	t.Run("dashboards", func(t *testing.T) {
		checkDashboards(t, catalog)
	})
	t.Run("docs", func(t *testing.T) {
		documented := metricsTable(t, "../../docs/operations.md")
		for name, s := range catalog {
			row, ok := documented[name]
			if !assert.True(t, ok, "metric %s has no row in docs/operations.md", name) {
				continue
			}
			assert.Equal(t, s.Type, row.Type, "docs/operations.md: %s: type", name)
			assert.ElementsMatch(t, s.Labels, row.Labels, "docs/operations.md: %s: labels", name)
		}
		for name := range documented {
			_, ok := catalog[name]
			assert.True(t, ok, "docs/operations.md has a row for %s, which serve does not register", name)
		}
	})
}

// families turns a catalog into metric families promlint can read: one
// sample per metric, every label set.
func families(catalog map[string]metricset.Spec) []*dto.MetricFamily {
	types := map[string]dto.MetricType{"counter": dto.MetricType_COUNTER, "gauge": dto.MetricType_GAUGE, "histogram": dto.MetricType_HISTOGRAM}
	var out []*dto.MetricFamily
	for _, s := range catalog {
		m := &dto.Metric{}
		for _, l := range s.Labels {
			m.Label = append(m.Label, &dto.LabelPair{Name: proto.String(l), Value: proto.String("x")})
		}
		switch s.Type {
		case "counter":
			m.Counter = &dto.Counter{Value: proto.Float64(1)}
		case "histogram":
			m.Histogram = &dto.Histogram{SampleCount: proto.Uint64(1), SampleSum: proto.Float64(1)}
		default:
			m.Gauge = &dto.Gauge{Value: proto.Float64(1)}
		}
		out = append(out, &dto.MetricFamily{Name: proto.String(s.Name), Help: proto.String(s.Help), Type: types[s.Type].Enum(), Metric: []*dto.Metric{m}})
	}
	slices.SortFunc(out, func(a, b *dto.MetricFamily) int { return strings.Compare(a.GetName(), b.GetName()) })
	return out
}

// metricRow is one row of the metrics table.
type metricRow struct {
	Type    string
	Labels  []string
	Meaning string
}

const metricsHeader = "| Metric | Type | Labels | Meaning |"

var (
	metricName  = regexp.MustCompile("^`(tollgate_[a-z0-9_]+)`$")
	labelName   = regexp.MustCompile(`^[a-z_][a-z0-9_]*$`)
	metricTypes = []string{"counter", "gauge", "histogram", "summary"}
)

// metricsTable parses the one table under metricsHeader in path, failing
// on a malformed or repeated row.
func metricsTable(t *testing.T, path string) map[string]metricRow {
	t.Helper()
	data, err := os.ReadFile(path)
	require.NoError(t, err)
	lines := strings.Split(string(data), "\n")
	start := -1
	for i, l := range lines {
		if strings.TrimSpace(l) == metricsHeader {
			require.Equal(t, -1, start, "%s: more than one metrics table", path)
			start = i
		}
	}
	require.NotEqual(t, -1, start, "%s: no line %q", path, metricsHeader)
	require.Greater(t, len(lines), start+1, "%s: the metrics table has no separator", path)
	require.Regexp(t, `^\|(\s*-+\s*\|){4}$`, strings.TrimSpace(lines[start+1]), "%s:%d: the metrics table's separator", path, start+2)

	rows := map[string]metricRow{}
	for i := start + 2; i < len(lines) && strings.HasPrefix(strings.TrimSpace(lines[i]), "|"); i++ {
		at := i + 1
		cells := tableCells(lines[i])
		if !assert.Len(t, cells, 4, "%s:%d: a metrics row has four cells", path, at) {
			continue
		}
		m := metricName.FindStringSubmatch(cells[0])
		if !assert.NotNil(t, m, "%s:%d: %q is not a metric name in backticks", path, at, cells[0]) {
			continue
		}
		row := metricRow{Type: cells[1], Meaning: cells[3]}
		assert.Contains(t, metricTypes, row.Type, "%s:%d: %s: type", path, at, m[1])
		if cells[2] != "—" {
			for _, l := range strings.Split(cells[2], ",") {
				l = strings.TrimSpace(l)
				assert.Regexp(t, labelName, l, "%s:%d: %s: label", path, at, m[1])
				row.Labels = append(row.Labels, l)
			}
		}
		assert.NotEmpty(t, row.Meaning, "%s:%d: %s: meaning", path, at, m[1])
		_, dup := rows[m[1]]
		assert.False(t, dup, "%s:%d: %s has two rows", path, at, m[1])
		rows[m[1]] = row
	}
	require.NotEmpty(t, rows, "%s: the metrics table is empty", path)
	return rows
}

// tableCells splits a Markdown table row into its trimmed cells; "\|" is
// a pipe inside a cell.
func tableCells(line string) []string {
	line = strings.TrimSpace(line)
	line = strings.TrimPrefix(line, "|")
	line = strings.TrimSuffix(line, "|")
	line = strings.ReplaceAll(line, `\|`, "\x00")
	cells := strings.Split(line, "|")
	for i, c := range cells {
		cells[i] = strings.TrimSpace(strings.ReplaceAll(c, "\x00", "|"))
	}
	return cells
}

func TestTableCells(t *testing.T) {
	tests := map[string]struct {
		line string
		want []string
	}{
		"plain":        {"| `a` | counter | — | x |", []string{"`a`", "counter", "—", "x"}},
		"no outer bar": {"`a` | gauge | b, c | y", []string{"`a`", "gauge", "b, c", "y"}},
		"escaped pipe": {`| a | b \| c |`, []string{"a", "b | c"}},
	}
	for name, tc := range tests {
		t.Run(name, func(t *testing.T) {
			assert.Equal(t, tc.want, tableCells(tc.line))
		})
	}
}
